// kernels/gemm.cu — the cuBLASLt wrapper (gemm.h); y = x W^T of a few rows goes to gemv.cu instead. cuBLAS
// is column-major: a row-major X is the column-major X^T, so C = op(A) op(B) is computed as
// C^T = op(B)^T op(A)^T with the operands swapped. Each distinct product (shapes, transposes, output type,
// beta = 0 or not) gets its algorithm chosen once and cached.
#include "kernels/gemm.h"

#include <cstring>
#include <string>
#include <unordered_map>

#include "support/cuda_calls.h"

Gemm gemm_create(cudaStream_t stream) {
    Gemm g;
    g.stream = stream;
    check_cublas(cublasLtCreate(&g.lt), "cublasLtCreate");
    g.workspace_bytes = 64u << 20;
    g.workspace = device_alloc<char>(g.workspace_bytes, "cuBLASLt workspace");
    return g;
}

void gemm_destroy(Gemm& g) {
    if (g.lt) cublasLtDestroy(g.lt);
    if (g.workspace) device_free(g.workspace);
    g = Gemm();
}

namespace {

struct Product {  // everything that picks an algorithm
    bool trans_a, trans_b, c_fp32, beta0;
    int M, N, K, lda, ldb, ldc, count;
    int64_t stride_a, stride_b, stride_c;
    bool operator==(const Product& o) const { return std::memcmp(this, &o, sizeof *this) == 0; }
};
struct ProductHash {
    size_t operator()(const Product& p) const { return size_t(fnv1a(&p, sizeof p)); }
};
struct Plan {
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t a, b, c;
    cublasLtMatmulAlgo_t algo;
};

cublasLtMatrixLayout_t layout(cudaDataType_t type, int rows, int cols, int ld, int count, int64_t stride) {
    cublasLtMatrixLayout_t l;
    check_cublas(cublasLtMatrixLayoutCreate(&l, type, uint64_t(rows), uint64_t(cols), int64_t(ld)), "cublasLtMatrixLayoutCreate");
    if (count > 1) {
        check_cublas(cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count, sizeof count), "layout batch");
        check_cublas(cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride, sizeof stride),
                     "layout stride");
    }
    return l;
}

Plan make_plan(const Gemm& g, const Product& p) {
    Plan plan;
    check_cublas(cublasLtMatmulDescCreate(&plan.op, CUBLAS_COMPUTE_32F, CUDA_R_32F), "cublasLtMatmulDescCreate");
    cublasOperation_t op_b = p.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, op_a = p.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
    check_cublas(cublasLtMatmulDescSetAttribute(plan.op, CUBLASLT_MATMUL_DESC_TRANSA, &op_b, sizeof op_b), "transa");
    check_cublas(cublasLtMatmulDescSetAttribute(plan.op, CUBLASLT_MATMUL_DESC_TRANSB, &op_a, sizeof op_a), "transb");
    plan.a = p.trans_b ? layout(CUDA_R_16BF, p.K, p.N, p.ldb, p.count, p.stride_b) : layout(CUDA_R_16BF, p.N, p.K, p.ldb, p.count, p.stride_b);
    plan.b = p.trans_a ? layout(CUDA_R_16BF, p.M, p.K, p.lda, p.count, p.stride_a) : layout(CUDA_R_16BF, p.K, p.M, p.lda, p.count, p.stride_a);
    plan.c = layout(p.c_fp32 ? CUDA_R_32F : CUDA_R_16BF, p.N, p.M, p.ldc, p.count, p.stride_c);
    cublasLtMatmulPreference_t pref;
    check_cublas(cublasLtMatmulPreferenceCreate(&pref), "preference");
    check_cublas(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &g.workspace_bytes,
                                                      sizeof g.workspace_bytes), "preference workspace");
    cublasLtMatmulHeuristicResult_t result;
    int found = 0;
    check_cublas(cublasLtMatmulAlgoGetHeuristic(g.lt, plan.op, plan.a, plan.b, plan.c, plan.c, pref, 1, &result, &found), "heuristic");
    cublasLtMatmulPreferenceDestroy(pref);
    if (found == 0)
        exit_with_error("cuBLASLt has no algorithm for a " + std::to_string(p.M) + "x" + std::to_string(p.N) + "x" + std::to_string(p.K) + " product");
    plan.algo = result.algo;
    return plan;
}

// D[M,N] = alpha op(A) op(B) + beta C (C_in: C, or null for D itself); leading dimensions those of
// contiguous rows unless `ld` gives them.
void gemm(const Gemm& g, bool trans_a, bool trans_b, int M, int N, int K, const bf16* A, const bf16* B, void* C, bool c_fp32,
          float alpha, float beta, Batched batch, Ld ld, const void* C_in = nullptr) {
    static std::unordered_map<Product, Plan, ProductHash> plans;
    Product p{trans_a, trans_b, c_fp32, beta == 0.0f, M, N, K, ld.a ? ld.a : trans_a ? M : K, ld.b ? ld.b : trans_b ? K : N,
              ld.c ? ld.c : N, batch.count,
              batch.stride_a, batch.stride_b, batch.stride_c};
    if (!trans_a && trans_b && batch.count == 1 && M <= g.gemv_rows && gemv_applies(M, K, A, p.lda, B, p.ldb)) {
        gemv_nt(A, p.lda, B, p.ldb, C, c_fp32, p.ldc, static_cast<const bf16*>(C_in), M, N, K, alpha, beta, g.stream);
        return;
    }
    auto it = plans.find(p);
    if (it == plans.end()) it = plans.emplace(p, make_plan(g, p)).first;
    const Plan& plan = it->second;
    check_cublas(cublasLtMatmul(g.lt, plan.op, &alpha, B, plan.a, A, plan.b, &beta, C_in ? C_in : C, plan.c, C, plan.c, &plan.algo, g.workspace,
                                g.workspace_bytes, g.stream), "cublasLtMatmul");
}

template <typename TC>
constexpr bool is_fp32() { return sizeof(TC) == 4; }

}  // namespace

template <typename TC>
void matmul_nt(const Gemm& g, TC* C, const bf16* A, const bf16* B, int M, int N, int K, float alpha, float beta, Batched batch, Ld ld) {
    gemm(g, false, true, M, N, K, A, B, C, is_fp32<TC>(), alpha, beta, batch, ld);
}
template <typename TC>
void matmul_nn(const Gemm& g, TC* C, const bf16* A, const bf16* B, int M, int N, int K, float alpha, float beta, Batched batch, Ld ld) {
    gemm(g, false, false, M, N, K, A, B, C, is_fp32<TC>(), alpha, beta, batch, ld);
}
template <typename TC>
void matmul_tn(const Gemm& g, TC* C, const bf16* A, const bf16* B, int M, int N, int K, float alpha, float beta, Batched batch, Ld ld) {
    gemm(g, true, false, M, N, K, A, B, C, is_fp32<TC>(), alpha, beta, batch, ld);
}

void matmul_nt_add(const Gemm& g, bf16* D, const bf16* C, const bf16* A, const bf16* B, int M, int N, int K, float alpha, Ld ld) {
    gemm(g, false, true, M, N, K, A, B, D, false, alpha, 1.0f, {}, ld, C);
}

template void matmul_nt<bf16>(const Gemm&, bf16*, const bf16*, const bf16*, int, int, int, float, float, Batched, Ld);
template void matmul_nt<float>(const Gemm&, float*, const bf16*, const bf16*, int, int, int, float, float, Batched, Ld);
template void matmul_nn<bf16>(const Gemm&, bf16*, const bf16*, const bf16*, int, int, int, float, float, Batched, Ld);
template void matmul_nn<float>(const Gemm&, float*, const bf16*, const bf16*, int, int, int, float, float, Batched, Ld);
template void matmul_tn<bf16>(const Gemm&, bf16*, const bf16*, const bf16*, int, int, int, float, float, Batched, Ld);
template void matmul_tn<float>(const Gemm&, float*, const bf16*, const bf16*, int, int, int, float, float, Batched, Ld);
