// Max and average pooling over (N*C) planes of H x W, PyTorch semantics (floor mode; padding
// at most half the kernel, so every window holds a real pixel). Grid-stride loops; T is float
// or double. `planes` is N*C.

// Thread-to-element mapping: one thread per output element (plane, oh, ow).
// The first maximum in row-major window order wins and a NaN beats everything (PyTorch);
// indices[...] is the flat position h*W + w of the maximum inside its plane.
template <typename T>
__global__ void max_pool_forward(const T* __restrict__ x, T* __restrict__ y,
                                 long long* __restrict__ indices, long long planes,
                                 long long height, long long width, long long out_h,
                                 long long out_w, long long kernel_h, long long kernel_w,
                                 long long stride_h, long long stride_w, long long pad_h,
                                 long long pad_w) {
    const long long total = planes * out_h * out_w;
    for (long long index = blockIdx.x * (long long)blockDim.x + threadIdx.x; index < total;
         index += (long long)blockDim.x * gridDim.x) {
        const long long ow = index % out_w;
        const long long oh = (index / out_w) % out_h;
        const long long plane = index / (out_w * out_h);
        const long long h_start = oh * stride_h - pad_h, w_start = ow * stride_w - pad_w;
        const long long h_lo = max(h_start, 0LL), h_hi = min(h_start + kernel_h, height);
        const long long w_lo = max(w_start, 0LL), w_hi = min(w_start + kernel_w, width);
        const T* source = x + plane * height * width;
        // Start from the window's first pixel: the same answer as starting from -infinity.
        long long best_index = h_lo * width + w_lo;
        T best = source[best_index];
        for (long long h = h_lo; h < h_hi; ++h) {
            for (long long w = w_lo; w < w_hi; ++w) {
                const T value = source[h * width + w];
                if (value > best || isnan(value)) {
                    best = value;
                    best_index = h * width + w;
                }
            }
        }
        y[index] = best;
        indices[index] = best_index;
    }
}

// Thread-to-element mapping: one thread per output element (plane, o), which adds its
// gradient to the pixel its maximum came from. Overlapping windows (stride < kernel) can pick
// the same pixel, hence atomicAdd (for double it needs compute capability 6.0 or newer).
template <typename T>
__global__ void max_pool_backward(const T* __restrict__ grad_output,
                                  const long long* __restrict__ indices, T* __restrict__ grad_x,
                                  long long planes, long long plane_size,
                                  long long out_plane_size) {
    const long long total = planes * out_plane_size;
    for (long long index = blockIdx.x * (long long)blockDim.x + threadIdx.x; index < total;
         index += (long long)blockDim.x * gridDim.x) {
        const long long plane = index / out_plane_size;
        atomicAdd(grad_x + plane * plane_size + indices[index], grad_output[index]);
    }
}

// Thread-to-element mapping: one thread per output element (plane, oh, ow); the mean counts
// the zero padding (count_include_pad=True), so the divisor is always kH*kW.
template <typename T>
__global__ void avg_pool_forward(const T* __restrict__ x, T* __restrict__ y, long long planes,
                                 long long height, long long width, long long out_h,
                                 long long out_w, long long kernel_h, long long kernel_w,
                                 long long stride_h, long long stride_w, long long pad_h,
                                 long long pad_w) {
    const long long total = planes * out_h * out_w;
    for (long long index = blockIdx.x * (long long)blockDim.x + threadIdx.x; index < total;
         index += (long long)blockDim.x * gridDim.x) {
        const long long ow = index % out_w;
        const long long oh = (index / out_w) % out_h;
        const long long plane = index / (out_w * out_h);
        const long long h_start = oh * stride_h - pad_h, w_start = ow * stride_w - pad_w;
        const T* source = x + plane * height * width;
        T sum = 0;
        for (long long h = max(h_start, 0LL); h < min(h_start + kernel_h, height); ++h) {
            for (long long w = max(w_start, 0LL); w < min(w_start + kernel_w, width); ++w) {
                sum += source[h * width + w];
            }
        }
        y[index] = sum / (T)(kernel_h * kernel_w);
    }
}

// Thread-to-element mapping: one thread per input pixel (plane, h, w); it gathers
// grad_output / (kH*kW) from every output whose window covers the pixel.
template <typename T>
__global__ void avg_pool_backward(const T* __restrict__ grad_output, T* __restrict__ grad_x,
                                  long long planes, long long height, long long width,
                                  long long out_h, long long out_w, long long kernel_h,
                                  long long kernel_w, long long stride_h, long long stride_w,
                                  long long pad_h, long long pad_w) {
    const long long total = planes * height * width;
    for (long long index = blockIdx.x * (long long)blockDim.x + threadIdx.x; index < total;
         index += (long long)blockDim.x * gridDim.x) {
        const long long w = index % width;
        const long long h = (index / width) % height;
        const long long plane = index / (width * height);
        const long long oh_lo = (h + pad_h < kernel_h) ? 0 : (h + pad_h - kernel_h) / stride_h + 1;
        const long long oh_hi = min((h + pad_h) / stride_h + 1, out_h);
        const long long ow_lo = (w + pad_w < kernel_w) ? 0 : (w + pad_w - kernel_w) / stride_w + 1;
        const long long ow_hi = min((w + pad_w) / stride_w + 1, out_w);
        const T* gradients = grad_output + plane * out_h * out_w;
        T sum = 0;
        for (long long oh = oh_lo; oh < oh_hi; ++oh) {
            for (long long ow = ow_lo; ow < ow_hi; ++ow) {
                sum += gradients[oh * out_w + ow];
            }
        }
        grad_x[index] = sum / (T)(kernel_h * kernel_w);
    }
}
