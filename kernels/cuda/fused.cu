// Fused element-wise kernels: bias + activation and its gradient, and the one-pass parameter
// updates (SGD, Adam / AdamW, EMA, gradient-norm clipping). T is float or double; the
// arithmetic runs in T on constants of T, in the order of kernels/reference.py. Element-wise
// kernels loop with a grid stride; flags and sizes are long long (the glue passes ints so).

// Activation codes: the order of kernels/reference.py's ACTIVATIONS.
#define ACT_LINEAR 0
#define ACT_RELU 1
#define ACT_LEAKY_RELU 2
#define ACT_SILU 3
// Threads of one block of the reductions (bias_grad, norm_partials); the glue launches
// exactly this many (THREADS_PER_BLOCK in kernels/cuda/__init__.py).
#define REDUCE_THREADS 256

#define GRID_STRIDE_LOOP(index, total)                                                        \
    for (long long index = blockIdx.x * (long long)blockDim.x + threadIdx.x; index < (total); \
         index += (long long)blockDim.x * gridDim.x)

template <typename T>
__device__ T activate(T z, long long act, T alpha) {
    const T zero = 0, one = 1, half = 0.5;
    if (act == ACT_RELU) return z > zero ? z : zero;
    if (act == ACT_LEAKY_RELU) return z > zero ? z : z * alpha;
    if (act == ACT_SILU) return z * ((tanh(z * half) + one) * half);
    return z;
}

// Thread-to-element mapping: one thread per element of x, viewed as (outer, channels, inner);
// element index belongs to channel (index / inner) % channels.
template <typename T>
__global__ void bias_act_forward(const T* __restrict__ x, const T* __restrict__ bias,
                                 T* __restrict__ y, long long total, long long channels,
                                 long long inner, long long act, T alpha, long long has_bias) {
    GRID_STRIDE_LOOP(index, total) {
        T z = x[index];
        if (has_bias) z = z + bias[(index / inner) % channels];
        y[index] = activate(z, act, alpha);
    }
}

// Thread-to-element mapping: as bias_act_forward; grad_x = grad_output * act'(x + bias).
template <typename T>
__global__ void bias_act_backward_input(const T* __restrict__ grad_output,
                                        const T* __restrict__ x, const T* __restrict__ bias,
                                        T* __restrict__ grad_x, long long total,
                                        long long channels, long long inner, long long act,
                                        T alpha, long long has_bias) {
    const T zero = 0, one = 1, half = 0.5;
    GRID_STRIDE_LOOP(index, total) {
        T z = x[index];
        if (has_bias) z = z + bias[(index / inner) % channels];
        T grad = grad_output[index];
        if (act == ACT_RELU) {
            grad = z > zero ? grad : zero;
        } else if (act == ACT_LEAKY_RELU) {
            grad = z > zero ? grad : grad * alpha;
        } else if (act == ACT_SILU) {
            const T s = (tanh(z * half) + one) * half;
            grad = grad * s * (one + z * (one - s));
        }
        grad_x[index] = grad;
    }
}

// Thread-to-element mapping: one block per channel c (grid-stride over channels); its
// REDUCE_THREADS threads stride over the outer * inner elements of that channel, each summing in
// double, then a tree reduction in shared memory gives grad_bias[c].
template <typename T>
__global__ void bias_grad(const T* __restrict__ grad_x, T* __restrict__ grad_bias,
                          long long outer, long long channels, long long inner) {
    __shared__ double partial[REDUCE_THREADS];
    for (long long c = blockIdx.x; c < channels; c += gridDim.x) {
        double total = 0.0;
        for (long long k = threadIdx.x; k < outer * inner; k += blockDim.x) {
            const long long n = k / inner, i = k % inner;
            total += (double)grad_x[(n * channels + c) * inner + i];
        }
        partial[threadIdx.x] = total;
        __syncthreads();
        for (int stride = REDUCE_THREADS / 2; stride > 0; stride /= 2) {
            if (threadIdx.x < stride) partial[threadIdx.x] += partial[threadIdx.x + stride];
            __syncthreads();
        }
        if (threadIdx.x == 0) grad_bias[c] = (T)partial[0];
        __syncthreads();
    }
}

// Thread-to-element mapping: one thread per parameter element i (one launch per tensor).
// g = grad + weight_decay p; buf = g (first) or momentum buf + (1 - dampening) g;
// g = g + momentum buf (nesterov) or buf; p = p - lr g.
template <typename T>
__global__ void sgd_update(T* __restrict__ param, const T* __restrict__ grad,
                           T* __restrict__ buffer, long long n, T lr, T momentum,
                           T one_minus_dampening, T weight_decay, long long use_momentum,
                           long long first, long long nesterov, long long maximize) {
    const T zero = 0;
    GRID_STRIDE_LOOP(i, n) {
        T g = maximize ? -grad[i] : grad[i];
        if (weight_decay != zero) g = g + weight_decay * param[i];
        if (use_momentum) {
            buffer[i] = first ? g : buffer[i] * momentum + one_minus_dampening * g;
            g = nesterov ? g + momentum * buffer[i] : buffer[i];
        }
        param[i] = param[i] - lr * g;
    }
}

// Thread-to-element mapping: one thread per parameter element i (one launch per tensor).
// The Adam / AdamW step of reference.adam_update; max_exp_avg_sq is read only with amsgrad.
template <typename T>
__global__ void adam_update(T* __restrict__ param, const T* __restrict__ grad,
                            T* __restrict__ exp_avg, T* __restrict__ exp_avg_sq,
                            T* __restrict__ max_exp_avg_sq, long long n, T decay_factor,
                            T one_minus_beta1, T beta2, T one_minus_beta2, T eps, T weight_decay,
                            T step_size, T correction, long long decoupled, long long amsgrad,
                            long long maximize) {
    const T zero = 0;
    GRID_STRIDE_LOOP(i, n) {
        T g = maximize ? -grad[i] : grad[i];
        if (weight_decay != zero) {
            if (decoupled) {
                param[i] = param[i] * decay_factor;
            } else {
                g = g + weight_decay * param[i];
            }
        }
        exp_avg[i] = exp_avg[i] + one_minus_beta1 * (g - exp_avg[i]);
        exp_avg_sq[i] = exp_avg_sq[i] * beta2 + one_minus_beta2 * g * g;
        T second = exp_avg_sq[i];
        if (amsgrad) {
            if (second > max_exp_avg_sq[i] || isnan(second)) max_exp_avg_sq[i] = second;
            second = max_exp_avg_sq[i];
        }
        const T denominator = sqrt(second) / correction + eps;
        param[i] = param[i] - step_size * (exp_avg[i] / denominator);
    }
}

// Thread-to-element mapping: one thread per element i; shadow -= (1 - decay)(shadow - param).
template <typename T>
__global__ void ema_update(T* __restrict__ shadow, const T* __restrict__ param, long long n,
                           T one_minus_decay) {
    GRID_STRIDE_LOOP(i, n) {
        shadow[i] = shadow[i] - one_minus_decay * (shadow[i] - param[i]);
    }
}

// Thread-to-element mapping: REDUCE_THREADS threads per block, grid-stride over the n elements;
// block b writes partials[b] = sum |g|^power of the elements its threads saw (in double; power
// 2: g * g; infinite power: the largest |g|). The glue sums (or takes the max of) the partials.
template <typename T>
__global__ void norm_partials(const T* __restrict__ grad, long long n, double power,
                              double* __restrict__ partials) {
    __shared__ double partial[REDUCE_THREADS];
    const bool largest = isinf(power);
    double total = 0.0;
    GRID_STRIDE_LOOP(i, n) {
        const double value = fabs((double)grad[i]);
        if (largest) {
            if (value > total || isnan(value)) total = value;
        } else {
            total += power == 2.0 ? value * value : pow(value, power);
        }
    }
    partial[threadIdx.x] = total;
    __syncthreads();
    for (int stride = REDUCE_THREADS / 2; stride > 0; stride /= 2) {
        if (threadIdx.x < stride) {
            const double other = partial[threadIdx.x + stride];
            if (largest) {
                if (other > partial[threadIdx.x] || isnan(other)) partial[threadIdx.x] = other;
            } else {
                partial[threadIdx.x] += other;
            }
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) partials[blockIdx.x] = partial[0];
}

// Thread-to-element mapping: one thread per element i; out = grad * (T)coefficient[0], the
// coefficient read from device memory so that clipping never waits for the host.
template <typename T>
__global__ void scale_into(const T* __restrict__ grad, T* __restrict__ out, long long n,
                           const double* __restrict__ coefficient) {
    const T factor = (T)coefficient[0];
    GRID_STRIDE_LOOP(i, n) {
        out[i] = grad[i] * factor;
    }
}
