// kernels/rmsnorm.cu — RMSNorm (Zhang & Sennrich 2019; HF's LlamaRMSNorm), forward and backward, per row of D:
//   forward   y = w * x̂,  x̂ = x * rstd,  rstd = 1 / sqrt(mean(x^2) + eps)
//   backward  dx = residual + rstd * (g - x̂ * mean(g * x̂)),  g = dy * w;   dw += sum over rows of dy * x̂
// One block per row: the sum of squares is a block reduction, and rstd [N] is saved for the backward. x̂ is
// rounded to bf16 before the weight multiplies it, as HF's does (it casts back to the input's dtype first);
// the weight gradient uses the same rounded x̂. The norm's input lies on the residual stream, so its
// gradient is the sum of two paths: the backward adds the residual path's gradient in the same pass.
// dw sums a column over all N rows, and atomics would add in a different order each run. Instead partial
// row r (of kNormPartials) sums rows r, r + kNormPartials, ... and a second kernel adds the partials in
// order: the same bits every run.
// Qwen3's q_norm and k_norm are the same norm over each head's Dh (rows [N*heads, Dh], one weight [Dh] for
// every head): the forward and dx are these kernels on N*heads rows; dw views the rows as [N, heads*Dh]
// (each piece of Dh with its own rstd), sums the columns as above, then folds the heads' columns in order.
// A block has as many whole warps as a row needs, so a head's short row does not idle most of a block.
#include "kernels/ops.h"

#include <algorithm>

#include "kernels/cuda_common.cuh"
#include "support/cuda_calls.h"

namespace {

// y = w * (x * rstd),  rstd = 1 / sqrt(mean(x^2) + eps)   (one block per row; x̂ rounded to bf16 as HF does;
// W elements per access)
template <int W>
__global__ void rmsnorm_forward_kernel(const bf16* x, const bf16* w, bf16* y, float* rstd, int D, int ldy, float eps) {
    const bf16* xr = x + int64_t(blockIdx.x) * D;
    bf16* yr = y + int64_t(blockIdx.x) * ldy;
    float ss = 0, xv[W], wv[W];
    for (int i = W * threadIdx.x; i < D; i += W * blockDim.x) {
        load_bf16<W>(xr + i, xv);
        for (int k = 0; k < W; ++k) ss += xv[k] * xv[k];
    }
    float r = rsqrtf(block_sum(ss) / float(D) + eps);
    if (threadIdx.x == 0) rstd[blockIdx.x] = r;
    for (int i = W * threadIdx.x; i < D; i += W * blockDim.x) {
        load_bf16<W>(xr + i, xv), load_bf16<W>(w + i, wv);
        for (int k = 0; k < W; ++k) xv[k] = wv[k] * __bfloat162float(__float2bfloat16(xv[k] * r));
        store_bf16<W>(yr + i, xv);
    }
}

// dx = residual + rstd * (g - x̂ * mean(g * x̂)),  g = dy * w,  x̂ = x * rstd   (residual null: none; dy's
// rows ldy apart)
template <int W>
__global__ void rmsnorm_backward_kernel(const bf16* x, const bf16* w, const float* rstd, const bf16* dy,
                                        const bf16* residual, bf16* dx, int D, int ldy) {
    int64_t row = int64_t(blockIdx.x) * D, dy_row = int64_t(blockIdx.x) * ldy;
    float r = rstd[blockIdx.x], dot = 0, xv[W], wv[W], dv[W], rv[W];
    for (int i = W * threadIdx.x; i < D; i += W * blockDim.x) {
        load_bf16<W>(x + row + i, xv), load_bf16<W>(w + i, wv), load_bf16<W>(dy + dy_row + i, dv);
        for (int k = 0; k < W; ++k) dot += dv[k] * wv[k] * xv[k] * r;
    }
    float mean = block_sum(dot) / float(D);
    for (int i = W * threadIdx.x; i < D; i += W * blockDim.x) {
        load_bf16<W>(x + row + i, xv), load_bf16<W>(w + i, wv), load_bf16<W>(dy + dy_row + i, dv);
        if (residual) load_bf16<W>(residual + row + i, rv);
        for (int k = 0; k < W; ++k) xv[k] = (residual ? rv[k] : 0.0f) + r * (dv[k] * wv[k] - xv[k] * r * mean);
        store_bf16<W>(dx + row + i, xv);
    }
}

// partial[r, i] = sum over rows n = r, r + R, r + 2R, ... of dy[n,i] * x̂[n,i],  x̂ = x * rstd of i's piece
// (R = gridDim.y; a row of D holds D / Dn normalised pieces of Dn, rstd [N * D / Dn]; W columns a thread)
template <int W>
__global__ void rmsnorm_weight_partial_kernel(const bf16* x, const float* rstd, const bf16* dy, float* partial, int64_t N, int D,
                                              int Dn, int ldy) {
    int i = W * (blockIdx.x * blockDim.x + threadIdx.x);
    if (i >= D) return;
    int pieces = D / Dn, piece = i / Dn;
    float acc[W] = {}, xv[W], dv[W];
    for (int64_t n = blockIdx.y; n < N; n += gridDim.y) {
        load_bf16<W>(x + n * D + i, xv), load_bf16<W>(dy + n * ldy + i, dv);
        float r = rstd[n * pieces + piece];
        for (int k = 0; k < W; ++k) acc[k] += dv[k] * __bfloat162float(__float2bfloat16(xv[k] * r));
    }
    for (int k = 0; k < W; ++k) partial[int64_t(blockIdx.y) * D + i + k] = acc[k];
}

// total[i] = sum_r partial[r, i], r in order; added to it when accumulate, else written (the two passes keep
// the sum's order fixed: deterministic). total may be partial's row 0: each thread reads its column first.
__global__ void rmsnorm_weight_sum_kernel(const float* partial, float* total, int R, int D, bool accumulate) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= D) return;
    float acc = 0;
    for (int r = 0; r < R; ++r) acc += partial[int64_t(r) * D + i];
    total[i] = accumulate ? total[i] + acc : acc;
}

// dw[i] += sum_p total[p Dn + i], pieces p in order: the heads' columns of one shared weight (q_norm, k_norm)
__global__ void rmsnorm_weight_fold_kernel(const float* total, float* dw, int pieces, int Dn) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= Dn) return;
    float acc = 0;
    for (int p = 0; p < pieces; ++p) acc += total[int64_t(p) * Dn + i];
    dw[i] += acc;
}

// Threads for one row of D taken W at a time: whole warps, as many as the row needs, at most kThreads. (A
// thread still covers the same elements as with kThreads, and idle warps added only zeros: the same bits.)
unsigned row_threads(int D, int W) { return unsigned(std::min(kThreads, std::max(32, (D / W + 31) / 32 * 32))); }

// dw += sum over the N rows of dy * x̂; rows of D in pieces of Dn that share the weight [Dn]
void weight_gradient(const bf16* x, const float* rstd, const bf16* dy, float* dw, float* partial, int64_t N, int D, int Dn,
                     cudaStream_t s, int ldy) {
    if (Dn % 8 == 0 && ldy % 8 == 0)
        rmsnorm_weight_partial_kernel<8><<<dim3(blocks_for(D / 8), kNormPartials), kThreads, 0, s>>>(x, rstd, dy, partial, N, D, Dn, ldy);
    else
        rmsnorm_weight_partial_kernel<1><<<dim3(blocks_for(D), kNormPartials), kThreads, 0, s>>>(x, rstd, dy, partial, N, D, Dn, ldy);
    check_launch("rmsnorm_weight_partial_kernel");
    bool shared = Dn < D;  // the pieces' column totals go to partial's row 0, then fold into dw
    rmsnorm_weight_sum_kernel<<<blocks_for(D), kThreads, 0, s>>>(partial, shared ? partial : dw, kNormPartials, D, !shared);
    check_launch("rmsnorm_weight_sum_kernel");
    if (!shared) return;
    rmsnorm_weight_fold_kernel<<<blocks_for(Dn), kThreads, 0, s>>>(partial, dw, D / Dn, Dn);
    check_launch("rmsnorm_weight_fold_kernel");
}

// dx = residual + d rmsnorm / dx over rows of D (dx may be dy: each thread reads its elements before writing them)
void input_gradient(const bf16* x, const bf16* w, const float* rstd, const bf16* dy, const bf16* residual, bf16* dx, int64_t N,
                    int D, cudaStream_t s, int ldy) {
    if (D % 8 == 0 && ldy % 8 == 0) rmsnorm_backward_kernel<8><<<unsigned(N), row_threads(D, 8), 0, s>>>(x, w, rstd, dy, residual, dx, D, ldy);
    else rmsnorm_backward_kernel<1><<<unsigned(N), row_threads(D, 1), 0, s>>>(x, w, rstd, dy, residual, dx, D, ldy);
    check_launch("rmsnorm_backward_kernel");
}

}  // namespace

void rmsnorm_forward(const bf16* x, const bf16* w, bf16* y, float* rstd, int64_t N, int D, float eps, cudaStream_t s, int ldy) {
    if (!ldy) ldy = D;
    if (D % 8 == 0 && ldy % 8 == 0) rmsnorm_forward_kernel<8><<<unsigned(N), row_threads(D, 8), 0, s>>>(x, w, y, rstd, D, ldy, eps);
    else rmsnorm_forward_kernel<1><<<unsigned(N), row_threads(D, 1), 0, s>>>(x, w, y, rstd, D, ldy, eps);
    check_launch("rmsnorm_forward_kernel");
}
void rmsnorm_backward(const bf16* x, const bf16* w, const float* rstd, const bf16* dy, const bf16* residual, bf16* dx,
                      float* dw, float* dw_partial, int64_t N, int D, cudaStream_t s, int ldy) {
    if (!ldy) ldy = D;
    input_gradient(x, w, rstd, dy, residual, dx, N, D, s, ldy);
    if (dw) weight_gradient(x, rstd, dy, dw, dw_partial, N, D, D, s, ldy);
}
void head_rmsnorm_backward(const bf16* x, const bf16* w, const float* rstd, bf16* d, float* dw, float* dw_partial, int64_t N,
                           int heads, int Dh, cudaStream_t s) {
    if (dw) weight_gradient(x, rstd, d, dw, dw_partial, N, heads * Dh, Dh, s, heads * Dh);  // first: d still holds d y
    input_gradient(x, w, rstd, d, nullptr, d, N * heads, Dh, s, Dh);
}
