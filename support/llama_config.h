// support/llama_config.h — what a model of the Llama family is, before any GPU: its configuration (an HF
// config.json or a named preset), its parameters by HF name and shape, and how they group into units — the
// pieces the ZeRO partitioner hands out one at a time. A family other than Llama (Qwen3) is a flag here and
// rows in the layer table, not a second model. Knows nothing of CUDA, NCCL or where weights live.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

enum LayerTensor {
    kInputNorm, kQProj, kKProj, kVProj, kOProj, kQNorm, kKNorm, kPostNorm, kGateProj, kUpProj, kDownProj, kLayerTensors
};

struct LlamaConfig {
    // The family, as config.json's model_type names it: "llama", or "qwen3" (a Llama whose q and k are
    // RMS-normalised per head before RoPE). How a family differs from Llama is a flag each (below).
    std::string model_type = "llama";
    bool qk_norm = false;  // q_norm, k_norm: RMSNorm over each head's head_dim of q and k, weight [head_dim] (Qwen3)
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
    // Not the model's but its layout's: extra elements at the end of each row of a layer tensor inside its
    // unit (0: rows back to back). LoRA training gives an adapted projection's weight W [out, in] rows of
    // in + P, the adapter's s B riding in the last P columns, so the base product adds the adapter's term
    // (lora.h: with_lora_slots; llama.cu). config_json and the files never see it.
    int row_pad[kLayerTensors] = {};

    int64_t num_parameters() const;
};

// Reads an HF config.json (model_type "llama" or "qwen3"); fails naming the file and field on anything
// these families cannot be (biases, sliding-window attention, other RoPE types), and on a size beyond its
// limit (named in the message) before anything is allocated from it.
LlamaConfig load_config(const std::string& path);
// Named shapes for random initialisation (and --dry-run plans): "tiny" (the default base), "llama-3.2-1b",
// "llama-3.1-8b", "llama-3.1-70b", "llama-2-7b", "llama-2-13b" (the Llama-2 vocabulary of 32,000: their
// default tokenizer is data/llama2_tokenizer.json) and "qwen3-0.6b" (data/qwen3_tokenizer.json, the Qwen3
// chat template).
LlamaConfig preset_config(const std::string& name);
// An HF config.json for `c` (what transformers' from_pretrained reads: LlamaForCausalLM or Qwen3ForCausalLM).
std::string config_json(const LlamaConfig& c);

// RoPE inverse frequencies (head_dim/2 of them), with llama3 scaling when configured, as HF computes them.
std::vector<float> rope_inv_freq(const LlamaConfig& c);
// RoPE's tables [positions, head_dim/2]: angle = p * inv_freq[i]; cos and sin rounded to bf16 as HF's are.
void rope_tables(const LlamaConfig& c, int positions, std::vector<float>& cos, std::vector<float>& sin);

struct TensorSpec {
    std::string name;  // HF name, e.g. model.layers.3.self_attn.q_proj.weight
    std::vector<int64_t> shape;
    int64_t numel() const;
};

// ---------------------------------------------------------------------------------------------- the layer
// The tensors a decoder layer may have, in HF's order. This table is the one description of a layer:
// names, shapes, offsets inside the layer's unit and the views the kernels use all derive from it. A
// family's layer has the rows its flags select (q_norm and k_norm only with qk_norm).
//   tensor                           shape        D = hidden, Q = heads*head_dim, KV = kv_heads*head_dim,
//   input_layernorm.weight           [D]          F = intermediate, Dh = head_dim
//   self_attn.q_proj.weight          [Q, D]
//   self_attn.k_proj.weight          [KV, D]
//   self_attn.v_proj.weight          [KV, D]
//   self_attn.o_proj.weight          [D, Q]
//   self_attn.q_norm.weight          [Dh]         qk_norm only (Qwen3): shared by every head of q
//   self_attn.k_norm.weight          [Dh]         qk_norm only: shared by every head of k
//   post_attention_layernorm.weight  [D]
//   mlp.gate_proj.weight             [F, D]
//   mlp.up_proj.weight               [F, D]
//   mlp.down_proj.weight             [D, F]
// (LayerTensor, the table's rows, is declared above LlamaConfig, whose row_pad it indexes.)
const char* layer_tensor_name(LayerTensor t);                                 // "self_attn.q_proj.weight"
std::vector<int64_t> layer_tensor_shape(const LlamaConfig& c, LayerTensor t);  // {Q, D}
std::vector<LayerTensor> layer_tensors(const LlamaConfig& c);                 // the rows c's layers have, in order
int64_t layer_tensor_offset(const LlamaConfig& c, LayerTensor t);              // inside a layer unit; -1: c has none

// ---------------------------------------------------------------------------------------------- units
// The model's parameters in units, the pieces ZeRO gathers one at a time:
//   unit 0          model.embed_tokens.weight (also the lm_head when tied)
//   units 1..L      the tensors of decoder layer u-1 (layer_tensors), in LayerTensor order
//   unit L+1        model.norm.weight (+ lm_head.weight when untied)
// Units in order list every parameter in HF's order. Inside a unit's flat buffer each tensor starts at an
// offset aligned to kAlign elements (16 bytes of bf16), so every pointer a matrix product receives is
// aligned; the gaps are zero and belong to no tensor.
constexpr int64_t kAlign = 8;
inline int64_t align_up(int64_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

// Where element e of a row-major tensor with rows of `cols` sits when each row is followed by `pad` elements.
inline int64_t row_place(int64_t e, int64_t cols, int64_t pad) { return pad ? e / cols * (cols + pad) + e % cols : e; }

// A tensor's place in its unit: element e of the tensor sits at offset + row_place(e, cols, pad); without pad
// its elements are contiguous from offset.
struct UnitTensor {
    TensorSpec spec;
    int64_t offset;   // first element inside the unit's flat buffer
    int64_t pad = 0;  // elements after each row that belong to no tensor (LlamaConfig::row_pad)
    int64_t cols() const { return spec.shape.back(); }
    int64_t span() const { return spec.numel() / cols() * (cols() + pad); }  // unit elements it covers
    int64_t at(int64_t e) const { return offset + row_place(e, cols(), pad); }
    // The first tensor element at or after unit element `x`: elements [first(lo), first(hi)) lie in [lo, hi).
    int64_t first(int64_t x) const;
};
struct UnitLayout {
    std::vector<UnitTensor> tensors;
    int64_t numel = 0;  // the unit's flat size, gaps included
};
int num_units(const LlamaConfig& c);
UnitLayout unit_layout(const LlamaConfig& c, int unit);
// Every parameter of the model by HF name and shape, in HF order (lm_head only when untied).
std::vector<TensorSpec> parameter_specs(const LlamaConfig& c);

// Fails, naming the file and tensor, unless the weights hold every parameter of `c` with its shape and a
// float dtype, and nothing else (HF's rotary_emb.inv_freq buffers and a tied lm_head are allowed). Reads
// only the headers: the dry run and the GPU path check the same way before any weight is read.
class SafetensorsReader;
void check_model_weights(const SafetensorsReader& weights, const LlamaConfig& c);
