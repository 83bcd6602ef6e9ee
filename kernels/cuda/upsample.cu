// Nearest-neighbour upsampling by integer factors over (N*C) planes. Grid-stride loops; T is
// float or double. `planes` is N*C; (height, width) is the size of the small image.

// Thread-to-element mapping: one thread per output pixel (plane, h, w) of the large image,
// which copies x[plane, h / scale_h, w / scale_w].
template <typename T>
__global__ void upsample_nearest_forward(const T* __restrict__ x, T* __restrict__ y,
                                         long long planes, long long height, long long width,
                                         long long scale_h, long long scale_w) {
    const long long out_h = height * scale_h, out_w = width * scale_w;
    const long long total = planes * out_h * out_w;
    for (long long index = blockIdx.x * (long long)blockDim.x + threadIdx.x; index < total;
         index += (long long)blockDim.x * gridDim.x) {
        const long long w = index % out_w;
        const long long h = (index / out_w) % out_h;
        const long long plane = index / (out_w * out_h);
        y[index] = x[(plane * height + h / scale_h) * width + w / scale_w];
    }
}

// Thread-to-element mapping: one thread per pixel (plane, h, w) of the small image, which
// sums its scale_h x scale_w block of the large image's gradient.
template <typename T>
__global__ void upsample_nearest_backward(const T* __restrict__ grad_output,
                                          T* __restrict__ grad_x, long long planes,
                                          long long height, long long width, long long scale_h,
                                          long long scale_w) {
    const long long out_w = width * scale_w;
    const long long total = planes * height * width;
    for (long long index = blockIdx.x * (long long)blockDim.x + threadIdx.x; index < total;
         index += (long long)blockDim.x * gridDim.x) {
        const long long w = index % width;
        const long long h = (index / width) % height;
        const long long plane = index / (width * height);
        const T* block = grad_output + (plane * height * scale_h + h * scale_h) * out_w + w * scale_w;
        T sum = 0;
        for (long long dh = 0; dh < scale_h; ++dh) {
            for (long long dw = 0; dw < scale_w; ++dw) {
                sum += block[dh * out_w + dw];
            }
        }
        grad_x[index] = sum;
    }
}
