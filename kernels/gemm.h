// kernels/gemm.h — matrix products through cuBLASLt, the one library kernel. Row-major, contiguous rows, bf16
// inputs, fp32 accumulation, bf16 or fp32 output. The three forms the model uses, named by how they
// read their operands:
//   matmul_nt   C[M,N] = alpha * A[M,K] · B[N,K]^T + beta * C      y = x W^T        (a linear layer)
//   matmul_nn   C[M,N] = alpha * A[M,K] · B[K,N]   + beta * C      dx = dy W        (its input gradient)
//   matmul_tn   C[M,N] = alpha * A[K,M]^T · B[K,N] + beta * C      dW += dy^T x     (its weight gradient)
//   matmul_nt_add  D[M,N] = alpha * A[M,K] · B[N,K]^T + C           y = x W^T + residual (C read in the epilogue)
// `Batched` runs `count` independent products, each operand advancing by its stride (in elements).
// matmul_nt and matmul_nt_add with at most Gemm::gemv_rows rows of A (generation: a token per sequence)
// run as matrix-vector products (gemv.cu), which stream the weights at memory speed; the rest is cuBLASLt.
#pragma once
#include <cstddef>
#include <cstdint>

#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

using bf16 = __nv_bfloat16;

constexpr int kGemvMaxRows = 2;  // gemv.cu's products take at most this many rows (at 4, cuBLASLt is faster: bench/gemv_bench.cu)
struct Gemm {
    cublasLtHandle_t lt = nullptr;
    void* workspace = nullptr;  // [workspace_bytes] cuBLASLt scratch
    size_t workspace_bytes = 0;
    cudaStream_t stream = nullptr;
    int gemv_rows = kGemvMaxRows;  // products y = x W^T with at most this many rows of x go to gemv_nt; 0: all to cuBLASLt
};
Gemm gemm_create(cudaStream_t stream);
void gemm_destroy(Gemm& g);

struct Batched {
    int count = 1;
    int64_t stride_a = 0, stride_b = 0, stride_c = 0;
};
// Row strides (elements) of operands that are column slices of wider matrices; 0: contiguous rows.
struct Ld {
    int a = 0, b = 0, c = 0;
};

// TC is bf16 or float.
template <typename TC>
void matmul_nt(const Gemm& g, TC* C, const bf16* A, const bf16* B, int M, int N, int K, float alpha = 1.0f,
               float beta = 0.0f, Batched batch = {}, Ld ld = {});
template <typename TC>
void matmul_nn(const Gemm& g, TC* C, const bf16* A, const bf16* B, int M, int N, int K, float alpha = 1.0f,
               float beta = 0.0f, Batched batch = {}, Ld ld = {});
template <typename TC>
void matmul_tn(const Gemm& g, TC* C, const bf16* A, const bf16* B, int M, int N, int K, float alpha = 1.0f,
               float beta = 0.0f, Batched batch = {}, Ld ld = {});
void matmul_nt_add(const Gemm& g, bf16* D, const bf16* C, const bf16* A, const bf16* B, int M, int N, int K, float alpha = 1.0f,
                   Ld ld = {});

// kernels/gemv.cu: y[m, n] = alpha x[m] . W[n] + (c ? c[m, n] : beta y[m, n]) for M ≤ kGemvMaxRows rows,
// with row strides ldx, ldw, ldy (c's is ldy). gemv_applies: the shapes and alignment it needs (K, the
// strides a multiple of 8 elements, x and W 16-byte aligned).
bool gemv_applies(int M, int K, const bf16* x, int ldx, const bf16* W, int ldw);
void gemv_nt(const bf16* x, int ldx, const bf16* W, int ldw, void* y, bool y_fp32, int ldy, const bf16* c, int M, int N, int K,
             float alpha, float beta, cudaStream_t stream);

// The products of one input x [M, K] (a group of projections: q, k, v; gate, up): y_i = x W_i^T (+ c_i when
// set), each W_i [N_i, K], y_i and c_i [M, N_i] contiguous. Where gemv_nt applies to all (M ≤ g.gemv_rows)
// they run as one launch, else one product at a time. A product may read more of x than K (K_i: LoRA's
// columns beside x, lora.h with_lora_slots) from W_i's rows of ldw_i; x's rows are ldx apart (0: K).
constexpr int kGemvMaxGroup = 3;
struct GemvOut {
    const bf16* W;
    bf16* y;
    const bf16* c;  // added in the epilogue, or null
    int N;
    int K = 0, ldw = 0;  // this product's inner size and W's row stride (0: the group's K)
};
void matmul_nt_group(const Gemm& g, const bf16* x, int M, int K, const GemvOut* out, int count, int ldx = 0);
