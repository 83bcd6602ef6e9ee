// im2col and col2im for convolution as a GEMM (see kernels/gemm_conv.py).
// The column matrix of a chunk of B samples is (C*kH*kW, B*H_out*W_out), row-major:
//   cols[(c*kH + i)*kW + j][(b*H_out + oh)*W_out + ow] = x[n_start + b][c][oh*s - p + i*d][ow*s - p + j*d]
// (zero where the window reaches into the padding). Both kernels use grid-stride loops, so any
// grid size covers every element. T is float or double.

// Thread-to-element mapping: one thread per element of cols; consecutive threads take
// consecutive columns (neighbouring ow), so reads of x and writes of cols are coalesced.
template <typename T>
__global__ void im2col(const T* __restrict__ x, T* __restrict__ cols, long long n_start,
                       long long channels, long long height, long long width,
                       long long kernel_h, long long kernel_w, long long stride_h,
                       long long stride_w, long long pad_h, long long pad_w,
                       long long dilation_h, long long dilation_w, long long out_h,
                       long long out_w, long long batch) {
    const long long columns = batch * out_h * out_w;
    const long long total = channels * kernel_h * kernel_w * columns;
    for (long long index = blockIdx.x * (long long)blockDim.x + threadIdx.x; index < total;
         index += (long long)blockDim.x * gridDim.x) {
        const long long column = index % columns;
        const long long row = index / columns;
        const long long ow = column % out_w;
        const long long oh = (column / out_w) % out_h;
        const long long b = column / (out_w * out_h);
        const long long j = row % kernel_w;
        const long long i = (row / kernel_w) % kernel_h;
        const long long c = row / (kernel_w * kernel_h);
        const long long ih = oh * stride_h - pad_h + i * dilation_h;
        const long long iw = ow * stride_w - pad_w + j * dilation_w;
        T value = 0;
        if (ih >= 0 && ih < height && iw >= 0 && iw < width) {
            value = x[(((n_start + b) * channels + c) * height + ih) * width + iw];
        }
        cols[index] = value;
    }
}

// Thread-to-element mapping: one thread per input pixel (b, c, ih, iw) of the chunk; it
// gathers, over the kernel offsets (i, j), the column entries that im2col copied from that
// pixel and adds their sum to grad_x. No two threads write the same pixel: no atomics.
template <typename T>
__global__ void col2im(const T* __restrict__ cols, T* __restrict__ grad_x, long long n_start,
                       long long channels, long long height, long long width,
                       long long kernel_h, long long kernel_w, long long stride_h,
                       long long stride_w, long long pad_h, long long pad_w,
                       long long dilation_h, long long dilation_w, long long out_h,
                       long long out_w, long long batch) {
    const long long columns = batch * out_h * out_w;
    const long long total = batch * channels * height * width;
    for (long long index = blockIdx.x * (long long)blockDim.x + threadIdx.x; index < total;
         index += (long long)blockDim.x * gridDim.x) {
        const long long iw = index % width;
        const long long ih = (index / width) % height;
        const long long c = (index / (width * height)) % channels;
        const long long b = index / (width * height * channels);
        T sum = 0;
        for (long long i = 0; i < kernel_h; ++i) {
            const long long h_span = ih + pad_h - i * dilation_h;  // = oh * stride_h
            if (h_span < 0 || h_span % stride_h != 0) continue;
            const long long oh = h_span / stride_h;
            if (oh >= out_h) continue;
            for (long long j = 0; j < kernel_w; ++j) {
                const long long w_span = iw + pad_w - j * dilation_w;  // = ow * stride_w
                if (w_span < 0 || w_span % stride_w != 0) continue;
                const long long ow = w_span / stride_w;
                if (ow >= out_w) continue;
                const long long row = (c * kernel_h + i) * kernel_w + j;
                sum += cols[row * columns + (b * out_h + oh) * out_w + ow];
            }
        }
        grad_x[n_start * channels * height * width + index] += sum;
    }
}
