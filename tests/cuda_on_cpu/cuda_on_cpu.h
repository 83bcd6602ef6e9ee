// CUDA's execution model on CPU threads, so that the unmodified kernels/cuda/*.cu sources run
// in tests on machines without a GPU (see runner.py beside this file, and CANNOT_CATCH.md for
// what this does not prove).
//
// A launch runs in one of two modes, chosen by runner.py from the source:
//  - independent (no __shared__, __syncthreads or warp intrinsics in the source): the blocks are
//    shared out among the CPU's threads (OpenMP), and each block's threads run one after another
//    on its CPU thread. Blocks run concurrently, so atomics between blocks are exercised.
//  - cooperative (CUDA_ON_CPU_COOPERATIVE=1): blocks run one after another, and each block's
//    threads run at once as an OpenMP team of blockDim threads. __shared__ variables become
//    statics (one copy, shared by the block that runs), __syncthreads() is a barrier of the
//    block's threads and warp shuffles are exchanges behind a barrier of the warp's threads. A
//    thread that returns leaves both barriers, as exited threads do on a GPU.
#pragma once

#include <omp.h>
#include <sched.h>

#include <climits>
#include <cmath>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#ifndef CUDA_ON_CPU_COOPERATIVE
#define CUDA_ON_CPU_COOPERATIVE 0
#endif

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __launch_bounds__(...)
#if CUDA_ON_CPU_COOPERATIVE
#define __shared__ static
#endif

struct dim3 {
    unsigned int x, y, z;
    constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1)
        : x(x_), y(y_), z(z_) {}
};
using uint3 = dim3;

inline thread_local uint3 threadIdx, blockIdx;
inline thread_local dim3 blockDim, gridDim;
constexpr int warpSize = 32;

// ----- math that CUDA offers in device code without an include -------------------------------
using std::isfinite;
using std::isinf;
using std::isnan;
#define CUDA_ON_CPU_MIN_MAX(T)                                            \
    inline T max(T a, T b) { return a > b ? a : b; }                      \
    inline T min(T a, T b) { return a < b ? a : b; }
CUDA_ON_CPU_MIN_MAX(int)
CUDA_ON_CPU_MIN_MAX(unsigned int)
CUDA_ON_CPU_MIN_MAX(long long)
CUDA_ON_CPU_MIN_MAX(unsigned long long)
inline float max(float a, float b) { return fmaxf(a, b); }
inline float min(float a, float b) { return fminf(a, b); }
inline double max(double a, double b) { return fmax(a, b); }
inline double min(double a, double b) { return fmin(a, b); }
#undef CUDA_ON_CPU_MIN_MAX
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / sqrt(x); }
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __saturatef(float x) { return fminf(fmaxf(x, 0.0f), 1.0f); }
template <typename T> inline T __ldg(const T* address) { return *address; }
inline int __popc(unsigned int x) { return __builtin_popcount(x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz((unsigned int)x); }

// ----- atomics: the overloads CUDA has, on the host's atomic builtins ----------------------
namespace cuda_on_cpu {
template <typename T, typename Update>
inline T atomic_update(T* address, Update update) {
    T old, desired;
    __atomic_load(address, &old, __ATOMIC_RELAXED);
    do {
        desired = update(old);
    } while (!__atomic_compare_exchange(address, &old, &desired, false, __ATOMIC_RELAXED,
                                        __ATOMIC_RELAXED));
    return old;
}
}  // namespace cuda_on_cpu

#define CUDA_ON_CPU_INTEGER_ATOMICS(T)                                                          \
    inline T atomicAdd(T* a, T v) { return __atomic_fetch_add(a, v, __ATOMIC_RELAXED); }      \
    inline T atomicSub(T* a, T v) { return __atomic_fetch_sub(a, v, __ATOMIC_RELAXED); }      \
    inline T atomicAnd(T* a, T v) { return __atomic_fetch_and(a, v, __ATOMIC_RELAXED); }      \
    inline T atomicOr(T* a, T v) { return __atomic_fetch_or(a, v, __ATOMIC_RELAXED); }        \
    inline T atomicXor(T* a, T v) { return __atomic_fetch_xor(a, v, __ATOMIC_RELAXED); }      \
    inline T atomicExch(T* a, T v) { return __atomic_exchange_n(a, v, __ATOMIC_RELAXED); }    \
    inline T atomicMax(T* a, T v) {                                                            \
        return cuda_on_cpu::atomic_update(a, [v](T old) { return old > v ? old : v; });        \
    }                                                                                          \
    inline T atomicMin(T* a, T v) {                                                            \
        return cuda_on_cpu::atomic_update(a, [v](T old) { return old < v ? old : v; });        \
    }                                                                                          \
    inline T atomicCAS(T* a, T compare, T v) {                                                 \
        __atomic_compare_exchange_n(a, &compare, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED); \
        return compare;                                                                        \
    }
CUDA_ON_CPU_INTEGER_ATOMICS(int)
CUDA_ON_CPU_INTEGER_ATOMICS(unsigned int)
CUDA_ON_CPU_INTEGER_ATOMICS(unsigned long long)
#undef CUDA_ON_CPU_INTEGER_ATOMICS
inline float atomicAdd(float* a, float v) {
    return cuda_on_cpu::atomic_update(a, [v](float old) { return old + v; });
}
inline double atomicAdd(double* a, double v) {
    return cuda_on_cpu::atomic_update(a, [v](double old) { return old + v; });
}
inline float atomicExch(float* a, float v) {
    float old;
    __atomic_exchange(a, &v, &old, __ATOMIC_RELAXED);
    return old;
}
inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_block() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

// ----- barriers, __syncthreads and the warp intrinsics -----------------------------------
namespace cuda_on_cpu {

[[noreturn]] inline void fail(const char* what) {
    std::fprintf(stderr, "cuda_on_cpu: %s\n", what);
    std::fflush(stderr);
    std::abort();
}

// A barrier of `expected` threads that a thread can also leave (when its kernel returns).
class Barrier {
public:
    void reset(int expected) {
        expected_ = expected;
        arrived_ = 0;
    }
    void wait() {
        std::unique_lock<std::mutex> lock(mutex_);
        const unsigned long long generation = generation_;
        if (++arrived_ == expected_) {
            release();
        } else {
            condition_.wait(lock, [&] { return generation != generation_; });
        }
    }
    void leave() {
        std::unique_lock<std::mutex> lock(mutex_);
        --expected_;
        if (arrived_ > 0 && arrived_ == expected_) release();
    }

private:
    void release() {
        arrived_ = 0;
        ++generation_;
        condition_.notify_all();
    }
    std::mutex mutex_;
    std::condition_variable condition_;
    int expected_ = 0, arrived_ = 0;
    unsigned long long generation_ = 0;
};

struct Warp {
    Barrier barrier;
    int lanes = 0;  // threads in this warp: 32, or fewer in a block's last warp
    unsigned long long slots[warpSize];
};

struct Block {
    Barrier barrier;
    std::vector<Warp> warps;
};

inline Block* current_block = nullptr;  // cooperative mode runs one block at a time

inline int linear_thread_index() {
    return (int)((threadIdx.z * blockDim.y + threadIdx.y) * blockDim.x + threadIdx.x);
}

inline Block& block_or_fail(const char* what) {
    if (!CUDA_ON_CPU_COOPERATIVE || current_block == nullptr) fail(what);
    return *current_block;
}

inline Warp& warp_of_this_thread(unsigned mask, const char* what) {
    Warp& warp = block_or_fail(what).warps[linear_thread_index() / warpSize];
    const unsigned everyone = warp.lanes == warpSize ? 0xffffffffu : (1u << warp.lanes) - 1u;
    if ((mask & everyone) != everyone) {
        fail("a warp intrinsic was called with a mask that leaves out lanes of its warp; the "
             "CPU runner only supports whole-warp masks");
    }
    return warp;
}

// Every lane publishes `value`; each then reads lane `source(lane)` (or keeps its own value
// where the source is outside its warp segment).
template <typename T, typename Source>
inline T exchange(unsigned mask, T value, Source source, const char* what) {
    static_assert(sizeof(T) <= sizeof(unsigned long long), "warp shuffle of a wide type");
    Warp& warp = warp_of_this_thread(mask, what);
    const int lane = linear_thread_index() % warpSize;
    std::memcpy(&warp.slots[lane], &value, sizeof(T));
    warp.barrier.wait();
    const int from = source(lane);
    T result = value;
    if (from >= 0 && from < warp.lanes) std::memcpy(&result, &warp.slots[from], sizeof(T));
    warp.barrier.wait();
    return result;
}

}  // namespace cuda_on_cpu

inline void __syncthreads() {
    cuda_on_cpu::block_or_fail("__syncthreads outside a cooperative launch").barrier.wait();
}
inline void __syncwarp(unsigned mask = 0xffffffffu) {
    cuda_on_cpu::warp_of_this_thread(mask, "__syncwarp outside a cooperative launch").barrier.wait();
}
inline unsigned __activemask() {
    cuda_on_cpu::Warp& warp = cuda_on_cpu::warp_of_this_thread(0xffffffffu, "__activemask");
    return warp.lanes == warpSize ? 0xffffffffu : (1u << warp.lanes) - 1u;
}
template <typename T>
inline T __shfl_sync(unsigned mask, T value, int source_lane, int width = warpSize) {
    return cuda_on_cpu::exchange(mask, value, [&](int lane) {
        return lane / width * width + ((source_lane % width) + width) % width;
    }, "__shfl_sync outside a cooperative launch");
}
template <typename T>
inline T __shfl_up_sync(unsigned mask, T value, unsigned delta, int width = warpSize) {
    return cuda_on_cpu::exchange(mask, value, [&](int lane) {
        return lane % width >= (int)delta ? lane - (int)delta : -1;
    }, "__shfl_up_sync outside a cooperative launch");
}
template <typename T>
inline T __shfl_down_sync(unsigned mask, T value, unsigned delta, int width = warpSize) {
    return cuda_on_cpu::exchange(mask, value, [&](int lane) {
        return lane % width + (int)delta < width ? lane + (int)delta : -1;
    }, "__shfl_down_sync outside a cooperative launch");
}
template <typename T>
inline T __shfl_xor_sync(unsigned mask, T value, int lane_mask, int width = warpSize) {
    return cuda_on_cpu::exchange(mask, value, [&](int lane) {
        const int from = lane ^ lane_mask;
        return from / width == lane / width ? from : -1;
    }, "__shfl_xor_sync outside a cooperative launch");
}
inline unsigned __ballot_sync(unsigned mask, int predicate) {
    unsigned ballot = 0;
    for (int source = 0; source < warpSize; ++source) {
        const int vote = cuda_on_cpu::exchange(mask, predicate ? 1 : 0,
                                               [&](int) { return source; }, "__ballot_sync");
        if (vote) ballot |= 1u << source;
    }
    return ballot;
}
inline int __any_sync(unsigned mask, int predicate) { return __ballot_sync(mask, predicate) != 0; }
inline int __all_sync(unsigned mask, int predicate) {
    return __ballot_sync(mask, predicate) == __activemask();
}

// ----- the launcher and the parameter descriptions runner.py checks arguments against ----
namespace cuda_on_cpu {

template <typename T> struct dtype_name { static constexpr const char* value = "unsupported"; };
#define CUDA_ON_CPU_DTYPE(T, NAME) \
    template <> struct dtype_name<T> { static constexpr const char* value = NAME; };
CUDA_ON_CPU_DTYPE(bool, "bool")
CUDA_ON_CPU_DTYPE(char, "int8")
CUDA_ON_CPU_DTYPE(signed char, "int8")
CUDA_ON_CPU_DTYPE(unsigned char, "uint8")
CUDA_ON_CPU_DTYPE(short, "int16")
CUDA_ON_CPU_DTYPE(unsigned short, "uint16")
CUDA_ON_CPU_DTYPE(int, "int32")
CUDA_ON_CPU_DTYPE(unsigned int, "uint32")
CUDA_ON_CPU_DTYPE(long, "int64")
CUDA_ON_CPU_DTYPE(unsigned long, "uint64")
CUDA_ON_CPU_DTYPE(long long, "int64")
CUDA_ON_CPU_DTYPE(unsigned long long, "uint64")
CUDA_ON_CPU_DTYPE(float, "float32")
CUDA_ON_CPU_DTYPE(double, "float64")
#undef CUDA_ON_CPU_DTYPE

// "float32" for a scalar, "float32*" or "const float32*" for a pointer.
template <typename P> std::string describe() {
    using Plain = std::remove_cv_t<P>;
    if constexpr (std::is_pointer_v<Plain>) {
        using Pointee = std::remove_pointer_t<Plain>;
        return std::string(std::is_const_v<Pointee> ? "const " : "") +
               dtype_name<std::remove_cv_t<Pointee>>::value + "*";
    } else {
        return dtype_name<Plain>::value;
    }
}

template <typename... Params> const char* signature(void (*)(Params...)) {
    static const std::string text = [] {
        std::string joined;
        ((joined += describe<Params>() + ","), ...);
        return joined;
    }();
    return text.c_str();
}

template <typename... Params, std::size_t... I>
inline void call(void (*kernel)(Params...), void** args, std::index_sequence<I...>) {
    kernel(*static_cast<std::remove_cv_t<Params>*>(args[I])...);
}

inline void set_thread_index(unsigned int linear) {
    threadIdx = dim3(linear % blockDim.x, linear / blockDim.x % blockDim.y,
                     linear / (blockDim.x * blockDim.y));
}

inline void set_block_index(unsigned long long linear) {
    blockIdx = dim3((unsigned int)(linear % gridDim.x),
                    (unsigned int)(linear / gridDim.x % gridDim.y),
                    (unsigned int)(linear / ((unsigned long long)gridDim.x * gridDim.y)));
}

// grid and block are (x, y, z); args as cudaLaunchKernel takes them: one pointer per
// parameter, to the parameter's value. runner.py has checked the limits and the types.
template <typename... Params>
void launch(void (*kernel)(Params...), const unsigned int* grid, const unsigned int* block,
            void** args) {
    const dim3 grid_dim(grid[0], grid[1], grid[2]), block_dim(block[0], block[1], block[2]);
    const unsigned long long blocks = (unsigned long long)grid[0] * grid[1] * grid[2];
    const unsigned int threads = block[0] * block[1] * block[2];
    const auto sequence = std::index_sequence_for<Params...>{};
    omp_set_dynamic(0);
    if (!CUDA_ON_CPU_COOPERATIVE) {
#pragma omp parallel for schedule(dynamic, 1)
        for (unsigned long long b = 0; b < blocks; ++b) {
            gridDim = grid_dim;
            blockDim = block_dim;
            set_block_index(b);
            for (unsigned int t = 0; t < threads; ++t) {
                set_thread_index(t);
                call(kernel, args, sequence);
            }
        }
        return;
    }
    Block state;
    state.warps = std::vector<Warp>((threads + warpSize - 1) / warpSize);
    for (unsigned long long b = 0; b < blocks; ++b) {
        state.barrier.reset((int)threads);
        for (std::size_t w = 0; w < state.warps.size(); ++w) {
            const int lanes = (int)std::min<unsigned int>(warpSize, threads - w * warpSize);
            state.warps[w].lanes = lanes;
            state.warps[w].barrier.reset(lanes);
        }
        current_block = &state;
#pragma omp parallel num_threads(threads)
        {
            if ((unsigned int)omp_get_num_threads() != threads) {
                fail("OpenMP gave fewer threads than the block has (OMP_THREAD_LIMIT?)");
            }
            gridDim = grid_dim;
            blockDim = block_dim;
            set_block_index(b);
            set_thread_index((unsigned int)omp_get_thread_num());
            call(kernel, args, sequence);
            state.barrier.leave();
            state.warps[linear_thread_index() / warpSize].barrier.leave();
        }
        current_block = nullptr;
    }
}

}  // namespace cuda_on_cpu
