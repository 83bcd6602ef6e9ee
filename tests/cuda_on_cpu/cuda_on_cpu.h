// CUDA's execution model on CPU threads, so that the unmodified kernels/cuda/*.cu sources run
// in tests on machines without a GPU (see runner.py beside this file, and CANNOT_CATCH.md for
// what this does not prove).
//
// The blocks of a launch are shared out among the CPU's threads (OpenMP), so blocks run
// concurrently and atomics between them are exercised. Within a block, one of two modes, chosen
// by runner.py from the source:
//  - independent (no __shared__, __syncthreads or warp intrinsics in the source): the block's
//    threads run one after another.
//  - cooperative (CUDA_ON_CPU_COOPERATIVE=1): each of the block's threads is a fiber (ucontext)
//    on the block's CPU thread. __shared__ variables are thread_local statics (one copy per
//    block that runs), __syncthreads() switches to the next fiber until every live thread of the
//    block has arrived, and warp shuffles exchange values behind a barrier of the warp's lanes.
//    A thread that returns leaves both barriers, as exited threads do on a GPU. Fibers run in a
//    different order after every barrier, so a missing barrier shows as a wrong result; threads
//    that wait at different barriers end the run with a message instead of hanging.
#pragma once

#include <omp.h>
#include <sys/mman.h>
#include <ucontext.h>
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#endif

#include <climits>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
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
#define __shared__ static thread_local
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

// ----- fibers, __syncthreads and the warp intrinsics -------------------------------------
namespace cuda_on_cpu {

[[noreturn]] inline void fail(const char* what) {
    std::fprintf(stderr, "cuda_on_cpu: %s\n", what);
    std::fflush(stderr);
    std::abort();
}

enum class Wait { none, block, warp, done };

struct Fiber {
    ucontext_t context;
    char* stack = nullptr;
    Wait wait = Wait::none;
};

// One block being run by one CPU thread: its threads' fibers and where each of them waits.
struct Block {
    std::vector<Fiber> fibers;
    std::vector<int> warp_lanes;                // live lanes of each warp
    std::vector<unsigned long long> warp_slots;  // 32 exchange slots per warp
    ucontext_t scheduler;
    int current = 0, live = 0;
    std::function<void()> body;
    const void* scheduler_stack = nullptr;
    std::size_t scheduler_stack_size = 0;
};

inline thread_local Block* current_block = nullptr;
#if defined(__SANITIZE_ADDRESS__)
constexpr std::size_t FIBER_STACK_BYTES = 512 * 1024;  // room for the sanitizer's redzones
#else
constexpr std::size_t FIBER_STACK_BYTES = 128 * 1024;
#endif

// The fiber stacks of this CPU thread, kept from launch to launch: mapped, never zeroed, so
// only the pages a kernel touches cost memory.
inline char* fiber_stacks(unsigned int threads) {
    static thread_local char* stacks = nullptr;
    static thread_local std::size_t bytes = 0;
    const std::size_t needed = (std::size_t)threads * FIBER_STACK_BYTES;
    if (needed > bytes) {
        if (stacks != nullptr) munmap(stacks, bytes);
        void* memory = mmap(nullptr, needed, PROT_READ | PROT_WRITE,
                            MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (memory == MAP_FAILED) fail("cannot map the fiber stacks");
        stacks = static_cast<char*>(memory);
        bytes = needed;
    }
    return stacks;
}

inline int linear_thread_index() {
    return (int)((threadIdx.z * blockDim.y + threadIdx.y) * blockDim.x + threadIdx.x);
}

inline void switch_context(ucontext_t* from, ucontext_t* to, const void* to_stack,
                           std::size_t to_size, bool leaving_for_good = false) {
#if defined(__SANITIZE_ADDRESS__)
    void* fake_stack = nullptr;
    __sanitizer_start_switch_fiber(leaving_for_good ? nullptr : &fake_stack, to_stack, to_size);
    swapcontext(from, to);
    __sanitizer_finish_switch_fiber(fake_stack, nullptr, nullptr);
#else
    (void)to_stack, (void)to_size, (void)leaving_for_good;
    swapcontext(from, to);
#endif
}

// Back to the scheduler until released (wait) or for good (done).
inline void yield(Wait wait) {
    Block& block = *current_block;
    Fiber& fiber = block.fibers[block.current];
    fiber.wait = wait;
    switch_context(&fiber.context, &block.scheduler, block.scheduler_stack,
                   block.scheduler_stack_size, wait == Wait::done);
}

inline void fiber_main() {
    Block& block = *current_block;
#if defined(__SANITIZE_ADDRESS__)
    __sanitizer_finish_switch_fiber(nullptr, &block.scheduler_stack, &block.scheduler_stack_size);
#endif
    block.body();
    yield(Wait::done);
}

inline Block& block_or_fail(const char* what) {
    if (!CUDA_ON_CPU_COOPERATIVE || current_block == nullptr) fail(what);
    return *current_block;
}

inline unsigned full_mask(int lanes) {
    return lanes >= warpSize ? 0xffffffffu : (1u << lanes) - 1u;
}

inline int warp_size_of(const Block& block, int warp) {
    const int threads = (int)block.fibers.size();
    return std::min(warpSize, threads - warp * warpSize);
}

inline void check_mask(unsigned mask, const char* what) {
    Block& block = block_or_fail(what);
    const unsigned everyone = full_mask(warp_size_of(block, linear_thread_index() / warpSize));
    if ((mask & everyone) != everyone) {
        fail("a warp intrinsic was called with a mask that leaves out lanes of its warp; the "
             "CPU runner only supports whole-warp masks");
    }
}

// Every lane publishes `value`; each then reads lane `source(lane)` of its warp (or keeps its
// own value where the source is outside its warp segment).
template <typename T, typename Source>
inline T exchange(unsigned mask, T value, Source source, const char* what) {
    static_assert(sizeof(T) <= sizeof(unsigned long long), "warp shuffle of a wide type");
    check_mask(mask, what);
    Block& block = *current_block;
    const int thread = linear_thread_index(), warp = thread / warpSize, lane = thread % warpSize;
    unsigned long long* slots = &block.warp_slots[(std::size_t)warp * warpSize];
    std::memcpy(&slots[lane], &value, sizeof(T));
    yield(Wait::warp);
    const int from = source(lane);
    T result = value;
    if (from >= 0 && from < warp_size_of(block, warp)) std::memcpy(&result, &slots[from], sizeof(T));
    yield(Wait::warp);
    return result;
}

// Run one block: every fiber until it waits or ends, then release the barriers that every
// live thread concerned has reached; in a new order each round.
inline void run_block(Block& block, unsigned long long block_number) {
    const int threads = (int)block.fibers.size();
    const dim3 block_dim = blockDim;
    std::vector<int> order(threads);
    for (int t = 0; t < threads; ++t) order[t] = t;
    unsigned long long random = 0x9E3779B97F4A7C15ull ^ (block_number + 1);
    block.live = threads;
    while (block.live > 0) {
        bool progressed = false;
        for (int t : order) {
            Fiber& fiber = block.fibers[t];
            if (fiber.wait != Wait::none) continue;
            block.current = t;
            threadIdx = dim3(t % block_dim.x, t / block_dim.x % block_dim.y,
                             t / (block_dim.x * block_dim.y));
            switch_context(&block.scheduler, &fiber.context, fiber.stack, FIBER_STACK_BYTES);
            if (fiber.wait == Wait::done) {
                --block.live;
                --block.warp_lanes[t / warpSize];
            }
            progressed = true;
        }
        int at_block = 0;
        std::vector<int> at_warp(block.warp_lanes.size(), 0);
        for (int t = 0; t < threads; ++t) {
            if (block.fibers[t].wait == Wait::block) ++at_block;
            if (block.fibers[t].wait == Wait::warp) ++at_warp[t / warpSize];
        }
        bool released = false;
        for (int t = 0; t < threads; ++t) {
            Fiber& fiber = block.fibers[t];
            const int warp = t / warpSize;
            if ((fiber.wait == Wait::block && at_block == block.live) ||
                (fiber.wait == Wait::warp && at_warp[warp] == block.warp_lanes[warp])) {
                fiber.wait = Wait::none;
                released = true;
            }
        }
        if (!progressed && !released && block.live > 0) {
            fail("deadlock: the threads of a block wait at different barriers (a __syncthreads "
                 "or warp intrinsic that not every live thread reaches)");
        }
        for (int t = threads - 1; t > 0; --t) {  // a new order for the next round
            random ^= random << 13, random ^= random >> 7, random ^= random << 17;
            std::swap(order[t], order[random % (unsigned long long)(t + 1)]);
        }
    }
}

}  // namespace cuda_on_cpu

inline void __syncthreads() {
    cuda_on_cpu::block_or_fail("__syncthreads outside a cooperative launch");
    cuda_on_cpu::yield(cuda_on_cpu::Wait::block);
}
inline void __syncwarp(unsigned mask = 0xffffffffu) {
    cuda_on_cpu::check_mask(mask, "__syncwarp outside a cooperative launch");
    cuda_on_cpu::yield(cuda_on_cpu::Wait::warp);
}
inline unsigned __activemask() {
    cuda_on_cpu::Block& block = cuda_on_cpu::block_or_fail("__activemask outside a cooperative launch");
    return cuda_on_cpu::full_mask(
        cuda_on_cpu::warp_size_of(block, cuda_on_cpu::linear_thread_index() / warpSize));
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
#pragma omp parallel
    {
        gridDim = grid_dim;
        blockDim = block_dim;
        Block state;
        if (CUDA_ON_CPU_COOPERATIVE) {
            state.fibers.resize(threads);
            state.warp_slots.resize(((threads + warpSize - 1) / warpSize) * (std::size_t)warpSize);
            state.body = [&] { call(kernel, args, sequence); };
        }
#pragma omp for schedule(dynamic, 1)
        for (unsigned long long b = 0; b < blocks; ++b) {
            set_block_index(b);
            if (!CUDA_ON_CPU_COOPERATIVE) {
                for (unsigned int t = 0; t < threads; ++t) {
                    set_thread_index(t);
                    call(kernel, args, sequence);
                }
                continue;
            }
            state.warp_lanes.assign((threads + warpSize - 1) / warpSize, 0);
            char* const stacks = fiber_stacks(threads);
            for (unsigned int t = 0; t < threads; ++t) {
                Fiber& fiber = state.fibers[t];
                ++state.warp_lanes[t / warpSize];
                fiber.wait = Wait::none;
                fiber.stack = stacks + (std::size_t)t * FIBER_STACK_BYTES;
                getcontext(&fiber.context);
                fiber.context.uc_stack.ss_sp = fiber.stack;
                fiber.context.uc_stack.ss_size = FIBER_STACK_BYTES;
                fiber.context.uc_link = nullptr;
                makecontext(&fiber.context, fiber_main, 0);
            }
            current_block = &state;
            run_block(state, b);
            current_block = nullptr;
        }
    }
}

}  // namespace cuda_on_cpu
