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

// acc[m] = x[m] . w  over the warp (every lane gets the sums); w one row of K (a multiple of 8) bf16
template <int M>
__device__ inline void warp_dot(const bf16* x, int ldx, const bf16* w_row, int K, float* acc) {
    const uint4* w = reinterpret_cast<const uint4*>(w_row);
    const int chunks = K / 8, lane = threadIdx.x % 32;
    for (int m = 0; m < M; ++m) acc[m] = 0;
    int i = lane;
    for (; i + 32 * (kUnroll - 1) < chunks; i += 32 * kUnroll) {  // all loads first, then the arithmetic
        uint4 wv[kUnroll];
        for (int u = 0; u < kUnroll; ++u) wv[u] = __ldcs(w + i + 32 * u);  // read once: evict first
        for (int u = 0; u < kUnroll; ++u) dot8<M>(wv[u], x, ldx, i + 32 * u, acc);
    }
    for (; i < chunks; i += 32) dot8<M>(__ldcs(w + i), x, ldx, i, acc);
    for (int m = 0; m < M; ++m)
        for (int o = 16; o > 0; o >>= 1) acc[m] += __shfl_xor_sync(0xffffffff, acc[m], o);
}

// y[m, n] = alpha x[m] . W[n] + (c ? c[m, n] : beta y[m, n])   (a warp per n)
template <int M, typename TC>
__global__ void __launch_bounds__(kWarps * 32) gemv_nt_kernel(const bf16* __restrict__ x, int ldx, const bf16* __restrict__ W, int ldw,
                                                              TC* y, int ldy, const bf16* c, int N, int K, float alpha, float beta) {
    int n = blockIdx.x * kWarps + threadIdx.x / 32;
    if (n >= N) return;
    float acc[M];
    warp_dot<M>(x, ldx, W + int64_t(n) * ldw, K, acc);
    if (threadIdx.x % 32 != 0) return;
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

// The products of one input, one launch:  y_i[m, n] = x[m] . W_i[n] (+ c_i[m, n])   (blocks first_block[i]..
// belong to product i; each W_i [N_i, K], y_i and c_i [M, N_i] contiguous)
struct GroupArgs {
    const bf16* x;
    int ldx, K, count;
    GemvOut out[kGemvMaxGroup];
    int first_block[kGemvMaxGroup + 1];
};
template <int M>
__global__ void __launch_bounds__(kWarps * 32) gemv_nt_group_kernel(const GroupArgs a) {
    int i = 0;
    while (i + 1 < a.count && int(blockIdx.x) >= a.first_block[i + 1]) ++i;
    const GemvOut& o = a.out[i];
    int n = (int(blockIdx.x) - a.first_block[i]) * kWarps + threadIdx.x / 32;
    if (n >= o.N) return;
    float acc[M];
    warp_dot<M>(a.x, a.ldx, o.W + int64_t(n) * a.K, a.K, acc);
    if (threadIdx.x % 32 != 0) return;
    for (int m = 0; m < M; ++m) {
        int64_t at = int64_t(m) * o.N + n;
        o.y[at] = __float2bfloat16(acc[m] + (o.c ? __bfloat162float(o.c[at]) : 0.0f));
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

void matmul_nt_group(const Gemm& g, const bf16* x, int M, int K, const GemvOut* out, int count, int ldx) {
    if (count < 1 || count > kGemvMaxGroup) exit_with_error("matmul_nt_group: " + std::to_string(count) + " products (1 to " + std::to_string(kGemvMaxGroup) + ")");
    if (!ldx) ldx = K;
    bool together = M <= g.gemv_rows;
    for (int i = 0; i < count; ++i) together &= (!out[i].K || out[i].K == K) && (!out[i].ldw || out[i].ldw == K) && gemv_applies(M, K, x, ldx, out[i].W, K);
    if (!together) {  // one product at a time (cuBLASLt, or gemv_nt through gemm.cu)
        for (int i = 0; i < count; ++i) {
            int k = out[i].K ? out[i].K : K;
            Ld ld{ldx, out[i].ldw ? out[i].ldw : k, 0};
            if (out[i].c) matmul_nt_add(g, out[i].y, out[i].c, x, out[i].W, M, out[i].N, k, 1.0f, ld);
            else matmul_nt(g, out[i].y, x, out[i].W, M, out[i].N, k, 1.0f, 0.0f, {}, ld);
        }
        return;
    }
    GroupArgs a{x, ldx, K, count, {}, {}};
    for (int i = 0; i < count; ++i) a.out[i] = out[i], a.first_block[i + 1] = a.first_block[i] + (out[i].N + kWarps - 1) / kWarps;
    const unsigned blocks = unsigned(a.first_block[count]);
    if (M == 1) gemv_nt_group_kernel<1><<<blocks, kWarps * 32, 0, g.stream>>>(a);
    else gemv_nt_group_kernel<2><<<blocks, kWarps * 32, 0, g.stream>>>(a);
    check_launch("gemv_nt_group_kernel");
}
