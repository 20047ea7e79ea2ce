// kernels/attention.h — causal multi-head attention with grouped KV heads (GQA) over documents packed in rows:
//   s_j = q[b,t,h] . k[b,j,g] / sqrt(Dh)            for doc_start[b,t] <= j <= t,   g = h / (H / KVH)
//   o[b,t,h] = sum_j softmax(s)_j v[b,j,g],         lse[b,h,t] = log sum_j exp(s_j)
// Layouts are token-major, as the projections write them: q, o, dO, dq [B, T, H, Dh]; k, v, dk, dv
// [B, T, KVH, Dh]; lse [B, H, T]; doc_start [B, T] (null: one document per row, plain causal attention).
//
// Two implementations, one call site (attention_forward / attention_backward pick):
//   attention.cu      the fused kernels (FlashAttention-2: tiles in shared memory, online softmax, only o
//                     and lse saved; backward recomputes P tile by tile), for the head dims they support;
//   attention_ref.cu  the reference path: scores materialised in bounded chunks through cuBLASLt, for any
//                     even head_dim (and the fallback, with one notice, for head dims the fused path lacks).
#pragma once
#include <cstddef>
#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

using bf16 = __nv_bfloat16;
struct Gemm;

struct AttentionShape {
    int B = 0, T = 0, H = 0, KVH = 0, Dh = 0;
};

// RoPE's rotation (kernels/ops.h rope) that q and k went through after their projections. Given to a backward,
// dq and dk come back through it (rotated by -θ), as the gradients of q and k before the rotation; the
// warp-specialized Hopper backwards do it where they write dq and dk, the other paths with rope() after.
struct Rotation {
    const float* cos = nullptr;  // [positions, Dh/2]
    const float* sin = nullptr;
    const int32_t* positions = nullptr;  // [B, T]
};

// Scratch the attention of one layer needs beyond its inputs and outputs (reference path: score chunks;
// fused path: the backward's dq accumulator), allocated once by the model.
class Attention {
  public:
    Attention(const AttentionShape& a, const Gemm& gemm, bool allow_fused = true);
    ~Attention();
    Attention(const Attention&) = delete;
    Attention& operator=(const Attention&) = delete;

    void forward(const bf16* q, const bf16* k, const bf16* v, const int32_t* doc_start, bf16* o, float* lse);
    // dq, dk, dv are written (not accumulated); with `rope`, dq and dk of q and k before the rotation.
    void backward(const bf16* q, const bf16* k, const bf16* v, const bf16* o, const bf16* dO, const float* lse,
                  const int32_t* doc_start, bf16* dq, bf16* dk, bf16* dv, const Rotation& rope = {});

  private:
    AttentionShape a_;
    const Gemm& gemm_;
    bool fused_ = false;
    void* scratch_ = nullptr;
};

// ---------------------------------------------------------------------------------------------- fused path
// attention.cu. Deterministic: the same inputs give bitwise the same outputs.
bool flash_attention_supported(int head_dim);
// head_dim 64 on an H100/H200 (an sm_90a build) runs the Hopper kernels (attention_sm90.cuh) unless turned
// off here (the tests check both kernel families on one GPU); returns whether they will run where they apply.
bool flash_attention_use_hopper(bool on);
size_t flash_attention_backward_workspace(const AttentionShape& a);  // bytes
void flash_attention_forward(const AttentionShape& a, const bf16* q, const bf16* k, const bf16* v, const int32_t* doc_start,
                             bf16* o, float* lse, cudaStream_t stream);
void flash_attention_backward(const AttentionShape& a, const bf16* q, const bf16* k, const bf16* v, const bf16* o,
                              const bf16* dO, const float* lse, const int32_t* doc_start, bf16* dq, bf16* dk, bf16* dv,
                              void* workspace, cudaStream_t stream);
// The same, dq and dk handed back through RoPE's rotation (Rotation above).
void flash_attention_backward(const AttentionShape& a, const bf16* q, const bf16* k, const bf16* v, const bf16* o,
                              const bf16* dO, const float* lse, const int32_t* doc_start, bf16* dq, bf16* dk, bf16* dv,
                              void* workspace, cudaStream_t stream, const Rotation& rope);

// Generation, B sequences one new token each. kv_cache_write: row b's k, v [B, KVH*Dh] into one layer's
// cache (k_cache, v_cache [B, max_len, KVH*Dh]) at position positions[b]. decode_attention: row b's query
// (q, o [B, H, Dh]) against its cache's positions 0..positions[b]; scores [B, H, max_len] is scratch.
void kv_cache_write(const bf16* k, const bf16* v, bf16* k_cache, bf16* v_cache, const int32_t* positions, int B, int max_len,
                    int kv_dim, cudaStream_t stream);
// A prompt read in one pass (prefill): rows' k, v [B, T, KVH*Dh] into one layer's cache at positions 0..T-1.
void kv_cache_fill(const bf16* k, const bf16* v, bf16* k_cache, bf16* v_cache, int B, int T, int max_len, int kv_dim,
                   cudaStream_t stream);
void decode_attention(const bf16* q, const bf16* k_cache, const bf16* v_cache, const int32_t* positions, bf16* o, float* scores, int B,
                      int max_len, int H, int KVH, int Dh, cudaStream_t stream);

// ---------------------------------------------------------------------------------------------- reference path
// attention_ref.cu: scores of `chunk` (batch, kv-head) blocks at a time through cuBLASLt.
struct ReferenceAttention {
    AttentionShape a;
    int chunk = 1;  // (b, kv-head) blocks of scores per pass
    ReferenceAttention(const AttentionShape& shape, int64_t budget_bytes = 512ll << 20);
    size_t scratch_bytes() const;
    void forward(const Gemm& g, const bf16* q, const bf16* k, const bf16* v, const int32_t* doc_start, bf16* o, float* lse,
                 void* scratch) const;
    void backward(const Gemm& g, const bf16* q, const bf16* k, const bf16* v, const bf16* o, const bf16* dO, const float* lse,
                  const int32_t* doc_start, bf16* dq, bf16* dk, bf16* dv, void* scratch) const;
};
