// kernels/attention_ref.cu — the reference attention path (attention.h): scores materialised through cuBLASLt,
// `chunk` (batch, kv-head) blocks at a time so the T x T scores never exceed a memory budget. For each
// block (b, g) the group's queries are one matrix: the rows of heads g*group .. g*group+group-1, each T
// long, are contiguous once q is laid out [B, H, T, Dh] ("head-major", made by transpose_heads):
//   forward    S = Q K^T (fp32),  P = softmax(S / sqrt(Dh)) over keys doc_start[t] <= j <= t,  O = P V
//   backward   recompute P from S and lse;  dV = P^T dO,  dP = dO V^T,  dS = P (dP - D) / sqrt(Dh),
//              dQ = dS K,  dK = dS^T Q,   with D = rowsum(dO * O)
// Also the decode attention of generation (one new query per sequence against its KV cache).
#include "kernels/attention.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "support/cuda_calls.h"
#include "kernels/cuda_common.cuh"
#include "kernels/gemm.h"

namespace {

// out[b, h, t, :] = in[b, t, h, :]  (to_head_major), or back (the reverse)   [B,T,nh,Dh] <-> [B,nh,T,Dh]
__global__ void transpose_heads_kernel(const bf16* in, bf16* out, int T, int nh, int Dh, int64_t total, bool to_head_major) {
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
        int d = int(i % Dh);
        int64_t rest = i / Dh;
        int h = int(rest % nh);
        rest /= nh;
        int t = int(rest % T);
        int64_t b = rest / T;
        int64_t head_major = ((b * nh + h) * T + t) * Dh + d;
        if (to_head_major) out[head_major] = in[i];
        else out[i] = in[head_major];
    }
}

void transpose_heads(const bf16* in, bf16* out, int B, int T, int nh, int Dh, bool to_head_major, cudaStream_t s) {
    int64_t total = int64_t(B) * T * nh * Dh;
    transpose_heads_kernel<<<blocks_for(total), kThreads, 0, s>>>(in, out, T, nh, Dh, total, to_head_major);
    check_launch("transpose_heads_kernel");
}

// The keys row `row` of a chunk may see: [first, t]. Rows of block p = p0 + row / (group*T) are query
// position t = row % T of batch b = p / KVH.
struct RowKeys {
    int t, first;
};
__device__ RowKeys row_keys(int64_t row, int T, int group, int p0, int KVH, const int32_t* doc_start) {
    int t = int(row % T);
    int64_t b = (p0 + row / (int64_t(group) * T)) / KVH;
    return {t, doc_start ? doc_start[b * T + t] : 0};
}

// P = softmax(scale * S) over columns first..t of each row, 0 elsewhere; lse = log sum exp of the
// scaled row. One block per row.
__global__ void masked_softmax_kernel(const float* S, bf16* P, float* lse, int T, float scale, int group, int p0, int KVH,
                                      const int32_t* doc_start) {
    int64_t row = blockIdx.x;
    RowKeys k = row_keys(row, T, group, p0, KVH, doc_start);
    const float* s = S + row * T;
    float m = -INFINITY;
    for (int j = k.first + threadIdx.x; j <= k.t; j += blockDim.x) m = fmaxf(m, s[j] * scale);
    m = block_max(m);
    float sum = 0;
    for (int j = k.first + threadIdx.x; j <= k.t; j += blockDim.x) sum += __expf(s[j] * scale - m);
    sum = block_sum(sum);
    float l = m + logf(sum);
    if (threadIdx.x == 0) lse[row] = l;
    for (int j = threadIdx.x; j < T; j += blockDim.x)
        P[row * T + j] = __float2bfloat16(j >= k.first && j <= k.t ? __expf(s[j] * scale - l) : 0.0f);
}

// P = exp(scale * S - lse) over columns first..t, 0 elsewhere (the forward's P, recomputed).
__global__ void masked_probs_kernel(const float* S, const float* lse, bf16* P, int T, float scale, int group, int p0, int KVH,
                                    const int32_t* doc_start) {
    int64_t row = blockIdx.x;
    RowKeys k = row_keys(row, T, group, p0, KVH, doc_start);
    float l = lse[row];
    for (int j = threadIdx.x; j < T; j += blockDim.x)
        P[row * T + j] = __float2bfloat16(j >= k.first && j <= k.t ? __expf(S[row * T + j] * scale - l) : 0.0f);
}

// dS = scale * P * (dP - D_row), written over P.
__global__ void softmax_backward_kernel(const float* dP, const float* rowdot, bf16* P, int T, float scale, int group, int p0,
                                        int KVH, const int32_t* doc_start) {
    int64_t row = blockIdx.x;
    RowKeys k = row_keys(row, T, group, p0, KVH, doc_start);
    float d = rowdot[row];
    for (int j = threadIdx.x; j < T; j += blockDim.x) {
        float p = __bfloat162float(P[row * T + j]);
        P[row * T + j] = __float2bfloat16(j >= k.first && j <= k.t ? scale * p * (dP[row * T + j] - d) : 0.0f);
    }
}

// D[b, h, t] = sum_d dO[b,t,h,d] * O[b,t,h,d]   (one warp per row; dO and O token-major)
__global__ void attention_rowdot_kernel(const bf16* dO, const bf16* O, float* rowdot, int B, int T, int H, int Dh) {
    int64_t row = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) / 32;
    int lane = threadIdx.x % 32;
    if (row >= int64_t(B) * H * T) return;
    int t = int(row % T), h = int((row / T) % H);
    int64_t b = row / (int64_t(T) * H);
    int64_t base = ((b * T + t) * H + h) * Dh;
    float acc = 0;
    for (int d = lane; d < Dh; d += 32) acc += __bfloat162float(dO[base + d]) * __bfloat162float(O[base + d]);
    for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffff, acc, o);
    if (lane == 0) rowdot[row] = acc;
}

// The scratch of one call, carved from one buffer: head-major copies of the operands and the score chunk.
struct Scratch {
    bf16 *qt, *kt, *vt, *ot;     // [B,H,T,Dh], [B,KVH,T,Dh] x2, [B,H,T,Dh] (o; in backward: dO)
    bf16 *dqt, *dkt, *dvt;       // gradients, head-major
    float* scores;               // [chunk, group*T, T] S, then dP
    bf16* probs;                 // [chunk, group*T, T] P, then dS
    float* rowdot;               // [B, H, T]
};
Scratch carve(const AttentionShape& a, int chunk, void* base, size_t* bytes) {
    char* p = static_cast<char*>(base);
    size_t at = 0;
    auto take = [&](size_t n) { at = (at + 255) / 256 * 256; void* q = p ? p + at : nullptr; at += n; return q; };
    int64_t q = int64_t(a.B) * a.H * a.T * a.Dh, kv = int64_t(a.B) * a.KVH * a.T * a.Dh;
    int64_t s = int64_t(chunk) * (a.H / a.KVH) * a.T * a.T;
    Scratch x;
    x.qt = (bf16*)take(q * 2), x.kt = (bf16*)take(kv * 2), x.vt = (bf16*)take(kv * 2), x.ot = (bf16*)take(q * 2);
    x.dqt = (bf16*)take(q * 2), x.dkt = (bf16*)take(kv * 2), x.dvt = (bf16*)take(kv * 2);
    x.scores = (float*)take(s * 4), x.probs = (bf16*)take(s * 2);
    x.rowdot = (float*)take(int64_t(a.B) * a.H * a.T * 4);
    if (bytes) *bytes = at;
    return x;
}

}  // namespace

ReferenceAttention::ReferenceAttention(const AttentionShape& shape, int64_t budget_bytes) : a(shape) {
    int64_t per_block = int64_t(a.H / a.KVH) * a.T * a.T * 6;  // fp32 scores + bf16 probabilities
    chunk = int(std::max<int64_t>(1, std::min<int64_t>(int64_t(a.B) * a.KVH, budget_bytes / per_block)));
}

size_t ReferenceAttention::scratch_bytes() const {
    size_t bytes = 0;
    carve(a, chunk, nullptr, &bytes);
    return bytes;
}

void ReferenceAttention::forward(const Gemm& g, const bf16* q, const bf16* k, const bf16* v, const int32_t* doc_start, bf16* o,
                                 float* lse, void* scratch) const {
    Scratch x = carve(a, chunk, scratch, nullptr);
    int group = a.H / a.KVH, T = a.T, Dh = a.Dh;
    int64_t q_block = int64_t(group) * T * Dh, kv_block = int64_t(T) * Dh, s_block = int64_t(group) * T * T;
    float scale = 1.0f / std::sqrt(float(Dh));
    transpose_heads(q, x.qt, a.B, T, a.H, Dh, true, g.stream);
    transpose_heads(k, x.kt, a.B, T, a.KVH, Dh, true, g.stream);
    transpose_heads(v, x.vt, a.B, T, a.KVH, Dh, true, g.stream);
    for (int p0 = 0; p0 < a.B * a.KVH; p0 += chunk) {  // p = b * KVH + g
        int n = std::min(chunk, a.B * a.KVH - p0);
        unsigned rows = unsigned(int64_t(n) * group * T);
        // S = Q K^T
        matmul_nt(g, x.scores, x.qt + p0 * q_block, x.kt + p0 * kv_block, group * T, T, Dh, 1.0f, 0.0f, {n, q_block, kv_block, s_block});
        masked_softmax_kernel<<<rows, kThreads, 0, g.stream>>>(x.scores, x.probs, lse + p0 * int64_t(group) * T, T, scale, group, p0,
                                                                a.KVH, doc_start);
        check_launch("masked_softmax_kernel");
        // O = P V
        matmul_nn(g, x.ot + p0 * q_block, x.probs, x.vt + p0 * kv_block, group * T, Dh, T, 1.0f, 0.0f, {n, s_block, kv_block, q_block});
    }
    transpose_heads(x.ot, o, a.B, T, a.H, Dh, false, g.stream);
}

void ReferenceAttention::backward(const Gemm& g, const bf16* q, const bf16* k, const bf16* v, const bf16* o, const bf16* dO,
                                  const float* lse, const int32_t* doc_start, bf16* dq, bf16* dk, bf16* dv, void* scratch) const {
    Scratch x = carve(a, chunk, scratch, nullptr);
    int group = a.H / a.KVH, T = a.T, Dh = a.Dh;
    int64_t q_block = int64_t(group) * T * Dh, kv_block = int64_t(T) * Dh, s_block = int64_t(group) * T * T;
    float scale = 1.0f / std::sqrt(float(Dh));
    attention_rowdot_kernel<<<blocks_for(int64_t(a.B) * T * a.H * 32), kThreads, 0, g.stream>>>(dO, o, x.rowdot, a.B, T, a.H, Dh);
    check_launch("attention_rowdot_kernel");
    transpose_heads(q, x.qt, a.B, T, a.H, Dh, true, g.stream);
    transpose_heads(k, x.kt, a.B, T, a.KVH, Dh, true, g.stream);
    transpose_heads(v, x.vt, a.B, T, a.KVH, Dh, true, g.stream);
    transpose_heads(dO, x.ot, a.B, T, a.H, Dh, true, g.stream);  // dO, head-major
    for (int p0 = 0; p0 < a.B * a.KVH; p0 += chunk) {
        int n = std::min(chunk, a.B * a.KVH - p0);
        const bf16 *Q = x.qt + p0 * q_block, *K = x.kt + p0 * kv_block, *V = x.vt + p0 * kv_block, *dOt = x.ot + p0 * q_block;
        unsigned rows = unsigned(int64_t(n) * group * T);
        // S = Q K^T, then P from S and lse
        matmul_nt(g, x.scores, Q, K, group * T, T, Dh, 1.0f, 0.0f, {n, q_block, kv_block, s_block});
        masked_probs_kernel<<<rows, kThreads, 0, g.stream>>>(x.scores, lse + p0 * int64_t(group) * T, x.probs, T, scale, group, p0,
                                                              a.KVH, doc_start);
        check_launch("masked_probs_kernel");
        // dV = P^T dO
        matmul_tn(g, x.dvt + p0 * kv_block, x.probs, dOt, T, Dh, group * T, 1.0f, 0.0f, {n, s_block, q_block, kv_block});
        // dP = dO V^T  (over S), then dS = P (dP - D) scale  (over P)
        matmul_nt(g, x.scores, dOt, V, group * T, T, Dh, 1.0f, 0.0f, {n, q_block, kv_block, s_block});
        softmax_backward_kernel<<<rows, kThreads, 0, g.stream>>>(x.scores, x.rowdot + p0 * int64_t(group) * T, x.probs, T, scale,
                                                                  group, p0, a.KVH, doc_start);
        check_launch("softmax_backward_kernel");
        // dQ = dS K,  dK = dS^T Q
        matmul_nn(g, x.dqt + p0 * q_block, x.probs, K, group * T, Dh, T, 1.0f, 0.0f, {n, s_block, kv_block, q_block});
        matmul_tn(g, x.dkt + p0 * kv_block, x.probs, Q, T, Dh, group * T, 1.0f, 0.0f, {n, s_block, q_block, kv_block});
    }
    transpose_heads(x.dqt, dq, a.B, T, a.H, Dh, false, g.stream);
    transpose_heads(x.dkt, dk, a.B, T, a.KVH, Dh, false, g.stream);
    transpose_heads(x.dvt, dv, a.B, T, a.KVH, Dh, false, g.stream);
}

// ================================================================================================ decode

namespace {

// k_cache[b, positions[b], :] = k[b, :],  v likewise
__global__ void kv_cache_write_kernel(const bf16* k, const bf16* v, bf16* k_cache, bf16* v_cache, const int32_t* positions, int B,
                                      int max_len, int kv_dim) {
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < int64_t(B) * kv_dim; i += int64_t(gridDim.x) * blockDim.x) {
        int64_t b = i / kv_dim, at = (b * max_len + positions[b]) * kv_dim + i % kv_dim;
        k_cache[at] = k[i], v_cache[at] = v[i];
    }
}

// o[b, h] = sum_{j <= positions[b]} softmax_j(q[b, h] . k[b, j, g] / sqrt(Dh)) v[b, j, g]   (a block per (h, b))
// A thread per key for the scores (q in shared memory, k in 16-byte loads); then the weights p_j =
// exp(s_j - max) in place of the scores; then o with a warp per key j (mod the warps) and the lanes across
// Dh, the warps' partial sums added in a fixed order. Keys are read VEC elements at a time: 8 (16-byte
// loads) when Dh is a multiple of 8, else 2 (every head_dim the config accepts is even); Dh at most kDecodeMaxDh.
constexpr int kDecodeThreads = 256, kDecodeMaxDh = 256;
template <int VEC>
__global__ void __launch_bounds__(kDecodeThreads) decode_attention_kernel(const bf16* q, const bf16* k_cache, const bf16* v_cache,
                                                                          const int32_t* positions, bf16* o, float* scores, int max_len,
                                                                          int H, int KVH, int Dh) {
    constexpr int kWarps = kDecodeThreads / 32, kPerLane = kDecodeMaxDh / 32;
    __shared__ float qs[kDecodeMaxDh];
    __shared__ float partial[kWarps][kDecodeMaxDh];
    int h = blockIdx.x, b = blockIdx.y, g = h / (H / KVH), len = positions[b] + 1;
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    float* s = scores + (int64_t(b) * H + h) * max_len;
    const bf16* kb = k_cache + int64_t(b) * max_len * KVH * Dh + int64_t(g) * Dh;  // key j at kb + j * KVH * Dh
    const bf16* vb = v_cache + int64_t(b) * max_len * KVH * Dh + int64_t(g) * Dh;
    const int64_t row = int64_t(KVH) * Dh;
    float scale = rsqrtf(float(Dh));
    for (int d = threadIdx.x; d < Dh; d += blockDim.x) qs[d] = __bfloat162float(q[(int64_t(b) * H + h) * Dh + d]);
    __syncthreads();
    float m = -INFINITY;
    for (int j = threadIdx.x; j < len; j += blockDim.x) {  // s_j = q . k_j / sqrt(Dh)
        float acc = 0, kf[VEC];
        for (int d = 0; d < Dh; d += VEC) {
            load_bf16<VEC>(kb + j * row + d, kf);
            for (int e = 0; e < VEC; ++e) acc = fmaf(qs[d + e], kf[e], acc);
        }
        s[j] = acc * scale;
        m = fmaxf(m, s[j]);
    }
    m = block_max(m);
    float sum = 0;
    for (int j = threadIdx.x; j < len; j += blockDim.x) {  // p_j = exp(s_j - m), written over s_j by the thread that wrote it
        float p = __expf(s[j] - m);
        s[j] = p;
        sum += p;
    }
    sum = block_sum(sum);  // its barriers also make every p_j visible to the block
    float acc[kPerLane] = {};
#pragma unroll 4
    for (int j = warp; j < len; j += kWarps) {  // this warp's share of sum_j p_j v_j
        float p = s[j];
        for (int t = 0; t < kPerLane; ++t)
            if (lane + 32 * t < Dh) acc[t] = fmaf(p, __bfloat162float(vb[j * row + lane + 32 * t]), acc[t]);
    }
    for (int t = 0; t < kPerLane; ++t)
        if (lane + 32 * t < Dh) partial[warp][lane + 32 * t] = acc[t];
    __syncthreads();
    for (int d = threadIdx.x; d < Dh; d += blockDim.x) {
        float total = 0;
        for (int w = 0; w < kWarps; ++w) total += partial[w][d];
        o[(int64_t(b) * H + h) * Dh + d] = __float2bfloat16(total / sum);
    }
}

}  // namespace

void kv_cache_write(const bf16* k, const bf16* v, bf16* k_cache, bf16* v_cache, const int32_t* positions, int B, int max_len,
                    int kv_dim, cudaStream_t stream) {
    kv_cache_write_kernel<<<blocks_for(int64_t(B) * kv_dim), kThreads, 0, stream>>>(k, v, k_cache, v_cache, positions, B, max_len, kv_dim);
    check_launch("kv_cache_write_kernel");
}

void kv_cache_fill(const bf16* k, const bf16* v, bf16* k_cache, bf16* v_cache, int B, int T, int max_len, int kv_dim,
                   cudaStream_t stream) {
    if (T > max_len) exit_with_error("kv_cache_fill: " + std::to_string(T) + " positions, the cache holds " + std::to_string(max_len));
    const size_t row = size_t(T) * kv_dim * sizeof(bf16), pitch = size_t(max_len) * kv_dim * sizeof(bf16);  // bytes
    check_cuda(cudaMemcpy2DAsync(k_cache, pitch, k, row, row, size_t(B), cudaMemcpyDeviceToDevice, stream), "kv_cache_fill");
    check_cuda(cudaMemcpy2DAsync(v_cache, pitch, v, row, row, size_t(B), cudaMemcpyDeviceToDevice, stream), "kv_cache_fill");
}

void decode_attention(const bf16* q, const bf16* k_cache, const bf16* v_cache, const int32_t* positions, bf16* o, float* scores, int B,
                      int max_len, int H, int KVH, int Dh, cudaStream_t stream) {
    if (Dh % 2 != 0 || Dh > kDecodeMaxDh)
        exit_with_error("decode_attention: head_dim " + std::to_string(Dh) + " (even, at most " + std::to_string(kDecodeMaxDh) + ")");
    auto kernel = Dh % 8 == 0 ? decode_attention_kernel<8> : decode_attention_kernel<2>;
    kernel<<<dim3(unsigned(H), unsigned(B)), kDecodeThreads, 0, stream>>>(q, k_cache, v_cache, positions, o, scores, max_len, H, KVH, Dh);
    check_launch("decode_attention_kernel");
}
