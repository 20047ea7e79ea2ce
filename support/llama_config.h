// support/llama_config.h — what a Llama model is, before any GPU: its configuration (an HF config.json or a named
// preset), its parameters by HF name and shape, and how they group into units — the pieces the ZeRO
// partitioner hands out one at a time. Knows nothing of CUDA, NCCL or where weights live.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

struct LlamaConfig {
    int hidden_size = 0, intermediate_size = 0, num_hidden_layers = 0;
    int num_attention_heads = 0, num_key_value_heads = 0, head_dim = 0;
    int vocab_size = 0, max_position_embeddings = 0;
    float rms_norm_eps = 1e-5f, rope_theta = 10000.0f;
    // rope_scaling of type "llama3" (Llama 3.1/3.2): long wavelengths are slowed down by `factor`.
    bool rope_llama3 = false;
    float rope_factor = 1, rope_low_freq_factor = 1, rope_high_freq_factor = 4;
    int rope_original_max_position = 8192;
    bool tie_word_embeddings = false;
    int bos_token_id = 128000;
    std::vector<int> eos_token_ids{128001};
    std::string name;  // the preset or config.json it came from

    int64_t num_parameters() const;
};

// Reads an HF config.json; fails naming the file and field on anything a Llama model cannot be.
LlamaConfig load_config(const std::string& path);
// Named shapes for random initialisation: "tiny" (the default base), "llama-3.2-1b", and "llama-2-7b",
// "llama-2-13b" (the Llama-2 vocabulary of 32,000: their default tokenizer is data/llama2_tokenizer.json).
LlamaConfig preset_config(const std::string& name);
// An HF config.json for `c` (what transformers' from_pretrained reads).
std::string config_json(const LlamaConfig& c);

// RoPE inverse frequencies (head_dim/2 of them), with llama3 scaling when configured, as HF computes them.
std::vector<float> rope_inv_freq(const LlamaConfig& c);

struct TensorSpec {
    std::string name;  // HF name, e.g. model.layers.3.self_attn.q_proj.weight
    std::vector<int64_t> shape;
    int64_t numel() const;
};

// ---------------------------------------------------------------------------------------------- the layer
// The nine tensors of a decoder layer, in HF's order. This table is the one description of a layer:
// names, shapes, offsets inside the layer's unit and the views the kernels use all derive from it.
//   tensor                           shape        D = hidden, Q = heads*head_dim, KV = kv_heads*head_dim,
//   input_layernorm.weight           [D]          F = intermediate
//   self_attn.q_proj.weight          [Q, D]
//   self_attn.k_proj.weight          [KV, D]
//   self_attn.v_proj.weight          [KV, D]
//   self_attn.o_proj.weight          [D, Q]
//   post_attention_layernorm.weight  [D]
//   mlp.gate_proj.weight             [F, D]
//   mlp.up_proj.weight               [F, D]
//   mlp.down_proj.weight             [D, F]
enum LayerTensor { kInputNorm, kQProj, kKProj, kVProj, kOProj, kPostNorm, kGateProj, kUpProj, kDownProj, kLayerTensors };
const char* layer_tensor_name(LayerTensor t);                                 // "self_attn.q_proj.weight"
std::vector<int64_t> layer_tensor_shape(const LlamaConfig& c, LayerTensor t);  // {Q, D}

// ---------------------------------------------------------------------------------------------- units
// The model's parameters in units, the pieces ZeRO gathers one at a time:
//   unit 0          model.embed_tokens.weight (also the lm_head when tied)
//   units 1..L      the nine tensors of decoder layer u-1, in LayerTensor order
//   unit L+1        model.norm.weight (+ lm_head.weight when untied)
// Units in order list every parameter in HF's order. Inside a unit's flat buffer each tensor starts at an
// offset aligned to kAlign elements (16 bytes of bf16), so every pointer a matrix product receives is
// aligned; the gaps are zero and belong to no tensor.
constexpr int64_t kAlign = 8;
inline int64_t align_up(int64_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

struct UnitTensor {
    TensorSpec spec;
    int64_t offset;  // first element inside the unit's flat buffer
};
struct UnitLayout {
    std::vector<UnitTensor> tensors;
    int64_t numel = 0;  // the unit's flat size, gaps included
};
int num_units(const LlamaConfig& c);
UnitLayout unit_layout(const LlamaConfig& c, int unit);
// Every parameter of the model by HF name and shape, in HF order (lm_head only when untied).
std::vector<TensorSpec> parameter_specs(const LlamaConfig& c);
