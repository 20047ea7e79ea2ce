// kernels/attention_sm90.cuh — the fused attention forward for Hopper (H100, H200; an sm_90a build), head_dim 64
// and 128, and what the Hopper backwards share with it (their files: attention_sm90_ws_bwd.cuh, the library's
// for both head dims, and attention_sm90_bwd.cuh, head_dim 64's before it): the same math, tiles' order and masks as attention.cu's mma.sync
// kernels, with every product on wgmma (the warpgroup-wide asynchronous MMA reading its operands from 128-byte
// swizzled shared memory) and the loads on the Tensor Memory Accelerator.
//   forward   flash_forward_wgmma_kernel: head_dim 64: 3 warpgroups x 64 query rows, 128-key blocks in 3 TMA
//             stages; head_dim 128: 2 warpgroups, each row as two 64-column halves, issuing their products in
//             turn (FlashAttention-3's pingpong); FlashAttention-3's overlap of one key block's softmax with the
//             next block's products; dev v15 (WgFwdConfig's WS): a producer warpgroup does the loads
// attention.cu includes this file after its own kernels (it uses FwdArgs, ...) and runs the Hopper kernels
// where wgmma_applies() and the mma.sync ones elsewhere; what they measured against the mma.sync kernels, and
// what would make them faster: dev/NOTES.md.
#pragma once
#include <cuda.h>           // CUtensorMap (the forward's TMA loads)
#include <cudaTypedefs.h>   // PFN_cuTensorMapEncodeTiled

namespace {

// ---------------------------------------------------------------------------------------------- Hopper (sm_90a)
// wgmma: one warpgroup (4 warps) computes D[64 x N] += A[64 x 16] B[16 x N] asynchronously, reading operands
// from shared memory through descriptors (A may instead come from registers). The accumulator layout is
// that of mma.m16n8k16 C fragments: warp w of the group holds rows 16w.., and d[j][0..3] is n-tile j
// ((g, 2q), (g, 2q+1), (g+8, 2q), (g+8, 2q+1)); a register A operand is the mma.m16n8k16 A fragment.
// Tiles are rows of 128 bytes (64 bf16) in 1024-byte aligned atoms of 8 rows, 16-byte chunk c of row r stored
// at chunk c ^ (r % 8) (the 128-byte swizzle). An operand is K-major (k contiguous in a row: the default) or
// MN-major (m or n contiguous: transposed, TA/TB = 1); for both, 8-row groups are 1024 bytes apart, and a
// k step of 16 moves the start by 32 bytes (K-major) or 2048 bytes (MN-major).
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define ATTENTION_WGMMA 1
#endif

// The matrix descriptor: start address / 16 (bits 0-13), leading and stride byte offsets / 16 (16-29, 32-45),
// 128-byte swizzle (bits 62-63 = 1). K-major: the stride offset is the 8-row step (1024), the leading one is
// unused (1). MN-major with at most 64 elements along M or N: one offset is the 8-row step along k and the
// other (the step between 64-element atoms along M or N) is unused, so both are 1024.
__device__ __forceinline__ uint64_t sw128_desc(uint32_t addr, bool mn_major) {
    const uint64_t lbo = mn_major ? 1024 >> 4 : 1, sbo = 1024 >> 4;
    return uint64_t((addr & 0x3FFFFu) >> 4) | (lbo << 16) | (sbo << 32) | (uint64_t(1) << 62);
}
// The descriptor of the tile `bytes` further on (a multiple of 16): only the start address field changes,
// and it cannot carry over in shared memory (addresses < 2^18), so a 32-bit add on the low word does it.
__device__ __forceinline__ uint64_t sw128_desc_plus(uint64_t desc, uint32_t bytes) {
    return (desc & 0xFFFFFFFF00000000ull) | uint32_t(uint32_t(desc) + (bytes >> 4));
}
__device__ __forceinline__ uint32_t sw128_offset(int row, int col) {  // byte offset of element (row, col) in a tile
    return uint32_t(row * 128 + ((((col >> 3) ^ row) & 7) << 4) + (col & 7) * 2);
}

#if ATTENTION_WGMMA
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wgmma_wait() { asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory"); }
// Generic-proxy writes to shared memory (st.shared, cp.async) made visible to wgmma's reads (async proxy).
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
// Keeps the compiler from moving reads of accumulators above the wait that completes them.
template <int N>
__device__ __forceinline__ void wgmma_pin(float (&d)[N][4]) {
#pragma unroll
    for (int i = 0; i < N; ++i) asm volatile("" : "+f"(d[i][0]), "+f"(d[i][1]), "+f"(d[i][2]), "+f"(d[i][3])::"memory");
}

// d[64 x N] += A B (ACC = 1) or d = A B (ACC = 0), A and B in shared memory. With ACC = 0 the accumulators
// are write-only operands: no older value flows in (else the compiler may keep d in the registers of an older
// value that other instructions write while a product is in flight, and ptxas then serializes every wgmma of
// the kernel).
template <int TA, int TB, int ACC = 1>
__device__ __forceinline__ void wgmma_64x64_ss(float (&d)[8][4], uint64_t a, uint64_t b) {
    if constexpr (ACC) {
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
                     "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, %32, %33, p, 1, 1, %34, %35;\n}\n"
                     : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]),
                     "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]), "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3])
                     : "l"(a), "l"(b), "n"(TA), "n"(TB));
    } else {
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, 0, 0;\n"
                     "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, %32, %33, p, 1, 1, %34, %35;\n}\n"
                     : "=f"(d[0][0]), "=f"(d[0][1]), "=f"(d[0][2]), "=f"(d[0][3]), "=f"(d[1][0]), "=f"(d[1][1]), "=f"(d[1][2]), "=f"(d[1][3]), "=f"(d[2][0]), "=f"(d[2][1]), "=f"(d[2][2]), "=f"(d[2][3]), "=f"(d[3][0]), "=f"(d[3][1]), "=f"(d[3][2]), "=f"(d[3][3]),
                     "=f"(d[4][0]), "=f"(d[4][1]), "=f"(d[4][2]), "=f"(d[4][3]), "=f"(d[5][0]), "=f"(d[5][1]), "=f"(d[5][2]), "=f"(d[5][3]), "=f"(d[6][0]), "=f"(d[6][1]), "=f"(d[6][2]), "=f"(d[6][3]), "=f"(d[7][0]), "=f"(d[7][1]), "=f"(d[7][2]), "=f"(d[7][3])
                     : "l"(a), "l"(b), "n"(TA), "n"(TB));
    }
}
template <int TA, int TB, int ACC = 1>
__device__ __forceinline__ void wgmma_64x96_ss(float (&d)[12][4], uint64_t a, uint64_t b) {
    if constexpr (ACC) {
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
                     "wgmma.mma_async.sync.aligned.m64n96k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47}, %48, %49, p, 1, 1, %50, %51;\n}\n"
                     : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]),
                     "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]), "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3]),
                     "+f"(d[8][0]), "+f"(d[8][1]), "+f"(d[8][2]), "+f"(d[8][3]), "+f"(d[9][0]), "+f"(d[9][1]), "+f"(d[9][2]), "+f"(d[9][3]), "+f"(d[10][0]), "+f"(d[10][1]), "+f"(d[10][2]), "+f"(d[10][3]), "+f"(d[11][0]), "+f"(d[11][1]), "+f"(d[11][2]), "+f"(d[11][3])
                     : "l"(a), "l"(b), "n"(TA), "n"(TB));
    } else {
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, 0, 0;\n"
                     "wgmma.mma_async.sync.aligned.m64n96k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47}, %48, %49, p, 1, 1, %50, %51;\n}\n"
                     : "=f"(d[0][0]), "=f"(d[0][1]), "=f"(d[0][2]), "=f"(d[0][3]), "=f"(d[1][0]), "=f"(d[1][1]), "=f"(d[1][2]), "=f"(d[1][3]), "=f"(d[2][0]), "=f"(d[2][1]), "=f"(d[2][2]), "=f"(d[2][3]), "=f"(d[3][0]), "=f"(d[3][1]), "=f"(d[3][2]), "=f"(d[3][3]),
                     "=f"(d[4][0]), "=f"(d[4][1]), "=f"(d[4][2]), "=f"(d[4][3]), "=f"(d[5][0]), "=f"(d[5][1]), "=f"(d[5][2]), "=f"(d[5][3]), "=f"(d[6][0]), "=f"(d[6][1]), "=f"(d[6][2]), "=f"(d[6][3]), "=f"(d[7][0]), "=f"(d[7][1]), "=f"(d[7][2]), "=f"(d[7][3]),
                     "=f"(d[8][0]), "=f"(d[8][1]), "=f"(d[8][2]), "=f"(d[8][3]), "=f"(d[9][0]), "=f"(d[9][1]), "=f"(d[9][2]), "=f"(d[9][3]), "=f"(d[10][0]), "=f"(d[10][1]), "=f"(d[10][2]), "=f"(d[10][3]), "=f"(d[11][0]), "=f"(d[11][1]), "=f"(d[11][2]), "=f"(d[11][3])
                     : "l"(a), "l"(b), "n"(TA), "n"(TB));
    }
}
template <int TA, int TB, int ACC = 1>
__device__ __forceinline__ void wgmma_64x128_ss(float (&d)[16][4], uint64_t a, uint64_t b) {
    if constexpr (ACC) {
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
                     "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, p, 1, 1, %66, %67;\n}\n"
                     : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]),
                     "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]), "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3]),
                     "+f"(d[8][0]), "+f"(d[8][1]), "+f"(d[8][2]), "+f"(d[8][3]), "+f"(d[9][0]), "+f"(d[9][1]), "+f"(d[9][2]), "+f"(d[9][3]), "+f"(d[10][0]), "+f"(d[10][1]), "+f"(d[10][2]), "+f"(d[10][3]), "+f"(d[11][0]), "+f"(d[11][1]), "+f"(d[11][2]), "+f"(d[11][3]),
                     "+f"(d[12][0]), "+f"(d[12][1]), "+f"(d[12][2]), "+f"(d[12][3]), "+f"(d[13][0]), "+f"(d[13][1]), "+f"(d[13][2]), "+f"(d[13][3]), "+f"(d[14][0]), "+f"(d[14][1]), "+f"(d[14][2]), "+f"(d[14][3]), "+f"(d[15][0]), "+f"(d[15][1]), "+f"(d[15][2]), "+f"(d[15][3])
                     : "l"(a), "l"(b), "n"(TA), "n"(TB));
    } else {
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, 0, 0;\n"
                     "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, p, 1, 1, %66, %67;\n}\n"
                     : "=f"(d[0][0]), "=f"(d[0][1]), "=f"(d[0][2]), "=f"(d[0][3]), "=f"(d[1][0]), "=f"(d[1][1]), "=f"(d[1][2]), "=f"(d[1][3]), "=f"(d[2][0]), "=f"(d[2][1]), "=f"(d[2][2]), "=f"(d[2][3]), "=f"(d[3][0]), "=f"(d[3][1]), "=f"(d[3][2]), "=f"(d[3][3]),
                     "=f"(d[4][0]), "=f"(d[4][1]), "=f"(d[4][2]), "=f"(d[4][3]), "=f"(d[5][0]), "=f"(d[5][1]), "=f"(d[5][2]), "=f"(d[5][3]), "=f"(d[6][0]), "=f"(d[6][1]), "=f"(d[6][2]), "=f"(d[6][3]), "=f"(d[7][0]), "=f"(d[7][1]), "=f"(d[7][2]), "=f"(d[7][3]),
                     "=f"(d[8][0]), "=f"(d[8][1]), "=f"(d[8][2]), "=f"(d[8][3]), "=f"(d[9][0]), "=f"(d[9][1]), "=f"(d[9][2]), "=f"(d[9][3]), "=f"(d[10][0]), "=f"(d[10][1]), "=f"(d[10][2]), "=f"(d[10][3]), "=f"(d[11][0]), "=f"(d[11][1]), "=f"(d[11][2]), "=f"(d[11][3]),
                     "=f"(d[12][0]), "=f"(d[12][1]), "=f"(d[12][2]), "=f"(d[12][3]), "=f"(d[13][0]), "=f"(d[13][1]), "=f"(d[13][2]), "=f"(d[13][3]), "=f"(d[14][0]), "=f"(d[14][1]), "=f"(d[14][2]), "=f"(d[14][3]), "=f"(d[15][0]), "=f"(d[15][1]), "=f"(d[15][2]), "=f"(d[15][3])
                     : "l"(a), "l"(b), "n"(TA), "n"(TB));
    }
}
// d[64 x 64] += A B, A in registers (this warp's 16 rows, an mma A fragment), B in shared memory
template <int TB>
__device__ __forceinline__ void wgmma_64x64_rs(float (&d)[8][4], const uint32_t (&a)[4], uint64_t b) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, {%32, %33, %34, %35}, %36, p, 1, 1, %37;\n}\n"
                 : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]), "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]), "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "n"(TB));
}
// The same for register A operands, before wgmma_fence: keeps the instructions that write them above it
// (ptxas serializes every wgmma of the kernel if one lands between the fence and the wgmma).
template <int N>
__device__ __forceinline__ void wgmma_pin(uint32_t (&a)[N][4]) {
#pragma unroll
    for (int i = 0; i < N; ++i) asm volatile("" : "+r"(a[i][0]), "+r"(a[i][1]), "+r"(a[i][2]), "+r"(a[i][3])::"memory");
}
// d[64 x 32] += A B (ACC = 1) or d = A B (ACC = 0, write-only accumulators as above), A and B in shared memory
template <int TA, int TB, int ACC = 1>
__device__ __forceinline__ void wgmma_64x32_ss(float (&d)[4][4], uint64_t a, uint64_t b) {
    if constexpr (ACC) {
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
                     "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, %16, %17, p, 1, 1, %18, %19;\n}\n"
                     : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3])
                     : "l"(a), "l"(b), "n"(TA), "n"(TB));
    } else {
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, 0, 0;\n"
                     "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, %16, %17, p, 1, 1, %18, %19;\n}\n"
                     : "=f"(d[0][0]), "=f"(d[0][1]), "=f"(d[0][2]), "=f"(d[0][3]), "=f"(d[1][0]), "=f"(d[1][1]), "=f"(d[1][2]), "=f"(d[1][3]), "=f"(d[2][0]), "=f"(d[2][1]), "=f"(d[2][2]), "=f"(d[2][3]), "=f"(d[3][0]), "=f"(d[3][1]), "=f"(d[3][2]), "=f"(d[3][3])
                     : "l"(a), "l"(b), "n"(TA), "n"(TB));
    }
}
#if ATTENTION_WGMMA
// setmaxnreg: a warpgroup gives back registers (dec) or takes more (inc), all its warps at once (the
// warp-specialized kernels: a producer warpgroup at few registers, the compute warpgroups at the rest)
template <int N>
__device__ __forceinline__ void setmaxnreg_inc() { asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N)); }
template <int N>
__device__ __forceinline__ void setmaxnreg_dec() { asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N)); }
// bar.sync on barrier `id` (1..15; 0 is __syncthreads') for `threads` threads of the block; bar.arrive counts
// this warp towards it without waiting
__device__ __forceinline__ void named_barrier(int id, int threads) { asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory"); }
__device__ __forceinline__ void named_barrier_arrive(int id, int threads) {
    asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
#endif

__device__ __forceinline__ void mbar_init(uint32_t bar, int count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
// Makes initialized barriers visible to the other threads and to the async proxy (the TMA).
__device__ __forceinline__ void mbar_init_fence() { asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory"); }
// Arrives, and tells the barrier to expect `bytes` more from copies that complete on it.
__device__ __forceinline__ void mbar_arrive_expect_tx(uint32_t bar, uint32_t bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
// Waits for the completion of the barrier's phase of this parity (phases alternate 0, 1, 0, ...).
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
    uint32_t done = 0;
    while (!done)
        asm volatile("{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
                     : "=r"(done) : "r"(bar), "r"(parity) : "memory");
}
// The box of a 4-D tensor map at coordinates (c0, c1, c2, c3) into shared memory at dst, completing on bar.
__device__ __forceinline__ void tma_load_4d(uint32_t dst, const CUtensorMap* map, uint32_t bar, int c0, int c1, int c2, int c3) {
    asm volatile("cp.async.bulk.tensor.4d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4, %5, %6}], [%2];\n"
                 ::"r"(dst), "l"(reinterpret_cast<uint64_t>(map)), "r"(bar), "r"(c0), "r"(c1), "r"(c2), "r"(c3) : "memory");
}

#endif

// A [B, T, heads, 64] bf16 tensor as a 4-D TMA map (d, head, t, b) whose box is `rows` tokens of one head:
// 128-byte rows, 128-byte swizzle (as sw128_offset), tokens past T read as zeros.
CUtensorMap head_rows_map(const bf16* base, int B, int T, int heads, int rows) {
    static PFN_cuTensorMapEncodeTiled_v12000 encode = nullptr;  // the driver's, found once through the runtime
    if (!encode) {
        void* fn = nullptr;
        cudaDriverEntryPointQueryResult found{};
        check_cuda(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &found),
                   "cudaGetDriverEntryPointByVersion(cuTensorMapEncodeTiled)");
        if (found != cudaDriverEntryPointSuccess || !fn) fail("flash attention: the driver has no cuTensorMapEncodeTiled");
        encode = reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(fn);
    }
    const cuuint64_t row = 64 * sizeof(bf16);
    const cuuint64_t dims[4] = {64, cuuint64_t(heads), cuuint64_t(T), cuuint64_t(B)};
    const cuuint64_t strides[3] = {row, row * heads, row * heads * T};  // bytes, of dims 1..3
    const cuuint32_t box[4] = {64, 1, cuuint32_t(rows), 1}, unit[4] = {1, 1, 1, 1};
    CUtensorMap map;
    const CUresult r = encode(&map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 4, const_cast<bf16*>(base), dims, strides, box, unit,
                              CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                              CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    if (r != CUDA_SUCCESS) fail("flash attention: cuTensorMapEncodeTiled failed (" + std::to_string(int(r)) + ")");
    return map;
}

__global__ void wgmma_probe_kernel(int* out) {
#if ATTENTION_WGMMA
    *out = 1;
#else
    *out = 0;
#endif
}

// Whether the GPU runs this build's sm_90a code (an H100 or H200, and a build that includes it): asked once.
bool wgmma_available() {
    static int available = -1;
    if (available < 0) {
        int* d = nullptr;
        check_cuda(cudaMalloc(&d, sizeof(int)), "cudaMalloc");
        wgmma_probe_kernel<<<1, 1>>>(d);
        check_launch("wgmma_probe_kernel");
        check_cuda(cudaMemcpy(&available, d, sizeof(int), cudaMemcpyDeviceToHost), "cudaMemcpy");
        check_cuda(cudaFree(d), "cudaFree");
    }
    return available == 1;
}

// The Hopper kernels' conditions: Dh = 64 with 16-byte aligned rows, on a GPU that runs them.
bool wgmma_applies(const AttentionShape& a, std::initializer_list<const void*> ptrs) {
    return a.Dh == 64 && all_aligned(ptrs, 16) && wgmma_available();
}

// ---------------------------------------------------------------------------------------------- forward, Hopper
// flash_forward_kernel's algorithm (attention.cu) for Dh = 64 and 128 (16-byte aligned rows) with its products
// on wgmma and its loads on the Tensor Memory Accelerator (sm_90a).
// Tile scheme: a block owns BR = 64 NWG query rows of one (b, h) and NWG warpgroups, each owning 64 of the
// rows (warp w: rows 16w.., as wgmma's accumulators lay them), and walks key blocks of BC keys from the block
// holding doc_start of its first row up to the diagonal; blocks with the longest key ranges start first.
// Per key block, per warpgroup:
//   S = Q K^T    A = Q, B = K, both from shared memory, K-major (Dh is k)
//   P            online softmax in registers (exp2, scale * log2 e folded into one FMA; a row's max and sum
//                over the 4 lanes of a quad), masked only on blocks that straddle the diagonal, a document
//                start or T; packed to bf16 A fragments
//   O += P V     A = P from registers, B = V: MN-major (Dh is n, contiguous)
// FlashAttention-3's intra-warpgroup overlap: S of the next key block and P V of this one are issued together,
// the softmax of the next block runs while P V is on the tensor cores, O is rescaled once P V has landed.
// Loads: thread 0 (WS: the producer warpgroup's) issues one bulk tensor copy per tile (Q once; K and V of a key block into one of NS stages);
// the TMA writes them 128-byte swizzled, zero-filled past T, and completes the stage's "full" mbarrier by
// byte count. A warpgroup waits only for the stage it needs and hands it back through the stage's "empty"
// mbarrier (one arrival per warp once its products on the stage are complete); thread 0 refills a stage once
// every warp has handed it back. No block-wide barrier in the key loop, so the warpgroups drift apart (the
// others up to NS - 2 key blocks ahead of warpgroup 0, which refills) and one's softmax runs under another's
// products.
// Nothing is in flight across a branch: the mask is chosen per key block before the products are issued
// (ptxas would serialize every wgmma of the kernel).
// Head_dim 128: a 128-byte swizzled row holds 64 bf16, so each Q, K, V tile is HALVES = D / 64 tiles of 64
// columns ("halves"), each an ordinary swizzled tile brought by its own TMA copy from a map that sees
// [B, T, heads, D] as [B, T, HALVES heads, 64] (half c of head h is map head HALVES h + c). S = Q K^T takes 4
// k-steps per half; O += P V is one n64 product per half of V, into o[c] (columns 64c..64c+63). Registers per
// thread at D 128: O 64, S BC/2, P BC/4, all live at once, so BC 128 fits 2 warpgroups (255 registers at
// 256 threads), not 3 (168).
// WS (dev v15; FlashAttention-3's forward): a producer warpgroup before the compute warpgroups, its thread 0
// the only loader (the refills wait for the empty stages there, not in a compute warp's loop), registers
// moved to the compute warpgroups by setmaxnreg (24 for the producer, 240 for two compute warpgroups).
template <int NWG_, int BC_, int NS_, int D_ = 64, bool PP_ = false, bool WS_ = false>
struct WgFwdConfig {  // NWG warpgroups per block, BC keys per block, NS stages of K and V, head_dim D (64 or 128),
                      // PP: the warpgroups issue their products in turn (pingpong); WS: a producer warpgroup too
    static constexpr int NWG = NWG_, BC = BC_, NS = NS_, D = D_;
    static constexpr bool PP = PP_, WS = WS_;
    static constexpr int HALVES = D / 64, BR = 64 * NWG, THREADS = 128 * (NWG + WS), ROW = 128;  // ROW: bytes per tile row
    static constexpr int PREG = 24, CREG = (THREADS * 168 - 128 * PREG) / (128 * NWG) / 8 * 8;  // WS: after setmaxnreg
    static_assert(!WS || NWG == 2, "warp-specialized: two compute warpgroups (384 threads, 168 registers each at launch)");
    static constexpr uint32_t Q_HALF = uint32_t(BR) * ROW, KV_HALF = uint32_t(BC) * ROW;  // bytes of one 64-column half
    static constexpr uint32_t STAGE = 2 * HALVES * KV_HALF;                              // K's halves, then V's
    static constexpr size_t smem = 1024 + HALVES * size_t(Q_HALF) + size_t(NS) * STAGE;  // alignment; Q; stages
    static_assert((D == 64 || D == 128) && (BC == 64 || BC == 96 || BC == 128) && NS >= 2 && NWG <= 3,
                  "tile shape (a TMA box has at most 256 rows)");
    static_assert(smem + (2 * NS + 1) * 8 <= 227 * 1024, "shared memory: at most 227 KB per block");
};

#if ATTENTION_WGMMA
// One k-step of 16 of s[64 x BC] (+)= A B, both K-major from shared memory (ACC = 0: s = A B).
template <int NT, int ACC>
__device__ __forceinline__ void wg_qk_step(float (&s)[NT][4], uint64_t a, uint64_t b) {
    if constexpr (NT == 16) wgmma_64x128_ss<0, 0, ACC>(s, a, b);
    else if constexpr (NT == 12) wgmma_64x96_ss<0, 0, ACC>(s, a, b);
    else wgmma_64x64_ss<0, 0, ACC>(s, a, b);
}
// s = Q K^T for one key block: k = Dh in 4 steps of 16 per 64-column half, 32 bytes apart (K-major); dq[c]
// and dk + c * k_half: half c of this warpgroup's Q rows and of the K block.
template <int HALVES, int NT>
__device__ __forceinline__ void wg_scores(float (&s)[NT][4], const uint64_t (&dq)[HALVES], uint64_t dk, uint32_t k_half) {
    wg_qk_step<NT, 0>(s, dq[0], dk);
#pragma unroll
    for (int kk = 1; kk < 4; ++kk) wg_qk_step<NT, 1>(s, sw128_desc_plus(dq[0], kk * 32), sw128_desc_plus(dk, kk * 32));
#pragma unroll
    for (int c = 1; c < HALVES; ++c)
#pragma unroll
        for (int kk = 0; kk < 4; ++kk)
            wg_qk_step<NT, 1>(s, sw128_desc_plus(dq[c], kk * 32), sw128_desc_plus(dk, c * k_half + kk * 32));
}
// o += P V for one key block (descriptor of the V block): k = keys in steps of 16 rows, 2048 bytes apart (MN-major)
template <int KC>
__device__ __forceinline__ void wg_pv(float (&o)[8][4], const uint32_t (&pa)[KC][4], uint64_t dv) {
#pragma unroll
    for (int kc = 0; kc < KC; ++kc) wgmma_64x64_rs<1>(o, pa[kc], sw128_desc_plus(dv, kc * 2048));
}

// Online softmax of one key block for this thread's two rows (row0, row0 + 8), in place, in two halves.
// wg_row_max: masks (MASK) keys outside [row_ds, row] and >= T; m_new = max(m, rowmax(s) scale_log2) (the
// only cross-lane step), alpha = 2^(m - m_new), m_use = m_new (0 for a row with nothing allowed yet).
template <bool MASK, int NT>
__device__ __forceinline__ void wg_row_max(float (&s)[NT][4], float (&m)[2], float (&alpha)[2], float (&m_use)[2], float scale_log2,
                                           int key0, int row0, const int (&row_ds)[2], int T) {
    if constexpr (MASK) {
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int key = key0 + nt * 8 + (e & 1), hf = e >> 1;
                const bool ok = key >= row_ds[hf] && key <= row0 + 8 * hf && key < T;
                s[nt][e] = ok ? s[nt][e] : -INFINITY;
            }
    }
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
        float mx[2] = {fmaxf(s[0][2 * hf], s[0][2 * hf + 1]), fmaxf(s[1][2 * hf], s[1][2 * hf + 1])};  // two chains (ILP)
#pragma unroll
        for (int nt = 2; nt < NT; ++nt) mx[nt & 1] = fmaxf(mx[nt & 1], fmaxf(s[nt][2 * hf], s[nt][2 * hf + 1]));
        float mr = fmaxf(mx[0], mx[1]);
        mr = fmaxf(mr, __shfl_xor_sync(0xffffffffu, mr, 1));  // the 4 lanes of a quad share a row
        mr = fmaxf(mr, __shfl_xor_sync(0xffffffffu, mr, 2));
        const float m_new = fmaxf(m[hf], mr * scale_log2);
        m_use[hf] = m_new == -INFINITY ? 0.f : m_new;
        alpha[hf] = ex2(m[hf] - m_use[hf]);
        m[hf] = m_new;
    }
}
// wg_exp: s = p = 2^(s scale_log2 - m_use), l = l alpha + rowsum(p) (this lane's part).
template <int NT>
__device__ __forceinline__ void wg_exp(float (&s)[NT][4], float (&l)[2], const float (&alpha)[2], const float (&m_use)[2],
                                       float scale_log2) {
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int e = 2 * hf; e < 2 * hf + 2; ++e) s[nt][e] = ex2(fmaf(s[nt][e], scale_log2, -m_use[hf]));
        float sum[2] = {s[0][2 * hf] + s[0][2 * hf + 1], s[1][2 * hf] + s[1][2 * hf + 1]};  // two chains (ILP)
#pragma unroll
        for (int nt = 2; nt < NT; ++nt) sum[nt & 1] += s[nt][2 * hf] + s[nt][2 * hf + 1];
        l[hf] = fmaf(l[hf], alpha[hf], sum[0] + sum[1]);
    }
}
#endif

#if ATTENTION_WGMMA
// The end of a tile, this thread's two rows (row0, row0 + 8): o = O / l (l summed over the quad), lse =
// (m + log2 l) ln 2, rows past T not written.
template <int HV>
__device__ __forceinline__ void wg_store_o_lse(const FwdArgs& p, const float (&o)[HV][8][4], const float (&m)[2], const float (&l)[2],
                                               int b, int h, int row0, int tq) {
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
        float lt = l[hf];
        lt += __shfl_xor_sync(0xffffffffu, lt, 1);
        lt += __shfl_xor_sync(0xffffffffu, lt, 2);
        const float inv = lt > 0.f ? 1.f / lt : 0.f;
        const int row = row0 + 8 * hf;
        if (row < p.T) {
            bf16* orow = p.o + (int64_t(b) * p.T + row) * (int64_t(p.H) * HV * 64) + int64_t(h) * HV * 64;
#pragma unroll
            for (int c = 0; c < HV; ++c)
#pragma unroll
                for (int nd = 0; nd < 8; ++nd)
                    *reinterpret_cast<__nv_bfloat162*>(orow + c * 64 + nd * 8 + 2 * tq) =
                        __floats2bfloat162_rn(o[c][nd][2 * hf] * inv, o[c][nd][2 * hf + 1] * inv);
            if (tq == 0) p.lse[(int64_t(b) * p.H + h) * p.T + row] = m[hf] * kLn2 + logf(lt);
        }
    }
}
#endif

// o[t] = sum_j softmax_j(scale q_t . k_j) v_j over doc_start[t] <= j <= t;  lse[t] = log sum_j exp(...)
// tm_q, tm_k, tm_v: q, k, v as 4-D maps (64 columns, HALVES heads, t, b) whose boxes are BR (q) or BC (k, v)
// tokens of one half of one head.
template <class W>
__global__ void __launch_bounds__(W::THREADS, 1)
    flash_forward_wgmma_kernel(const FwdArgs p, const __grid_constant__ CUtensorMap tm_q, const __grid_constant__ CUtensorMap tm_k,
                               const __grid_constant__ CUtensorMap tm_v) {
#if ATTENTION_WGMMA
    constexpr int NWG = W::NWG, BR = W::BR, BC = W::BC, NS = W::NS, ROW = W::ROW, HV = W::HALVES, NT = BC / 8, KC = BC / 16;
    constexpr uint32_t QH = W::Q_HALF, KH = W::KV_HALF;
    extern __shared__ __align__(16) unsigned char smem_raw[];
    __shared__ __align__(8) uint64_t bars[2 * NS + 1];  // full [NS], empty [NS], Q
    // Q: half c [BR][128 B] at sQ + c QH; stage st at sS + st STAGE: K's halves, then V's, [BC][128 B] each
    const uint32_t sQ = (smem_u32(smem_raw) + 1023u) & ~1023u, sS = sQ + HV * QH;
    const uint32_t full = smem_u32(bars), empty = full + 8 * NS, qbar = full + 16 * NS;

    // wg, cwarp: the compute warpgroup and warp (WS: after the producer warpgroup; -1 and 0 there)
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, wg = warp / 4 - int(W::WS), tq = lane % 4;
    const int cwarp = W::WS ? max(warp - 4, 0) : warp;
    const int T = p.T, H = p.H;
    const int bh = blockIdx.x, b = bh / H, h = bh % H, g = h / (H / p.KVH);
    const int q0 = (int(gridDim.y) - 1 - int(blockIdx.y)) * BR;  // longest key ranges first
    const int32_t* doc = p.doc ? p.doc + int64_t(b) * T : nullptr;

    const int last_row = min(q0 + BR - 1, T - 1);
    const int ds_first = doc ? doc[q0] : 0, ds_last = doc ? doc[last_row] : 0;
    const int kt_begin = ds_first / BC, n_blocks = last_row / BC - kt_begin + 1;  // key blocks kt_begin + n
    const int row0 = q0 + 16 * cwarp + lane / 4;  // this thread's rows: row0, row0 + 8
    const int row_ds[2] = {doc ? doc[min(row0, T - 1)] : 0, doc ? doc[min(row0 + 8, T - 1)] : 0};
    // Masks where a key may fall outside [doc_start[t], t] or beyond T.
    auto need_mask = [&](int kt) { return kt * BC + BC - 1 > q0 || kt * BC < ds_last || kt * BC + BC > T; };

    if (tid == 0) {
        for (int st = 0; st < NS; ++st) mbar_init(full + 8 * st, 1), mbar_init(empty + 8 * st, 4 * NWG);
        mbar_init(qbar, 1);
        mbar_init_fence();
    }
    __syncthreads();
    // Key block n (K's halves, then V's) into stage n % NS (thread 0).
    auto load_block = [&](int n) {
        const uint32_t bar = full + 8 * (n % NS), dst = sS + (n % NS) * W::STAGE;
        mbar_arrive_expect_tx(bar, W::STAGE);
        for (int c = 0; c < HV; ++c) {
            tma_load_4d(dst + c * KH, &tm_k, bar, 0, HV * g + c, (kt_begin + n) * BC, b);
            tma_load_4d(dst + (HV + c) * KH, &tm_v, bar, 0, HV * g + c, (kt_begin + n) * BC, b);
        }
    };
    if (tid == 0) {
        mbar_arrive_expect_tx(qbar, HV * QH);
        for (int c = 0; c < HV; ++c) tma_load_4d(sQ + c * QH, &tm_q, qbar, 0, HV * h + c, q0, b);
        for (int n = 0; n < min(NS, n_blocks); ++n) load_block(n);
    }
    if constexpr (W::WS) {
        if (wg < 0) {  // the producer: its thread 0 refills each stage once every compute warp has handed it back
            setmaxnreg_dec<W::PREG>();
            if (tid == 0)
                for (int n = NS; n < n_blocks; ++n) {
                    mbar_wait(empty + 8 * (n % NS), uint32_t((n - NS) / NS) & 1u);  // block n - NS is done with
                    load_block(n);
                }
            return;
        }
        setmaxnreg_inc<W::CREG>();
    }
    uint64_t desc_q[HV];  // this warpgroup's Q rows, half by half
#pragma unroll
    for (int c = 0; c < HV; ++c) desc_q[c] = sw128_desc(sQ + c * QH + wg * 64 * ROW, false);
    const uint64_t desc_k0 = sw128_desc(sS, false), desc_v0 = sw128_desc(sS + HV * KH, true);  // stage 0's K, V (half 0)
    auto stage_desc = [&](uint64_t desc0, int n) { return sw128_desc_plus(desc0, (n % NS) * W::STAGE); };

    float o[HV][8][4], m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f}, alpha[2];  // o[c]: columns 64c..64c+63
#pragma unroll
    for (int c = 0; c < HV; ++c)
#pragma unroll
        for (int nd = 0; nd < 8; ++nd) o[c][nd][0] = o[c][nd][1] = o[c][nd][2] = o[c][nd][3] = 0.f;
    uint32_t pa[KC][4];  // P of the key block whose P V is next
    auto pv = [&](int n) {  // o += P V of key block n, half by half of V
#pragma unroll
        for (int c = 0; c < HV; ++c) wg_pv(o[c], pa, sw128_desc_plus(stage_desc(desc_v0, n), c * KH));
    };
    auto pin_o = [&] {
#pragma unroll
        for (int c = 0; c < HV; ++c) wgmma_pin(o[c]);
    };

    // PP (FlashAttention-3's pingpong): the warpgroups take turns to issue their products, so that one's
    // softmax runs while the next one's products hold the tensor cores. Each warpgroup issues n_blocks + 1
    // times (the first S, each step's S and P V, the last P V); warpgroup w waits for its turn at named
    // barrier 1 + w (its 128 threads and the 128 of the warpgroup before it, which arrive after issuing) and
    // hands it on to w + 1 (mod NWG). The last warpgroup opens warpgroup 0's first turn and skips its last
    // hand-on, so every barrier's arrivals match its waits.
    auto turn_wait = [&] {
        if constexpr (W::PP) named_barrier(1 + wg, 256);
    };
    auto turn_pass = [&](bool last) {
        if constexpr (W::PP)
            if (!(last && wg == NWG - 1)) named_barrier_arrive(1 + (wg + 1) % NWG, 256);
    };
    if constexpr (W::PP)
        if (wg == NWG - 1) named_barrier_arrive(1, 256);
    // PP: the last warpgroup's first thread refills the stages (the others' turns do not wait for it); WS: the producer
    const bool loader = !W::WS && tid == (W::PP ? (NWG - 1) * 128 : 0);

    mbar_wait(qbar, 0);
    mbar_wait(full, 0);
    {  // the first key block: S, softmax
        float s[NT][4];
        turn_wait();
        wgmma_fence();
        wg_scores(s, desc_q, desc_k0, KH);
        wgmma_commit();
        turn_pass(false);
        wgmma_wait<0>();
        wgmma_pin(s);
        float m_use[2];
        if (need_mask(kt_begin)) wg_row_max<true>(s, m, alpha, m_use, p.scale_log2, kt_begin * BC + 2 * tq, row0, row_ds, T);
        else wg_row_max<false>(s, m, alpha, m_use, p.scale_log2, kt_begin * BC + 2 * tq, row0, row_ds, T);
        wg_exp(s, l, alpha, m_use, p.scale_log2);
        pack_fragments(s, pa);
    }

    // Step n: S_{n+1} = Q K_{n+1}^T and O += P_n V_n issued together; the softmax of S_{n+1} while P V runs;
    // then O *= alpha and P_{n+1} packed into pa (only once P V is done with it: ptxas serializes every wgmma
    // if the registers of an in-flight register operand are written). (ptxas places the wait for P V early in
    // the softmax, before its first shuffle, so in fact little of a warpgroup's own softmax runs under its
    // P V: the other warpgroups' products fill the tensor cores. dev/NOTES.md, "wgmma forward".)
    auto step = [&](auto mask, int n) {
        float s[NT][4], m_use[2];
        pin_o();  // (o *= alpha and the packing of pa stay above the fence)
        wgmma_pin(pa);
        turn_wait();
        wgmma_fence();
        wg_scores(s, desc_q, stage_desc(desc_k0, n + 1), KH);
        wgmma_commit();
        pv(n);
        wgmma_commit();
        turn_pass(false);
        wgmma_wait<1>();  // S
        wgmma_pin(s);
        wg_row_max<decltype(mask)::value>(s, m, alpha, m_use, p.scale_log2, (kt_begin + n + 1) * BC + 2 * tq, row0, row_ds, T);
        wg_exp(s, l, alpha, m_use, p.scale_log2);
        wgmma_wait<0>();  // P V
        pin_o();
#pragma unroll
        for (int c = 0; c < HV; ++c)
#pragma unroll
            for (int nd = 0; nd < 8; ++nd)
                o[c][nd][0] *= alpha[0], o[c][nd][1] *= alpha[0], o[c][nd][2] *= alpha[1], o[c][nd][3] *= alpha[1];
        pack_fragments(s, pa);
    };
    for (int n = 0; n + 1 < n_blocks; ++n) {
        // The loader refills the stage of block n - 1 (every warp is past it) with block n - 1 + NS.
        if (loader && n >= 1 && n - 1 + NS < n_blocks) {
            mbar_wait(empty + 8 * ((n - 1) % NS), ((n - 1) / NS) & 1);
            load_block(n - 1 + NS);
        }
        mbar_wait(full + 8 * ((n + 1) % NS), ((n + 1) / NS) & 1);  // block n + 1 has landed
        if (need_mask(kt_begin + n + 1)) step(std::true_type{}, n);
        else step(std::false_type{}, n);
        if (lane == 0) mbar_arrive(empty + 8 * (n % NS));  // this warp is done with block n
    }

    // The last block's P V
    pin_o();
    wgmma_pin(pa);
    turn_wait();
    wgmma_fence();
    pv(n_blocks - 1);
    wgmma_commit();
    turn_pass(true);
    wgmma_wait<0>();
    pin_o();

    wg_store_o_lse<HV>(p, o, m, l, b, h, row0, tq);
#else
    __trap();  // launched only where wgmma_available() says the sm_90a code is there
#endif
}

// The warp-specialized kernels (384 threads: a producer warpgroup and two compute warpgroups): setmaxnreg moves
// 168 - PREG registers from each producer thread to (168 - PREG) / 2 more for each compute thread (24: 144 to
// 72): the pool is exact only when the kernel starts at 168 a thread (the most __launch_bounds__(384, 1)
// allows), else the compute warps' setmaxnreg.inc would wait for ever. Asked once per kernel (the callers'
// statics); where ptxas chose otherwise, the kernel does not run (a notice names `what`): the backwards and
// the library's head_dim 128 forward fall back to the next kernel, a dev forward fails.
inline bool starts_at_168_registers(const void* kernel, const char* what) {
    cudaFuncAttributes fa{};
    check_cuda(cudaFuncGetAttributes(&fa, kernel), "cudaFuncGetAttributes(attention)");
    if (fa.numRegs != 168)
        std::printf("notice: the %s was built with %d registers a thread, not 168, so it does not run\n", what, fa.numRegs);
    return fa.numRegs == 168;
}
// The forward's conditions: Dh = W::D with 16-byte aligned rows, on a GPU that runs the sm_90a code.
template <class W>
bool wgmma_forward_applies(const AttentionShape& a, std::initializer_list<const void*> ptrs) {
    return a.Dh == W::D && all_aligned(ptrs, 16) && wgmma_available();
}

// Whether W's kernel can run: always, but for a warp-specialized one (WS) only where it starts at 168 registers.
template <class W>
bool forward_registers_fit() {
    if constexpr (W::WS) {
        static const bool fits = starts_at_168_registers(reinterpret_cast<const void*>(flash_forward_wgmma_kernel<W>),
                                                         "warp-specialized attention forward");
        return fits;
    }
    return true;
}

template <class W>
void launch_forward_wgmma(const AttentionShape& a, const bf16* q, const bf16* k, const bf16* v, const int32_t* doc_start, bf16* o,
                          float* lse, cudaStream_t stream) {
    if (!wgmma_forward_applies<W>(a, {q, k, v, o}))
        fail("flash attention: this wgmma forward needs head_dim " + std::to_string(W::D) +
             ", 16-byte aligned rows and an sm_90a build on an H100/H200");
    if (!forward_registers_fit<W>()) fail("flash attention: the warp-specialized forward needs 168 registers a thread");
    static bool configured = false;
    if (!configured) {
        check_cuda(cudaFuncSetAttribute(flash_forward_wgmma_kernel<W>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(W::smem)),
                   "cudaFuncSetAttribute(flash_forward_wgmma_kernel)");
        configured = true;
    }
    const FwdArgs p{q, k, v, doc_start, o, lse, a.B, a.T, a.H, a.KVH, a.Dh, float(kLog2e / std::sqrt(double(a.Dh))), true};
    // head_dim D as HALVES heads of 64 columns: half c of head h is map head HALVES h + c
    const CUtensorMap tm_q = head_rows_map(q, a.B, a.T, W::HALVES * a.H, W::BR),
                      tm_k = head_rows_map(k, a.B, a.T, W::HALVES * a.KVH, W::BC),
                      tm_v = head_rows_map(v, a.B, a.T, W::HALVES * a.KVH, W::BC);
    const dim3 grid(unsigned(a.B * a.H), unsigned((a.T + W::BR - 1) / W::BR));
    flash_forward_wgmma_kernel<W><<<grid, W::THREADS, W::smem, stream>>>(p, tm_q, tm_k, tm_v);
    check_launch("flash_forward_wgmma_kernel");
}

}  // namespace
