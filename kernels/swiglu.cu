// kernels/swiglu.cu — the SwiGLU activation of Llama's MLP (Shazeer 2020), elementwise on [N, F]:
//   forward   act = silu(g) * u,  silu(g) = g * sigmoid(g)
//   backward  dg = dact * u * sigmoid(g) * (1 + g * (1 - sigmoid(g))),  du = dact * silu(g)
// The backward reads the g and u the forward saved (both needed anyway) and recomputes sigmoid(g), so the
// activation keeps nothing else. 16-byte accesses (8 bf16 a thread) when n is a multiple of 8. act and dact
// may have rows of F = cols elements ld apart (LoRA's u columns beside act, llama.cu); g, u, dg, du are [N, F].
#include "kernels/ops.h"

#include <algorithm>

#include "kernels/cuda_common.cuh"
#include "support/cuda_calls.h"

namespace {

// act = silu(g) * u,  silu(g) = g * sigmoid(g)   (W elements per thread and step)
template <int W>
__global__ void swiglu_forward_kernel(const bf16* g, const bf16* u, bf16* act, int64_t n, int cols, int ld) {
    float gv[W], uv[W];
    for (int64_t i = W * (blockIdx.x * int64_t(blockDim.x) + threadIdx.x); i < n; i += W * int64_t(gridDim.x) * blockDim.x) {
        load_bf16<W>(g + i, gv), load_bf16<W>(u + i, uv);
        for (int k = 0; k < W; ++k) gv[k] = gv[k] / (1.0f + __expf(-gv[k])) * uv[k];
        store_bf16<W>(act + row_at(i, cols, ld), gv);
    }
}

// dg = dact * u * sigmoid(g) * (1 + g * (1 - sigmoid(g))),  du = dact * silu(g)
template <int W>
__global__ void swiglu_backward_kernel(const bf16* g, const bf16* u, const bf16* dact, bf16* dg, bf16* du, int64_t n, int cols, int ld) {
    float gv[W], uv[W], dv[W];
    for (int64_t i = W * (blockIdx.x * int64_t(blockDim.x) + threadIdx.x); i < n; i += W * int64_t(gridDim.x) * blockDim.x) {
        load_bf16<W>(g + i, gv), load_bf16<W>(u + i, uv), load_bf16<W>(dact + row_at(i, cols, ld), dv);
        for (int k = 0; k < W; ++k) {
            float x = gv[k], s = 1.0f / (1.0f + __expf(-x));
            gv[k] = dv[k] * uv[k] * s * (1.0f + x * (1.0f - s));
            uv[k] = dv[k] * x * s;
        }
        store_bf16<W>(dg + i, gv), store_bf16<W>(du + i, uv);
    }
}

}  // namespace

void swiglu_forward(const bf16* g, const bf16* u, bf16* act, int64_t n, cudaStream_t s, int cols, int ld) {
    if (!cols) cols = int(std::min<int64_t>(n, 1 << 30));  // contiguous
    if (!ld) ld = cols;
    if (n % 8 == 0 && cols % 8 == 0 && ld % 8 == 0) swiglu_forward_kernel<8><<<blocks_for(n / 8), kThreads, 0, s>>>(g, u, act, n, cols, ld);
    else swiglu_forward_kernel<1><<<blocks_for(n), kThreads, 0, s>>>(g, u, act, n, cols, ld);
    check_launch("swiglu_forward_kernel");
}
void swiglu_backward(const bf16* g, const bf16* u, const bf16* dact, bf16* dg, bf16* du, int64_t n, cudaStream_t s, int cols, int ld) {
    if (!cols) cols = int(std::min<int64_t>(n, 1 << 30));  // contiguous
    if (!ld) ld = cols;
    if (n % 8 == 0 && cols % 8 == 0 && ld % 8 == 0) swiglu_backward_kernel<8><<<blocks_for(n / 8), kThreads, 0, s>>>(g, u, dact, dg, du, n, cols, ld);
    else swiglu_backward_kernel<1><<<blocks_for(n), kThreads, 0, s>>>(g, u, dact, dg, du, n, cols, ld);
    check_launch("swiglu_backward_kernel");
}
