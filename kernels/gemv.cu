// kernels/gemv.cu — the products of generation: y = x W^T for a few rows x (one new token per sequence).
// Such a product reads every weight once and does two flops per weight read, so it runs at the speed of
// memory: a 7B model's decode step is 13.5 GB of weights. A warp owns one output column n and streams
// W's row n in 16-byte loads, four in flight per lane, against each of the M rows of x (which stay in L1).
//   y[m, n] = alpha * sum_k x[m, k] W[n, k] + (c ? c[m, n] : beta * y[m, n])       m < M ≤ kGemvMaxRows
// gemm.cu sends matmul_nt and matmul_nt_add here when the shapes allow (gemv_applies); elsewhere cuBLASLt.
// Measured (bench/gemv_bench.cu, an H100, 2026-12-07): at one row 1.03-1.25x cuBLASLt on the 7B and 13B
// shapes (2.4-3.1 TB/s), at two rows 0.96-1.12x, at four rows slower (0.73-1.04x): hence kGemvMaxRows = 2.
#include <cstdint>
#include <string>

#include "kernels/cuda_common.cuh"
#include "kernels/gemm.h"
#include "support/cuda_calls.h"

namespace {

constexpr int kWarps = 8;   // output columns per block
constexpr int kUnroll = 4;  // 16-byte loads of W in flight per lane

template <int M>
__device__ inline void dot8(const uint4& w, const bf16* x, int ldx, int chunk, float* acc) {
    const __nv_bfloat162* w2 = reinterpret_cast<const __nv_bfloat162*>(&w);
    for (int m = 0; m < M; ++m) {
        uint4 xv = __ldg(reinterpret_cast<const uint4*>(x + int64_t(m) * ldx) + chunk);
        const __nv_bfloat162* x2 = reinterpret_cast<const __nv_bfloat162*>(&xv);
        for (int e = 0; e < 4; ++e) {
            float2 a = __bfloat1622float2(w2[e]), b = __bfloat1622float2(x2[e]);
            acc[m] = fmaf(a.x, b.x, fmaf(a.y, b.y, acc[m]));
        }
    }
}

// y[m, n] = alpha x[m] . W[n] + (c ? c[m, n] : beta y[m, n])   (a warp per n; K a multiple of 8)
template <int M, typename TC>
__global__ void __launch_bounds__(kWarps * 32) gemv_nt_kernel(const bf16* __restrict__ x, int ldx, const bf16* __restrict__ W, int ldw,
                                                              TC* y, int ldy, const bf16* c, int N, int K, float alpha, float beta) {
    int n = blockIdx.x * kWarps + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (n >= N) return;
    const uint4* w = reinterpret_cast<const uint4*>(W + int64_t(n) * ldw);
    const int chunks = K / 8;
    float acc[M] = {};
    int i = lane;
    for (; i + 32 * (kUnroll - 1) < chunks; i += 32 * kUnroll) {  // all loads first, then the arithmetic
        uint4 wv[kUnroll];
        for (int u = 0; u < kUnroll; ++u) wv[u] = __ldcs(w + i + 32 * u);  // read once: evict first
        for (int u = 0; u < kUnroll; ++u) dot8<M>(wv[u], x, ldx, i + 32 * u, acc);
    }
    for (; i < chunks; i += 32) dot8<M>(__ldcs(w + i), x, ldx, i, acc);
    for (int m = 0; m < M; ++m)
        for (int o = 16; o > 0; o >>= 1) acc[m] += __shfl_xor_sync(0xffffffff, acc[m], o);
    if (lane != 0) return;
    for (int m = 0; m < M; ++m) {
        float v = alpha * acc[m];
        int64_t at = int64_t(m) * ldy + n;
        if constexpr (sizeof(TC) == 4) {
            if (c) v += __bfloat162float(c[at]);
            else if (beta != 0.0f) v += beta * y[at];
            y[at] = v;
        } else {
            if (c) v += __bfloat162float(c[at]);
            else if (beta != 0.0f) v += beta * __bfloat162float(y[at]);
            y[at] = __float2bfloat16(v);
        }
    }
}

template <int M, typename TC>
void launch(const bf16* x, int ldx, const bf16* W, int ldw, TC* y, int ldy, const bf16* c, int N, int K, float alpha, float beta,
            cudaStream_t stream) {
    gemv_nt_kernel<M, TC><<<unsigned((N + kWarps - 1) / kWarps), kWarps * 32, 0, stream>>>(x, ldx, W, ldw, y, ldy, c, N, K, alpha, beta);
    check_launch("gemv_nt_kernel");
}

template <typename TC>
void dispatch(const bf16* x, int ldx, const bf16* W, int ldw, TC* y, int ldy, const bf16* c, int M, int N, int K, float alpha, float beta,
              cudaStream_t stream) {
    switch (M) {
        case 1: return launch<1>(x, ldx, W, ldw, y, ldy, c, N, K, alpha, beta, stream);
        case 2: return launch<2>(x, ldx, W, ldw, y, ldy, c, N, K, alpha, beta, stream);
        default: exit_with_error("gemv_nt: " + std::to_string(M) + " rows (at most " + std::to_string(kGemvMaxRows) + ")");
    }
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

}  // namespace

bool gemv_applies(int M, int K, const bf16* x, int ldx, const bf16* W, int ldw) {
    return M >= 1 && M <= kGemvMaxRows && K % 8 == 0 && ldx % 8 == 0 && ldw % 8 == 0 && aligned16(x) && aligned16(W);
}

void gemv_nt(const bf16* x, int ldx, const bf16* W, int ldw, void* y, bool y_fp32, int ldy, const bf16* c, int M, int N, int K,
             float alpha, float beta, cudaStream_t stream) {
    if (y_fp32) dispatch(x, ldx, W, ldw, static_cast<float*>(y), ldy, c, M, N, K, alpha, beta, stream);
    else dispatch(x, ldx, W, ldw, static_cast<bf16*>(y), ldy, c, M, N, K, alpha, beta, stream);
}
