// llama.h — the Llama model (and Qwen3, a Llama with q/k norms) on the GPU: the forward and backward passes
// of a layer and of the whole model, on weights it borrows unit by unit from a UnitStore (the ZeRO
// partitioner). Knows nothing of NCCL, MPI or where weights live. The configuration and HF names are
// support/llama_config.h; the kernels the passes call are kernels/ (indexed by kernels/ops.h).
#pragma once
#include <cstdint>
#include <vector>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "kernels/attention.h"
#include "support/common.h"
#include "kernels/gemm.h"
#include "support/llama_config.h"
#include "support/profile.h"

using bf16 = __nv_bfloat16;

// ================================================================================================ weights

// The trainable adapters of one layer, if any (see lora.h). Pointers are null for absent targets.
enum LoraTarget { kQ, kK, kV, kO, kGate, kUp, kDown, kTargets };
struct LoraLayerView {
    const bf16* A[kTargets] = {};  // [r, in]
    const bf16* B[kTargets] = {};  // [out, r]
    float* dA[kTargets] = {};      // fp32 gradients, accumulated
    float* dB[kTargets] = {};
};

// One unit's weights as the model sees them while it is gathered: the base weights (bf16, laid out as
// unit_layout says), their fp32 gradients when they train (full fine-tuning), and the LoRA view.
struct UnitView {
    const bf16* weights = nullptr;
    float* grads = nullptr;
    LoraLayerView lora;
};

// Where the model gets its weights: the ZeRO partitioner implements this (zero3.h). Units are
//   0 = embed_tokens (and the tied lm_head), 1..L = decoder layers, L+1 = final norm (+ untied lm_head).
// In the backward pass a gathered unit also carries its gradient buffers (zeroed for this micro-batch
// where the store reduces them away after each one).
enum class Pass { forward, backward };
struct UnitStore {
    virtual UnitView gather(int unit, Pass pass) = 0;  // full weights of `unit`, valid until release
    virtual void release(int unit) = 0;                 // the gathered buffer may be reused
    virtual void reduce_grads(int unit) = 0;            // the unit's gradients for this micro-batch are complete
    // Whether gather and release only hand out weights that stay where they are and issue no GPU work: then
    // a pass over the units can be captured in a CUDA graph and replayed while the store lives (generation).
    virtual bool weights_in_place() const { return false; }
    virtual ~UnitStore() = default;
};

// ================================================================================================ the model

// Pointers into one gathered layer unit, by LayerTensor (null where the family's layer lacks the tensor; dw:
// null unless the base weights train).
struct LayerWeights {
    const bf16* w[kLayerTensors];
    float* dw[kLayerTensors];
};
// The projections grouped by the input they read (q, k, v: rmsnorm(h); o: the attention output; gate, up:
// rmsnorm(a); down: the SwiGLU output), and the weight each LoRA target adapts.
enum ProjectionGroup { kGroupQKV, kGroupO, kGroupGateUp, kGroupDown, kGroups };
struct GroupMembers {
    LoraTarget t[3];
    int size;
};
inline constexpr GroupMembers kGroup[kGroups] = {{{kQ, kK, kV}, 3}, {{kO}, 1}, {{kGate, kUp}, 2}, {{kDown}, 1}};
inline constexpr LayerTensor kProjection[kTargets] = {kQProj, kKProj, kVProj, kOProj, kGateProj, kUpProj, kDownProj};

// A micro-batch on the GPU. positions and doc_start may be null: then row b holds one document and token
// t sits at position t.
struct DeviceBatch {
    int B = 0, T = 0;
    int32_t* ids = nullptr;        // [B*T]
    int32_t* labels = nullptr;     // [B*T], -100 = no loss; position t predicts labels[t+1]
    int32_t* positions = nullptr;  // [B*T] RoPE position of each token (0 at each document's start)
    int32_t* doc_start = nullptr;  // [B*T] the row position where the token's document begins
};

// Where generation keeps the keys and values of the positions seen so far, for each of B sequences.
struct KvCache {
    bf16* k = nullptr;       // [L, B, max_len, KVH*Dh]
    bf16* v = nullptr;       // [L, B, max_len, KVH*Dh]
    float* scores = nullptr; // [B, H, max_len] decode attention scratch
    int max_len = 0;
};

// The LoRA settings the model needs (lora.h has the rest).
struct LoraShape {
    int rank = 0;        // 0: no adapters
    float scale = 0;     // alpha / rank
    float dropout = 0;   // PEFT's lora_dropout on the adapter's input (training passes only)
    uint64_t seed = 0;   // of the dropout masks
};

// The model's activations and workspace for batches up to B x T, and the forward/backward passes.
class LlamaModel {
  public:
    // recompute = activation checkpointing: keep only each layer's input, recompute the layer in backward.
    // max_position: rows of the RoPE table (default T; generation needs its cache length).
    LlamaModel(const LlamaConfig& c, LoraShape lora, int B, int T, cudaStream_t stream, bool recompute = false,
               int max_position = 0);
    ~LlamaModel();
    LlamaModel(const LlamaModel&) = delete;
    LlamaModel& operator=(const LlamaModel&) = delete;

    // Forward and backward of one micro-batch. Gradients accumulate (scaled by 1/loss_divisor, the
    // number of target tokens in the whole optimizer step); the summed CE of this micro-batch is added to
    // the device scalar loss_sum() (read it when logging).
    void forward_backward(const DeviceBatch& batch, UnitStore& store, float loss_divisor);
    // Forward only: adds summed CE to loss_sum(); when `logits` is given (B*T*V floats), writes them.
    void forward(const DeviceBatch& batch, UnitStore& store, float* logits = nullptr);
    // Generation (a model made with T = 1, one row per sequence), one position per call, in two parts:
    // set_decode_inputs queues row b's token tokens[b] and position positions[b] (< max_len, the cache's)
    // into the model's device inputs; decode runs them through every layer, row b's keys and values written
    // into row b of `cache` at its position, attending to the row's positions 0..positions[b], and the next
    // tokens' logits [B, V] into `logits` (device). decode reads its inputs from device memory only and never
    // waits for the host, so (with a store whose weights stay in place) it can be captured in a CUDA graph
    // and replayed after each set_decode_inputs.
    void set_decode_inputs(const std::vector<int32_t>& tokens, const std::vector<int32_t>& positions, int max_len);
    void decode(UnitStore& store, const KvCache& cache, float* logits);
    // The start of the prompts in one pass (a model made with B = the cache's rows and T ≥ 2 tokens a row):
    // ids [B, T] (device) at positions 0..T-1 through every layer with training's attention, each layer's
    // keys and values written into the cache's positions 0..T-1. No logits: decode steps go on from position
    // T, as if positions 0..T-1 had been decoded one by one (the same values up to bf16 rounding).
    void prefill(UnitStore& store, const KvCache& cache, int32_t* ids);

    float* loss_sum() { return loss_sum_; }  // device fp32 scalar
    uint64_t dropout_step = 0;  // which micro-batch this is: LoRA dropout's masks follow it (set by the trainer)
    Profiler* profiler = nullptr;  // when set and in a profiled step, each kernel family's time is measured
    size_t activation_bytes() const { return arena_bytes_; }
    // What activation_bytes() will be for batches of B x T, without a GPU (--dry-run's estimate): the
    // same buffer list counted, nothing allocated. Library workspaces (cuBLASLt, attention) are apart.
    static size_t arena_bytes(const LlamaConfig& c, LoraShape lora, int B, int T, bool recompute = false, int max_position = 0);
    const LlamaConfig& config() const { return c_; }

  private:
    struct CountOnly {};
    LlamaModel(const LlamaConfig& c, LoraShape lora, int B, int T, bool recompute, int max_position, CountOnly);
    struct Layer;       // what backward needs of one layer's forward
    struct GradScratch; // gradients flowing back through one layer (shared by all layers)
    void carve(char* base);
    void forward_layers(const DeviceBatch& batch, UnitStore& store, const KvCache* cache = nullptr);
    void layer_forward(int l, const UnitView& w, const bf16* h_in, bf16* h_out, const DeviceBatch& batch,
                       const KvCache* cache = nullptr);
    void layer_backward(int l, const UnitView& w, const DeviceBatch& batch, bf16* dh);  // dh: in d h_out, out d h_in
    void head(const DeviceBatch& batch, UnitStore& store, float loss_divisor, bool backward, float* logits);
    struct Adapters {  // the adapted members of a group: their order, u's row stride, one A product or one each
        LoraTarget t[3];
        int n = 0, col = 0, ld = 0;  // member k's u at column k col; row stride ld
        bool batched = false;
    };
    int lora_columns() const { return (lora_.rank + 7) / 8 * 8; }  // u's columns per adapter (16-byte rows)
    Adapters adapters(int group, const LoraLayerView& lora, int in) const;
    // Columns after each row of the group's input (and of its gradient) where x A^T rides beside x: P of lora.h's
    // with_lora_slots when the layout gives the group's weights room for s B (c_.row_pad), else 0.
    int fold_columns(int group) const;
    void group_forward(int l, int group, bf16* x, int in, const LayerWeights& w, bf16* const* y, const bf16* residual,
                       const LoraLayerView& lora, bf16* u);
    void folded_forward(int l, int group, bf16* x, int in, const LayerWeights& w, bf16* const* y, const bf16* residual,
                        const LoraLayerView& lora);
    void folded_backward(int l, int group, const bf16* x, int in, const LayerWeights& w, const bf16* const* dy, bf16* dx,
                         const LoraLayerView& lora);
    void fill_lora_slots(const LayerWeights& w, const LoraLayerView& lora);
    void group_backward(int l, int group, const bf16* x, int in, const LayerWeights& w, const bf16* const* dy, bf16* dx,
                        float dx_beta, const LoraLayerView& lora, const bf16* u);
    const bf16* dropped(int l, LoraTarget t, const bf16* x, int in, int ldx = 0);  // x with LoRA dropout applied (rows of in), or x

    LlamaConfig c_;
    LoraShape lora_;
    int B_, T_, N_ = 0, max_position_ = 0;
    cudaStream_t stream_ = nullptr;
    bool recompute_ = false;
    Gemm gemm_;
    Attention* attention_ = nullptr;
    int64_t layer_offset_[kLayerTensors] = {};  // where each tensor starts inside a layer unit (-1: the family has none)
    int projection_out_[kTargets] = {};  // output features of the weight each LoRA target adapts
    int64_t lm_head_offset_ = 0;  // untied lm_head inside the final unit

    char* arena_ = nullptr;  // every buffer below, one allocation (carve() lists them)
    size_t arena_bytes_ = 0;
    std::vector<Layer> layers_;     // [L] saved activations (one entry with recompute: rebuilt per layer)
    GradScratch* grad_ = nullptr;
    bf16* hidden_ = nullptr;        // [L+1, N, D] h_0 .. h_L (the layers' inputs and the last output)
    bf16* final_norm_ = nullptr;    // [N, D]
    float* final_rstd_ = nullptr;   // [N]
    int32_t* positions_ = nullptr;  // [N] t of each row position: the default when a batch has none
    int32_t* decode_io_ = nullptr;  // [2, B] generation: each row's token, then its position
    bf16* lora_x_ = nullptr;        // [N, max in] LoRA dropout: the adapter's dropped input (when dropout > 0)
    bf16* lora_dx_ = nullptr;       // [N, max in] LoRA dropout: du A before the mask, in backward
    bool training_ = false;         // inside forward_backward: dropout is on
    float *rope_cos_ = nullptr, *rope_sin_ = nullptr;  // [max_position, Dh/2]
    int head_rows_ = 0;             // tokens per lm_head chunk
    bf16* logits_ = nullptr;        // [head_rows, V] logits of one chunk, then (backward) their gradient
    int32_t* targets_ = nullptr;    // [N] labels shifted by one
    float* loss_sum_ = nullptr;     // [1]
    float* row_loss_ = nullptr;     // [head_rows]
    float* norm_partial_ = nullptr; // [kNormPartials, D]
};
