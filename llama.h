// llama.h — the Llama model: its configuration (HF config.json or a named preset), its parameters by HF
// name and shape, and safetensors files. Knows nothing of NCCL, MPI or where weights live.
#pragma once
#include <cstdint>
#include <map>
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
// Named shapes for random initialisation: "tiny" (the default base) and "llama-3.2-1b".
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
// Every parameter of the model by HF name and shape, in HF order (lm_head only when untied).
std::vector<TensorSpec> parameter_specs(const LlamaConfig& c);

// ---------------------------------------------------------------------------------------------- safetensors
// File layout: u64 little-endian header length N, N bytes of JSON {name: {"dtype","shape","data_offsets"}},
// then the raw little-endian tensor bytes.
struct SafeTensor {
    std::string name, dtype, file;  // dtype: "BF16", "F16", "F32", ...
    std::vector<int64_t> shape;
    uint64_t offset = 0, bytes = 0;  // absolute offset in `file`
};

// The tensors of a model directory: model.safetensors, or shards listed in model.safetensors.index.json
// (or any *.safetensors there). Every header is checked against its file's size.
class SafetensorsReader {
  public:
    explicit SafetensorsReader(const std::string& path);  // a directory or one .safetensors file
    const SafeTensor* find(const std::string& name) const;
    const std::map<std::string, SafeTensor>& tensors() const { return tensors_; }
    // Reads `name` as fp32 values (converting BF16/F16/F32), checking the shape. Fails naming file and tensor.
    std::vector<float> read_float(const std::string& name, const std::vector<int64_t>& shape) const;

  private:
    void add_file(const std::string& file);
    std::string where_;
    std::map<std::string, SafeTensor> tensors_;
};

struct TensorToWrite {
    std::string name, dtype;  // "BF16" or "F32"
    std::vector<int64_t> shape;
    const void* data;  // host memory, numel * dtype size bytes
};
// Writes a .safetensors file (atomically: to PATH.tmp, then renamed).
void write_safetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

std::string shape_string(const std::vector<int64_t>& shape);  // "[2048, 512]"
