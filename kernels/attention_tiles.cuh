// kernels/attention_tiles.cuh — what the fused attention kernels (attention.cu) build on: thin wrappers of the
// PTX instructions they use (ldmatrix, mma.sync m16n8k16 bf16 -> fp32, cp.async, release/acquire, the bulk
// copies) with the fragment layouts spelled out, and the tile loads from global into padded shared memory.
// Included by attention.cu only.
#pragma once
#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

using bf16 = __nv_bfloat16;

namespace {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// ---------------------------------------------------------------------------------------------- PTX wrappers
__device__ __forceinline__ uint32_t smem_u32(const void* p) { return static_cast<uint32_t>(__cvta_generic_to_shared(p)); }

// Four 8x8 bf16 matrices; lanes 8i..8i+7 give the row addresses of matrix i; register i of lane l holds
// row l/4, columns 2(l%4), 2(l%4)+1 of matrix i (.trans: row and column swapped).
__device__ __forceinline__ void ldsm_x4(uint32_t addr, uint32_t (&r)[4]) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr) : "memory");
}
__device__ __forceinline__ void ldsm_x4_t(uint32_t addr, uint32_t (&r)[4]) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr) : "memory");
}
// The row address each lane gives ldmatrix.x4 for a 16x16 block of a row-major tile (row stride S elements),
// as a byte offset from the block's corner; addresses are 32-bit shared-window offsets throughout, so the
// block's position folds into the instruction's immediate.
//   lane_rows16: matrices (rows 0-7, cols 0-7), (rows 8-15, 0-7), (0-7, 8-15), (8-15, 8-15): an A operand
//                [m][k], or with .trans a B operand stored [k][n] (registers 0,1: n 0-7; 2,3: n 8-15)
//   lane_cols16: matrices (rows 0-7, cols 0-7), (0-7, 8-15), (8-15, 0-7), (8-15, 8-15): a B operand stored
//                [n][k] (registers 0,1: n 0-7; 2,3: n 8-15), or with .trans an A operand stored [k][m]
template <int S>
__device__ __forceinline__ uint32_t lane_rows16(int lane) { return uint32_t(((lane & 15) * S + (lane >> 4) * 8) * 2); }
template <int S>
__device__ __forceinline__ uint32_t lane_cols16(int lane) { return uint32_t((((lane & 7) + (lane >> 4) * 8) * S + ((lane >> 3) & 1) * 8) * 2); }

// c[16x8] += a[16x16] b[16x8]. Lane l, g = l/4, q = l%4: a = {(g, 2q..), (g+8, 2q..), (g, 2q+8..), (g+8, 2q+8..)},
// b = {(k 2q.., n g), (k 2q+8.., n g)}, c = {(g, 2q), (g, 2q+1), (g+8, 2q), (g+8, 2q+1)}.
__device__ __forceinline__ void mma16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Copies with zero fill: src_bytes < size fills the rest of the destination with zeros (0 reads nothing).
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, int src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes) : "memory");
}
__device__ __forceinline__ void cp_async4(uint32_t dst, const void* src, int src_bytes) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_group 0;\n" ::: "memory"); }

__device__ __forceinline__ float ex2(float x) {  // 2^x; ex2(-inf) = 0
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}

// Two floats as one bf16x2 register: lo in the low half (the lower column of a fragment pair).
__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    uint32_t u;
    memcpy(&u, &v, 4);
    return u;
}
// C fragments (n-tiles of 8 columns) as the bf16 A fragments of the k-steps over those columns: n-tiles 2kc,
// 2kc+1 are k-step kc (mma.sync's m16n8 and wgmma's accumulators lay a warp's 16 rows out alike).
template <int NT>
__device__ __forceinline__ void pack_fragments(const float (&c)[NT][4], uint32_t (&a)[NT / 2][4]) {
#pragma unroll
    for (int kc = 0; kc < NT / 2; ++kc) {
        a[kc][0] = pack_bf16(c[2 * kc][0], c[2 * kc][1]);
        a[kc][1] = pack_bf16(c[2 * kc][2], c[2 * kc][3]);
        a[kc][2] = pack_bf16(c[2 * kc + 1][0], c[2 * kc + 1][1]);
        a[kc][3] = pack_bf16(c[2 * kc + 1][2], c[2 * kc + 1][3]);
    }
}

// *p += v through the L2's reductions (red.global.add): one 16-byte reduction from sm_90, four 4-byte ones before.
__device__ __forceinline__ void red_add_f32x4(float4* p, float4 v) {
#if __CUDA_ARCH__ >= 900
    atomicAdd(p, v);
#else
    atomicAdd(&p->x, v.x), atomicAdd(&p->y, v.y), atomicAdd(&p->z, v.z), atomicAdd(&p->w, v.w);
#endif
}

__device__ __forceinline__ unsigned ld_acquire(const unsigned* p) {
    unsigned v;
    asm volatile("ld.acquire.gpu.global.u32 %0, [%1];\n" : "=r"(v) : "l"(p) : "memory");
    return v;
}
__device__ __forceinline__ void st_release(unsigned* p, unsigned v) {
    asm volatile("st.release.gpu.global.u32 [%0], %1;\n" ::"l"(p), "r"(v) : "memory");
}

// The TMA's bulk copies from shared to global memory (sm_90; the Hopper backwards' kDqBulk): a store, and an
// fp32 add done in the L2, `bytes` (a multiple of 16) from 16-byte aligned addresses; commit closes a group of
// them; bulk_wait<N> returns once at most N of this thread's groups are still running (the others complete,
// writes done), and bulk_wait_read<N> once the others have read their shared memory (it may be written again).
__device__ __forceinline__ void bulk_store(float* dst, uint32_t src, uint32_t bytes) {
    asm volatile("cp.async.bulk.global.shared::cta.bulk_group [%0], [%1], %2;\n" ::"l"(dst), "r"(src), "r"(bytes) : "memory");
}
__device__ __forceinline__ void bulk_reduce_add_f32(float* dst, uint32_t src, uint32_t bytes) {
    asm volatile("cp.reduce.async.bulk.global.shared::cta.bulk_group.add.f32 [%0], [%1], %2;\n" ::"l"(dst), "r"(src), "r"(bytes) : "memory");
}
__device__ __forceinline__ void bulk_commit() { asm volatile("cp.async.bulk.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void bulk_wait() { asm volatile("cp.async.bulk.wait_group %0;\n" ::"n"(N) : "memory"); }
template <int N>
__device__ __forceinline__ void bulk_wait_read() { asm volatile("cp.async.bulk.wait_group.read %0;\n" ::"n"(N) : "memory"); }

// Rows [0, ROWS) of a tile into shared memory (row stride D + 8): row r from src + r * row_stride, columns
// [0, Dh); rows >= rows_valid and columns >= Dh are zero-filled. Issues cp.async; the caller commits.
template <int ROWS, int D, int THREADS>
__device__ __forceinline__ void load_tile(bf16* dst, const bf16* src, int64_t row_stride, int rows_valid, int Dh,
                                          bool vec16) {
    constexpr int S = D + 8;
    if (vec16) {  // Dh % 8 == 0: 16-byte chunks, each wholly in or out of [0, Dh)
        constexpr int CPR = D / 8, N = ROWS * CPR;
        if constexpr (THREADS % CPR == 0 && ROWS % (THREADS / CPR) == 0) {
            // each thread copies one column chunk of every RSTEP-th row: one pointer, stepped
            constexpr int RSTEP = THREADS / CPR;
            const int r0 = int(threadIdx.x) / CPR, col = (int(threadIdx.x) % CPR) * 8;
            const bf16* s = src + r0 * row_stride + col;
            const uint32_t d = smem_u32(dst + r0 * S + col);
            const bool col_ok = col < Dh;
#pragma unroll
            for (int it = 0; it < ROWS / RSTEP; ++it) {
                const bool ok = col_ok && r0 + it * RSTEP < rows_valid;
                cp_async16(d + it * RSTEP * S * int(sizeof(bf16)), ok ? s : src, ok ? 16 : 0);
                s += RSTEP * row_stride;
            }
        } else {
#pragma unroll
            for (int it = 0; it < (N + THREADS - 1) / THREADS; ++it) {
                const int c = it * THREADS + int(threadIdx.x);
                if (N % THREADS != 0 && c >= N) break;
                const int r = c / CPR, col = (c % CPR) * 8;
                const bool ok = r < rows_valid && col < Dh;
                cp_async16(smem_u32(dst + r * S + col), ok ? src + r * row_stride + col : src, ok ? 16 : 0);
            }
        }
    } else {  // any even Dh: 4-byte chunks
        constexpr int CPR = D / 2, N = ROWS * CPR;
        for (int c = int(threadIdx.x); c < N; c += THREADS) {
            const int r = c / CPR, col = (c % CPR) * 2;
            const bool ok = r < rows_valid && col < Dh;
            cp_async4(smem_u32(dst + r * S + col), ok ? src + r * row_stride + col : src, ok ? 4 : 0);
        }
    }
}

}  // namespace
