// kernels/cuda_common.cuh — what the kernels share: the launch size of an elementwise kernel and the block-wide
// reductions. Included by .cu files only.
#pragma once
#include <cmath>
#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

using bf16 = __nv_bfloat16;

constexpr int kThreads = 256;  // threads per block of the elementwise and row kernels

// Blocks that cover n items at `threads` per block (grid-stride kernels may take fewer: they loop).
inline unsigned blocks_for(int64_t n, int threads = kThreads) {
    int64_t b = (n + threads - 1) / threads;
    return unsigned(b < 1 ? 1 : (b > (1 << 30) ? (1 << 30) : b));
}

// Where element i of a [n / cols, cols] matrix sits when its rows lie ld apart (ld == cols: contiguous).
__device__ inline int64_t row_at(int64_t i, int cols, int ld) { return ld == cols ? i : i / cols * ld + i % cols; }

// RoPE's rotation of one pair (x1 at column i, x2 at i + Dh/2) by the angle whose cos and sin are c, s (-s:
// back, the backward):  (x1, x2) -> (x1 c - x2 s,  x2 c + x1 s)
__device__ inline void rotate_pair(float& x1, float& x2, float c, float s) {
    const float a = x1;
    x1 = a * c - x2 * s;
    x2 = x2 * c + a * s;
}

// The sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the total, summed
// in a fixed order (deterministic).
__device__ inline float block_sum(float v) {
    __shared__ float partial[32];
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    __syncthreads();
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    float total = 0;
    for (int w = 0; w < int(blockDim.x + 31) / 32; ++w) total += partial[w];
    return total;
}

// The maximum over the block; every thread gets it.
__device__ inline float block_max(float v) {
    __shared__ float partial[32];
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffff, v, o));
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    __syncthreads();
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    float m = -INFINITY;
    for (int w = 0; w < int(blockDim.x + 31) / 32; ++w) m = fmaxf(m, partial[w]);
    return m;
}

// W consecutive bf16 values as floats and back. W = 8 is one 16-byte access (p must be 16-byte aligned):
// the row and elementwise kernels take 8 at a time when their sizes are multiples of 8, else 1.
template <int W>
__device__ inline void load_bf16(const bf16* p, float* f) {
    if constexpr (W == 8) {
        uint4 u = *reinterpret_cast<const uint4*>(p);
        const bf16* e = reinterpret_cast<const bf16*>(&u);
        for (int k = 0; k < 8; ++k) f[k] = __bfloat162float(e[k]);
    } else {
        for (int k = 0; k < W; ++k) f[k] = __bfloat162float(p[k]);
    }
}
template <int W>
__device__ inline void store_bf16(bf16* p, const float* f) {
    if constexpr (W == 8) {
        uint4 u;
        bf16* e = reinterpret_cast<bf16*>(&u);
        for (int k = 0; k < 8; ++k) e[k] = __float2bfloat16(f[k]);
        *reinterpret_cast<uint4*>(p) = u;
    } else {
        for (int k = 0; k < W; ++k) p[k] = __float2bfloat16(f[k]);
    }
}
