// Counter-based random numbers for the default GPU generator (minigen/backend.py): Philox4x32-10
// (Salmon, Moraes, Dror, Shaw, "Parallel random numbers: as easy as 1, 2, 3", SC 2011). Output
// element i of a draw is a function of (seed, offset + i) only, so a generator's whole state is
// those two integers: a checkpoint stores them and a resumed run continues the same stream,
// whatever the grid. seed and offset are 64-bit patterns passed as long long, like every other
// integer argument (kernels/cuda/__init__.py). Grid-stride loops; T is float or double.

#define PHILOX_M0 0xD2511F53u  // the round multipliers and Weyl key increments of Philox4x32
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u
#define PHILOX_W1 0xBB67AE85u
#define PHILOX_ROUNDS 10
#define TWO_POW_MINUS_53 1.1102230246251565e-16  // turns 53 random bits into [0, 1)
#define TWO_PI 6.283185307179586

struct Words {
    unsigned int w[4];
};

// The four 32-bit words of Philox4x32-10 for a 64-bit counter and a 64-bit key.
__device__ __forceinline__ Words philox(unsigned long long counter, unsigned long long key) {
    Words c = {{(unsigned int)counter, (unsigned int)(counter >> 32), 0u, 0u}};
    unsigned int k0 = (unsigned int)key, k1 = (unsigned int)(key >> 32);
    for (int round = 0; round < PHILOX_ROUNDS; ++round) {
        const unsigned long long p0 = (unsigned long long)PHILOX_M0 * c.w[0];
        const unsigned long long p1 = (unsigned long long)PHILOX_M1 * c.w[2];
        const Words next = {{(unsigned int)(p1 >> 32) ^ c.w[1] ^ k0, (unsigned int)p1,
                             (unsigned int)(p0 >> 32) ^ c.w[3] ^ k1, (unsigned int)p0}};
        c = next;
        k0 += PHILOX_W0;
        k1 += PHILOX_W1;
    }
    return c;
}

__device__ __forceinline__ unsigned long long bits64(unsigned int high, unsigned int low) {
    return ((unsigned long long)high << 32) | low;
}

// Thread-to-element mapping: one thread per output element i (counter offset + i); a uniform
// double in [0, 1) from the top 53 bits of the first two words.
template <typename T>
__global__ void random_uniform(T* __restrict__ out, long long total, long long seed,
                               long long offset) {
    for (long long index = blockIdx.x * (long long)blockDim.x + threadIdx.x; index < total;
         index += (long long)blockDim.x * gridDim.x) {
        const Words r = philox((unsigned long long)offset + index, (unsigned long long)seed);
        out[index] = (T)((double)(bits64(r.w[0], r.w[1]) >> 11) * TWO_POW_MINUS_53);
    }
}

// Thread-to-element mapping: one thread per output element i; a standard normal by the
// Box-Muller transform of two uniforms, u1 in (0, 1] (so the log is finite) and u2 in [0, 1).
template <typename T>
__global__ void random_normal(T* __restrict__ out, long long total, long long seed,
                              long long offset) {
    for (long long index = blockIdx.x * (long long)blockDim.x + threadIdx.x; index < total;
         index += (long long)blockDim.x * gridDim.x) {
        const Words r = philox((unsigned long long)offset + index, (unsigned long long)seed);
        const double u1 = (double)((bits64(r.w[0], r.w[1]) >> 11) + 1) * TWO_POW_MINUS_53;
        const double u2 = (double)(bits64(r.w[2], r.w[3]) >> 11) * TWO_POW_MINUS_53;
        out[index] = (T)(sqrt(-2.0 * log(u1)) * cos(TWO_PI * u2));
    }
}
