// lora.h — LoRA adapters (Hu et al. 2021) on the Llama projections, in PEFT's layout and file format.
// For a target projection y = x W^T (W: [out, in]) an adapter adds  y += s * (x A^T) B^T  with A: [r, in],
// B: [out, r], s = alpha / r (alpha / sqrt(r) with rsLoRA). PEFT's default init: A Kaiming-uniform
// (bound 1/sqrt(in)), B = 0, so training starts from the base model exactly.
#pragma once
#include <string>
#include <vector>

#include "llama.h"

constexpr int kMaxLoraRank = 4096;  // --lora-rank and an adapter's r

struct LoraConfig {
    int rank = 0;  // 0 = no adapters (full fine-tuning)
    float alpha = 16;
    bool use_rslora = false;
    float dropout = 0;  // PEFT's lora_dropout: dropout on the adapter's input, in training only
    bool target[kTargets] = {true, true, true, true, true, true, true};
    float scale() const;
    LoraShape shape(uint64_t seed) const { return {rank, scale(), dropout, seed}; }
};

const char* lora_target_name(LoraTarget t);  // "q_proj", ..., "down_proj"
// Parses "q_proj,v_proj" (or short "q,v", or "all"); fails naming the flag on an unknown name.
void parse_lora_targets(const std::string& list, LoraConfig& config, const std::string& flag);

// Where each adapter lives inside one layer's flat LoRA buffer: every A in target order, then every B.
struct LoraLayout {
    int64_t a_offset[kTargets] = {}, b_offset[kTargets] = {};
    int in[kTargets] = {}, out[kTargets] = {};
    int64_t per_layer = 0;  // elements per layer
};
LoraLayout lora_layout(const LlamaConfig& model, const LoraConfig& lora);
LoraLayerView lora_view(const LoraConfig& lora, const LoraLayout& layout, const bf16* weights, float* grads);

// PEFT's init for one layer's flat fp32 buffer (host): A ~ U(-1/sqrt(in), 1/sqrt(in)), B = 0.
void lora_init_layer(const LoraConfig& lora, const LoraLayout& layout, uint64_t seed, int layer, float* master);

// PEFT adapter directory: adapter_config.json + adapter_model.safetensors (keys
// base_model.model.model.layers.L.self_attn.q_proj.lora_A.weight, ...). `layers[l]` is layer l's flat fp32 buffer.
void save_peft_adapter(const std::string& dir, const LlamaConfig& model, const LoraConfig& lora,
                       const std::vector<std::vector<float>>& layers, const std::string& base_model);
// Reads adapter_config.json into `lora` (rank, alpha, targets) and the weights into `layers`. Fails, naming
// the file and field or tensor, on an r outside [1, kMaxLoraRank], a lora_alpha that is not positive, and
// before allocating, on a tensor missing, of another shape or dtype, or not one of the adapters the config names.
void load_peft_adapter(const std::string& dir, const LlamaConfig& model, LoraConfig& lora,
                       std::vector<std::vector<float>>& layers);
std::string peft_key(int layer, LoraTarget t, char which);  // which = 'A' or 'B'

// The layout training uses: c with row_pad set so that each adapted projection of the groups whose input the
// model writes with room beside it (q, k, v and gate, up: RMSNorm's output; down: SwiGLU's) carries P =
// c x (the group's adapted members) columns after each row of W, member k's s B in columns in + k c .. in +
// k c + r (c = r rounded up to 8). The model then writes x A^T beside x (rows of in + P) and one product per
// member makes y = [x | u] [W | s B]^T, and in backward [dx | du] = dy [W | s B] (llama.cu). o_proj (its
// input is the attention kernels' output) keeps the adapter's own products.
LlamaConfig with_lora_slots(const LlamaConfig& c, const LoraConfig& lora);
inline int lora_slot_columns(int rank) { return (rank + 7) / 8 * 8; }

// W += s * B A for every adapted projection of one layer: `weights` is the layer unit in fp32.
void merge_lora_layer(const LlamaConfig& model, const LoraConfig& lora, const float* adapters, float* weights);
// The same for one target t: W is its projection's weight [out, in] in fp32.
void merge_lora_target(const LlamaConfig& model, const LoraConfig& lora, const float* adapters, LoraTarget t, float* W);
