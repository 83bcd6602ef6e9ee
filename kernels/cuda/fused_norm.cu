// Fused normalisation and softmax: group norm (+ affine, + optional SiLU), batch norm and the
// last-axis softmax, forward and backward. T is float or double; statistics and reductions
// are accumulated in double. Inputs are contiguous (N, C, S) with S the product of the
// trailing dims. Each kernel gives one block to one independent slice (a (sample, group), a
// channel, a row); the block's threads stride over the slice and meet in a shared-memory tree
// reduction, so blockDim.x must be a power of two no larger than BLOCK_THREADS.

// The largest block the launcher uses: the size of the shared reduction scratch.
#define BLOCK_THREADS 256

template <typename T> __device__ T exponential(T value);
template <> __device__ float exponential<float>(float value) { return expf(value); }
template <> __device__ double exponential<double>(double value) { return exp(value); }

// z * sigmoid(z), and its derivative s (1 + z (1 - s)).
template <typename T> __device__ T silu(T z) { return z / (T(1) + exponential(-z)); }
template <typename T> __device__ T silu_derivative(T z) {
    const T s = T(1) / (T(1) + exponential(-z));
    return s * (T(1) + z * (T(1) - s));
}

// Sums a and b over the block's threads; every thread gets both totals. Every thread of the
// block must call it (it synchronises).
__device__ void block_sum2(double& a, double& b) {
    __shared__ double scratch_a[BLOCK_THREADS];
    __shared__ double scratch_b[BLOCK_THREADS];
    scratch_a[threadIdx.x] = a;
    scratch_b[threadIdx.x] = b;
    __syncthreads();
    for (unsigned stride = blockDim.x / 2; stride > 0; stride /= 2) {
        if (threadIdx.x < stride) {
            scratch_a[threadIdx.x] += scratch_a[threadIdx.x + stride];
            scratch_b[threadIdx.x] += scratch_b[threadIdx.x + stride];
        }
        __syncthreads();
    }
    a = scratch_a[0];
    b = scratch_b[0];
    __syncthreads();  // the scratch is reused by the next call
}

// The maximum of value over the block's threads, for every thread (same rules as block_sum2).
__device__ double block_max(double value) {
    __shared__ double scratch[BLOCK_THREADS];
    scratch[threadIdx.x] = value;
    __syncthreads();
    for (unsigned stride = blockDim.x / 2; stride > 0; stride /= 2) {
        if (threadIdx.x < stride) {
            scratch[threadIdx.x] = fmax(scratch[threadIdx.x], scratch[threadIdx.x + stride]);
        }
        __syncthreads();
    }
    const double result = scratch[0];
    __syncthreads();
    return result;
}

// ---------------------------------------------------------------------------------------
// Group norm
// ---------------------------------------------------------------------------------------

// Thread-to-element mapping: block b = n * groups + g owns the contiguous group_channels * size
// elements of (sample n, group g); thread t visits elements t, t + blockDim.x, ... twice:
// first for the shifted sum and sum of squares (double), then to write
// y = act(x_hat * weight[c] + bias[c]). mean[b], rstd[b] (double) are kept for the backward.
template <typename T>
__global__ void group_norm_forward(const T* __restrict__ x, const T* __restrict__ weight,
                                   const T* __restrict__ bias, T* __restrict__ y,
                                   double* __restrict__ mean, double* __restrict__ rstd,
                                   long long groups, long long group_channels, long long size,
                                   double eps, int apply_silu) {
    const long long task = blockIdx.x, g = task % groups, count = group_channels * size;
    const T* source = x + task * count;
    T* out = y + task * count;
    // Shifting by the group's first value keeps a large mean from cancelling the variance.
    const double shift = source[0];
    double total = 0, total_sq = 0;
    for (long long i = threadIdx.x; i < count; i += blockDim.x) {
        const double d = (double)source[i] - shift;
        total += d;
        total_sq += d * d;
    }
    block_sum2(total, total_sq);
    const double shifted_mean = total / count;
    const double group_mean = shift + shifted_mean;
    const double variance = fmax(total_sq / count - shifted_mean * shifted_mean, 0.0);
    const double group_rstd = 1.0 / sqrt(variance + eps);
    if (threadIdx.x == 0) {
        mean[task] = group_mean;
        rstd[task] = group_rstd;
    }
    for (long long i = threadIdx.x; i < count; i += blockDim.x) {
        const long long c = g * group_channels + i / size;
        const double scale = group_rstd * (double)weight[c];
        const T z = (T)((double)source[i] * scale + ((double)bias[c] - group_mean * scale));
        out[i] = apply_silu ? silu(z) : z;
    }
}

// Thread-to-element mapping: block b = n * groups + g owns (sample n, group g), as in the
// forward. For each channel c of the group in turn, thread t visits the channel's elements
// t, t + blockDim.x, ...: it writes g_z (the output gradient through SiLU's derivative) into
// grad_x, and the block sums g_z and g_z * x_hat (written to sum_grad[n, c], sum_grad_x_hat[n, c]).
// A last visit of the whole group turns grad_x into
// rstd * (g_z * w - mean(g_z * w) - x_hat * mean(g_z * w * x_hat)), means over the group.
template <typename T>
__global__ void group_norm_backward(const T* __restrict__ grad_output, const T* __restrict__ x,
                                    const double* __restrict__ mean,
                                    const double* __restrict__ rstd,
                                    const T* __restrict__ weight, const T* __restrict__ bias,
                                    T* __restrict__ grad_x, double* __restrict__ sum_grad,
                                    double* __restrict__ sum_grad_x_hat, long long groups,
                                    long long group_channels, long long size, int apply_silu) {
    const long long task = blockIdx.x, g = task % groups, count = group_channels * size;
    const double group_mean = mean[task], group_rstd = rstd[task];
    const long long first_channel = g * group_channels;
    const long long sample_channels = (task / groups) * groups * group_channels;
    double group_sum = 0, group_sum_x_hat = 0;  // of g_z * w and g_z * w * x_hat
    for (long long k = 0; k < group_channels; ++k) {
        const long long c = first_channel + k, offset = task * count + k * size;
        const double w = weight[c], b = bias[c];
        double channel_sum = 0, channel_sum_x_hat = 0;
        for (long long i = threadIdx.x; i < size; i += blockDim.x) {
            const double x_hat = ((double)x[offset + i] - group_mean) * group_rstd;
            T grad = grad_output[offset + i];
            if (apply_silu) grad *= silu_derivative((T)(x_hat * w + b));
            grad_x[offset + i] = grad;
            channel_sum += grad;
            channel_sum_x_hat += grad * x_hat;
        }
        block_sum2(channel_sum, channel_sum_x_hat);
        if (threadIdx.x == 0) {
            sum_grad[sample_channels + c] = channel_sum;
            sum_grad_x_hat[sample_channels + c] = channel_sum_x_hat;
        }
        group_sum += w * channel_sum;
        group_sum_x_hat += w * channel_sum_x_hat;
    }
    const double mean_grad = group_sum / count, mean_grad_x_hat = group_sum_x_hat / count;
    for (long long i = threadIdx.x; i < count; i += blockDim.x) {
        const long long c = first_channel + i / size;
        const double x_hat = ((double)x[task * count + i] - group_mean) * group_rstd;
        const double grad_hat = (double)grad_x[task * count + i] * (double)weight[c];
        grad_x[task * count + i] =
            (T)(group_rstd * (grad_hat - mean_grad - x_hat * mean_grad_x_hat));
    }
}

// Thread-to-element mapping: one thread per channel c (grid-stride), summing the per-sample
// partial sums of group_norm_backward over the samples: grad_bias[c] = sum_n sum_grad[n, c],
// grad_weight[c] = sum_n sum_grad_x_hat[n, c].
template <typename T>
__global__ void group_norm_param_grads(const double* __restrict__ sum_grad,
                                       const double* __restrict__ sum_grad_x_hat,
                                       T* __restrict__ grad_weight, T* __restrict__ grad_bias,
                                       long long samples, long long channels) {
    for (long long c = blockIdx.x * (long long)blockDim.x + threadIdx.x; c < channels;
         c += (long long)blockDim.x * gridDim.x) {
        double total = 0, total_x_hat = 0;
        for (long long n = 0; n < samples; ++n) {
            total += sum_grad[n * channels + c];
            total_x_hat += sum_grad_x_hat[n * channels + c];
        }
        grad_bias[c] = (T)total;
        grad_weight[c] = (T)total_x_hat;
    }
}

// ---------------------------------------------------------------------------------------
// Batch norm
// ---------------------------------------------------------------------------------------

// Thread-to-element mapping: block c owns channel c; thread t visits the channel's samples *
// size elements t, t + blockDim.x, ... (element i is x[i / size, c, i % size]). Training: the
// block reduces the shifted sum and sum of squares (double), thread 0 records mean[c],
// rstd[c] and, when update_running, updates the running statistics as PyTorch does
// (running = (1 - momentum) running + momentum batch, the variance unbiased). Otherwise the
// running statistics normalise. Then every thread writes y = x_hat * weight[c] + bias[c].
template <typename T>
__global__ void batch_norm_forward(const T* __restrict__ x, const T* __restrict__ weight,
                                   const T* __restrict__ bias, T* __restrict__ running_mean,
                                   T* __restrict__ running_var, T* __restrict__ y,
                                   double* __restrict__ mean, double* __restrict__ rstd,
                                   long long samples, long long channels, long long size,
                                   double eps, double momentum, int training,
                                   int update_running) {
    const long long c = blockIdx.x, count = samples * size;
    double channel_mean, channel_var;
    if (training) {
        const double shift = x[c * size];
        double total = 0, total_sq = 0;
        for (long long i = threadIdx.x; i < count; i += blockDim.x) {
            const double d = (double)x[((i / size) * channels + c) * size + i % size] - shift;
            total += d;
            total_sq += d * d;
        }
        block_sum2(total, total_sq);
        const double shifted_mean = total / count;
        channel_mean = shift + shifted_mean;
        channel_var = fmax(total_sq / count - shifted_mean * shifted_mean, 0.0);
        if (threadIdx.x == 0 && update_running) {
            running_mean[c] =
                (T)((1 - momentum) * (double)running_mean[c] + momentum * channel_mean);
            running_var[c] = (T)((1 - momentum) * (double)running_var[c]
                                 + momentum * channel_var * count / (count - 1));
        }
    } else {
        channel_mean = running_mean[c];
        channel_var = running_var[c];
    }
    const double channel_rstd = 1.0 / sqrt(channel_var + eps);
    if (threadIdx.x == 0) {
        mean[c] = channel_mean;
        rstd[c] = channel_rstd;
    }
    const double scale = channel_rstd * (double)weight[c];
    const double offset = (double)bias[c] - channel_mean * scale;
    for (long long i = threadIdx.x; i < count; i += blockDim.x) {
        const long long index = ((i / size) * channels + c) * size + i % size;
        y[index] = (T)((double)x[index] * scale + offset);
    }
}

// Thread-to-element mapping: block c owns channel c, its threads striding over the channel's
// elements as in the forward. The block sums g and g * x_hat (grad_bias[c], grad_weight[c]),
// then every thread writes grad_x = w rstd (g - mean(g) - x_hat mean(g x_hat)) in training,
// w rstd g otherwise (the running statistics do not depend on x).
template <typename T>
__global__ void batch_norm_backward(const T* __restrict__ grad_output, const T* __restrict__ x,
                                    const double* __restrict__ mean,
                                    const double* __restrict__ rstd,
                                    const T* __restrict__ weight, T* __restrict__ grad_x,
                                    T* __restrict__ grad_weight, T* __restrict__ grad_bias,
                                    long long samples, long long channels, long long size,
                                    int training) {
    const long long c = blockIdx.x, count = samples * size;
    const double channel_mean = mean[c], channel_rstd = rstd[c];
    double total = 0, total_x_hat = 0;
    for (long long i = threadIdx.x; i < count; i += blockDim.x) {
        const long long index = ((i / size) * channels + c) * size + i % size;
        const double grad = grad_output[index];
        total += grad;
        total_x_hat += grad * ((double)x[index] - channel_mean) * channel_rstd;
    }
    block_sum2(total, total_x_hat);
    if (threadIdx.x == 0) {
        grad_bias[c] = (T)total;
        grad_weight[c] = (T)total_x_hat;
    }
    const double scale = (double)weight[c] * channel_rstd;
    const double mean_grad = training ? total / count : 0.0;
    const double mean_grad_x_hat = training ? total_x_hat / count : 0.0;
    for (long long i = threadIdx.x; i < count; i += blockDim.x) {
        const long long index = ((i / size) * channels + c) * size + i % size;
        const double x_hat = ((double)x[index] - channel_mean) * channel_rstd;
        grad_x[index] =
            (T)(scale * ((double)grad_output[index] - mean_grad - x_hat * mean_grad_x_hat));
    }
}

// ---------------------------------------------------------------------------------------
// Softmax along the last axis
// ---------------------------------------------------------------------------------------

// Thread-to-element mapping: block r owns row r (length elements); thread t visits elements
// t, t + blockDim.x, ...: the block's maximum, then e = exp(x - max) written to y and summed
// (double), then y *= 1 / sum. Each thread rescales only the elements it wrote.
template <typename T>
__global__ void softmax_forward(const T* __restrict__ x, T* __restrict__ y, long long length) {
    const T* row = x + blockIdx.x * length;
    T* out = y + blockIdx.x * length;
    double largest = row[0];  // rows are never empty
    for (long long i = threadIdx.x; i < length; i += blockDim.x) {
        largest = fmax(largest, (double)row[i]);
    }
    largest = block_max(largest);
    double total = 0, unused = 0;
    for (long long i = threadIdx.x; i < length; i += blockDim.x) {
        const T e = exponential((T)((double)row[i] - largest));
        out[i] = e;
        total += e;
    }
    block_sum2(total, unused);
    const T inverse = (T)(1.0 / total);
    for (long long i = threadIdx.x; i < length; i += blockDim.x) out[i] *= inverse;
}

// Thread-to-element mapping: block r owns row r; thread t visits elements t, t + blockDim.x,
// ...: the block sums g * y (double), then writes grad_x = y (g - sum).
template <typename T>
__global__ void softmax_backward(const T* __restrict__ grad_output, const T* __restrict__ y,
                                 T* __restrict__ grad_x, long long length) {
    const long long start = blockIdx.x * length;
    double total = 0, unused = 0;
    for (long long i = threadIdx.x; i < length; i += blockDim.x) {
        total += (double)grad_output[start + i] * (double)y[start + i];
    }
    block_sum2(total, unused);
    for (long long i = threadIdx.x; i < length; i += blockDim.x) {
        grad_x[start + i] = (T)((double)y[start + i] * ((double)grad_output[start + i] - total));
    }
}
