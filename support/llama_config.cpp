// support/llama_config.cpp — the model's configuration: HF config.json (transformers 4 and 5 spellings) of the
// families in kFamilies, the named presets, RoPE frequencies, and the parameters by HF name and shape grouped
// into units (llama_config.h).
#include "support/llama_config.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "support/common.h"
#include "support/json.h"
#include "support/safetensors.h"

int64_t TensorSpec::numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
}

int64_t LlamaConfig::num_parameters() const {
    int64_t n = 0;
    for (const TensorSpec& t : parameter_specs(*this)) n += t.numel();
    return n;
}

namespace {

// The families config.json may name, and how each differs from Llama. A new family is a row here, and a
// flag in LlamaConfig where it differs in a new way (docs/ADDING_A_MODEL.md).
struct ModelFamily {
    const char* model_type;    // config.json "model_type"
    const char* architecture;  // config.json "architectures" on export: the class transformers builds
    bool qk_norm;              // q_norm, k_norm before RoPE
    int head_dim;              // head_dim when config.json has none (0: hidden_size / num_attention_heads), as HF's
};
constexpr ModelFamily kFamilies[] = {
    {"llama", "LlamaForCausalLM", false, 0},
    {"qwen3", "Qwen3ForCausalLM", true, 128},
};

const ModelFamily* find_family(const std::string& model_type) {
    for (const ModelFamily& f : kFamilies)
        if (model_type == f.model_type) return &f;
    return nullptr;
}

// The largest value each size field may take: well above any Llama released (Llama 3.1 405B: hidden 16,384,
// intermediate 53,248, 126 layers, 128 heads, vocabulary 128,256, context 131,072), and small enough that
// every product of them the model computes fits 64 bits and nothing absurd is allocated before a check.
struct FieldLimit {
    const char* key;
    int64_t max;
};
constexpr FieldLimit kLimits[] = {
    {"hidden_size", 1 << 16}, {"intermediate_size", 1 << 18}, {"num_hidden_layers", 1 << 10}, {"num_attention_heads", 1 << 10},
    {"num_key_value_heads", 1 << 10}, {"head_dim", 256}, {"vocab_size", 1 << 24}, {"max_position_embeddings", 1 << 24},
    {"original_max_position_embeddings", 1 << 24}};

int int_field(const Json& j, const char* key, const std::string& path, int fallback, bool required) {
    const Json* v = j.find(key);
    if (!v || v->type == Json::Null) {
        if (required) fail(path + ": missing field \"" + key + "\"");
        return fallback;
    }
    int64_t max = (1LL << 31) - 1;
    for (const FieldLimit& l : kLimits)
        if (std::string(key) == l.key) max = l.max;
    if (!v->is_int() || v->integer <= 0) fail(path + ": field \"" + key + "\" must be a positive whole number");
    if (v->integer > max) fail(path + ": field \"" + key + "\" is " + std::to_string(v->integer) + ", more than the limit " + thousands(max));
    return int(v->integer);
}

float real_field(const Json& j, const char* key, const std::string& path, float fallback) {
    const Json* v = j.find(key);
    if (!v || v->type == Json::Null) return fallback;
    if (v->type != Json::Number || !(v->number > 0) || !std::isfinite(float(v->number)) || float(v->number) == 0)
        fail(path + ": field \"" + key + "\" must be a positive number (within a 32-bit float)");
    return float(v->number);
}

// Sliding-window attention (Qwen3's use_sliding_window, transformers 5's layer_types) is refused: every layer
// here attends to its whole document. As HF decides it: layer_types when given, else layers from
// max_window_layers on slide when use_sliding_window is true and sliding_window is set.
void refuse_sliding_window(const Json& j, const LlamaConfig& c, const std::string& path) {
    if (const Json* types = j.find("layer_types"); types && types->type == Json::Array) {
        for (const Json& t : types->array)
            if (!t.is_string() || t.string != "full_attention")
                fail(path + ": layer_types must all be \"full_attention\" (sliding-window attention is not supported)");
        return;
    }
    const Json* use = j.find("use_sliding_window");
    const Json* window = j.find("sliding_window");
    if (!use || use->type != Json::Bool || !use->boolean || !window || window->type == Json::Null) return;
    const Json* from = j.find("max_window_layers");  // HF's default: 28
    if ((from && (!from->is_int() || from->integer < c.num_hidden_layers)) || (!from && c.num_hidden_layers > 28))
        fail(path + ": use_sliding_window is true; sliding-window attention is not supported (set it to false)");
}

void validate(const LlamaConfig& c, const std::string& where) {
    if (c.num_attention_heads % c.num_key_value_heads != 0)
        fail(where + ": num_attention_heads (" + std::to_string(c.num_attention_heads) +
             ") must be a multiple of num_key_value_heads (" + std::to_string(c.num_key_value_heads) + ")");
    if (c.head_dim < 2 || c.head_dim % 2 != 0 || c.head_dim > 256)
        fail(where + ": head_dim is " + std::to_string(c.head_dim) + (c.head_dim == 0 ? " (hidden_size / num_attention_heads)" : "") +
             "; it must be even, from 2 to 256");
    if (c.rope_llama3 && !(c.rope_high_freq_factor > c.rope_low_freq_factor))
        fail(where + ": rope_scaling high_freq_factor must exceed low_freq_factor");
}

// A special token the file names must be a row of the embedding (the data and generation feed it).
void check_token_id(int id, const char* key, const LlamaConfig& c, const std::string& where) {
    if (id < 0 || id >= c.vocab_size)
        fail(where + ": " + key + " " + std::to_string(id) + " is outside the vocabulary (vocab_size " + std::to_string(c.vocab_size) + ")");
}

}  // namespace

LlamaConfig load_config(const std::string& path) {
    Json j = read_json_file(path);
    if (j.type != Json::Object) fail(path + ": not a config.json (expected a JSON object)");
    const Json* type = j.find("model_type");
    const ModelFamily* family = type && type->is_string() ? find_family(type->string) : nullptr;
    if (!family) {
        std::string known;
        for (const ModelFamily& f : kFamilies) known += std::string(known.empty() ? "\"" : ", \"") + f.model_type + "\"";
        fail(path + ": model_type must be one of " + known + (type && type->is_string() ? ", not \"" + type->string + "\"" : ""));
    }
    if (const Json* act = j.find("hidden_act"); act && (!act->is_string() || act->string != "silu"))
        fail(path + ": hidden_act must be \"silu\" (Llama's SwiGLU)");
    for (const char* bias : {"attention_bias", "mlp_bias"})
        if (const Json* b = j.find(bias); b && b->type == Json::Bool && b->boolean)
            fail(path + ": " + bias + " is true; layers with biases are not supported (Llama and Qwen3 have none)");
    LlamaConfig c;
    c.name = path;
    c.model_type = family->model_type;
    c.qk_norm = family->qk_norm;
    c.hidden_size = int_field(j, "hidden_size", path, 0, true);
    c.intermediate_size = int_field(j, "intermediate_size", path, 0, true);
    c.num_hidden_layers = int_field(j, "num_hidden_layers", path, 0, true);
    c.num_attention_heads = int_field(j, "num_attention_heads", path, 0, true);
    c.num_key_value_heads = int_field(j, "num_key_value_heads", path, c.num_attention_heads, false);
    int head_dim = family->head_dim ? family->head_dim : c.hidden_size / c.num_attention_heads;  // when config.json has none
    c.head_dim = int_field(j, "head_dim", path, head_dim, false);
    c.vocab_size = int_field(j, "vocab_size", path, 0, true);
    c.max_position_embeddings = int_field(j, "max_position_embeddings", path, 2048, false);
    c.rms_norm_eps = real_field(j, "rms_norm_eps", path, 1e-6f);
    c.rope_theta = real_field(j, "rope_theta", path, 10000.0f);
    // RoPE settings: transformers 4 writes rope_theta + rope_scaling, transformers 5 rope_parameters.
    const Json* rope = j.find("rope_parameters");
    if (!rope || rope->type == Json::Null) rope = j.find("rope_scaling");
    if (rope && rope->type == Json::Object) {
        c.rope_theta = real_field(*rope, "rope_theta", path, c.rope_theta);
        const Json* kind = rope->find("rope_type");
        if (!kind) kind = rope->find("type");
        std::string k = kind && kind->is_string() ? kind->string : "default";
        if (k == "llama3") {
            c.rope_llama3 = true;
            c.rope_factor = real_field(*rope, "factor", path, 8.0f);
            c.rope_low_freq_factor = real_field(*rope, "low_freq_factor", path, 1.0f);
            c.rope_high_freq_factor = real_field(*rope, "high_freq_factor", path, 4.0f);
            c.rope_original_max_position = int_field(*rope, "original_max_position_embeddings", path, 8192, false);
        } else if (k != "default") {
            fail(path + ": rope type \"" + k + "\" is not supported (only llama3 scaling or none)");
        }
    } else if (rope && rope->type != Json::Null) {
        fail(path + ": rope_scaling must be an object or null");
    }
    refuse_sliding_window(j, c, path);
    if (const Json* tie = j.find("tie_word_embeddings"); tie && tie->type == Json::Bool) c.tie_word_embeddings = tie->boolean;
    // Absent ids: HF's LlamaConfig defaults (1, 2) for "llama"; Qwen3's config has none of its own (these stand).
    const bool llama = c.model_type == "llama";
    if (llama) c.eos_token_ids = {2};
    c.bos_token_id = int_field(j, "bos_token_id", path, llama ? 1 : 128000, false);
    if (const Json* bos = j.find("bos_token_id"); bos && bos->type != Json::Null) check_token_id(c.bos_token_id, "bos_token_id", c, path);
    if (const Json* eos = j.find("eos_token_id"); eos && eos->type != Json::Null) {
        c.eos_token_ids.clear();
        if (!eos->is_int() && eos->type != Json::Array) fail(path + ": eos_token_id must be a number or a list of numbers");
        for (const Json& e : eos->is_int() ? std::vector<Json>{*eos} : eos->array) {
            if (!e.is_int() || e.integer < 0 || e.integer > (1LL << 31) - 1) fail(path + ": eos_token_id must hold token ids (whole numbers >= 0)");
            c.eos_token_ids.push_back(int(e.integer));
        }
        for (int id : c.eos_token_ids) check_token_id(id, "eos_token_id", c, path);
    }
    validate(c, path);
    return c;
}

LlamaConfig preset_config(const std::string& name) {
    LlamaConfig c;
    c.name = name;
    c.vocab_size = 128256;
    c.rms_norm_eps = 1e-5f;
    c.rope_theta = 500000.0f;
    c.rope_llama3 = true, c.rope_factor = 32, c.rope_low_freq_factor = 1, c.rope_high_freq_factor = 4;
    c.rope_original_max_position = 8192;
    c.tie_word_embeddings = true;
    c.bos_token_id = 128000;
    c.eos_token_ids = {128001, 128008, 128009};
    if (name == "tiny") {  // ~39M parameters, most of them the (tied) embedding
        c.hidden_size = 256, c.intermediate_size = 768, c.num_hidden_layers = 8;
        c.num_attention_heads = 4, c.num_key_value_heads = 2, c.head_dim = 64;
        c.max_position_embeddings = 8192;
    } else if (name == "llama-3.2-1b") {  // meta-llama/Llama-3.2-1B(-Instruct)'s shape
        c.hidden_size = 2048, c.intermediate_size = 8192, c.num_hidden_layers = 16;
        c.num_attention_heads = 32, c.num_key_value_heads = 8, c.head_dim = 64;
        c.max_position_embeddings = 131072;
    } else if (name == "qwen3-0.6b") {  // Qwen/Qwen3-0.6B's shape: 16 heads of 128 over a hidden size of 1024
        c.model_type = "qwen3", c.qk_norm = true;
        c.hidden_size = 1024, c.intermediate_size = 3072, c.num_hidden_layers = 28;
        c.num_attention_heads = 16, c.num_key_value_heads = 8, c.head_dim = 128;
        c.vocab_size = 151936, c.max_position_embeddings = 40960;
        c.rms_norm_eps = 1e-6f, c.rope_theta = 1000000.0f, c.rope_llama3 = false;
        c.bos_token_id = 151643, c.eos_token_ids = {151645, 151643};
    } else if (name == "llama-3.1-8b" || name == "llama-3.1-70b") {  // meta-llama/Llama-3.1-8B / -70B(-Instruct)'s shapes
        bool big = name == "llama-3.1-70b";
        c.hidden_size = big ? 8192 : 4096, c.intermediate_size = big ? 28672 : 14336, c.num_hidden_layers = big ? 80 : 32;
        c.num_attention_heads = big ? 64 : 32, c.num_key_value_heads = 8, c.head_dim = 128;
        c.max_position_embeddings = 131072, c.rope_factor = 8, c.tie_word_embeddings = false;
    } else if (name == "llama-2-7b" || name == "llama-2-13b") {  // meta-llama/Llama-2-7b-hf's and -13b-hf's shapes
        bool big = name == "llama-2-13b";
        c.vocab_size = 32000, c.rope_theta = 10000.0f, c.rope_llama3 = false, c.tie_word_embeddings = false;
        c.bos_token_id = 1, c.eos_token_ids = {2};
        c.hidden_size = big ? 5120 : 4096, c.intermediate_size = big ? 13824 : 11008, c.num_hidden_layers = big ? 40 : 32;
        c.num_attention_heads = c.num_key_value_heads = big ? 40 : 32, c.head_dim = 128;
        c.max_position_embeddings = 4096;
    } else {
        fail("unknown preset \"" + name + "\" (--preset: tiny, llama-3.2-1b, llama-3.1-8b, llama-3.1-70b, llama-2-7b, llama-2-13b or qwen3-0.6b)");
    }
    return c;
}

std::string config_json(const LlamaConfig& c) {
    char buf[2048];
    std::string eos = c.eos_token_ids.size() == 1 ? std::to_string(c.eos_token_ids[0]) : "[";
    if (c.eos_token_ids.size() != 1) {
        for (size_t i = 0; i < c.eos_token_ids.size(); ++i) eos += (i ? ", " : "") + std::to_string(c.eos_token_ids[i]);
        eos += "]";
    }
    std::string rope = "null";
    if (c.rope_llama3) {
        std::snprintf(buf, sizeof buf,
                      "{\"rope_type\": \"llama3\", \"factor\": %.9g, \"low_freq_factor\": %.9g, \"high_freq_factor\": %.9g, "
                      "\"original_max_position_embeddings\": %d}",
                      c.rope_factor, c.rope_low_freq_factor, c.rope_high_freq_factor, c.rope_original_max_position);
        rope = buf;
    }
    // By family: the class transformers builds; Llama's config names mlp_bias, Qwen3's says that no layer slides.
    const ModelFamily* family = find_family(c.model_type);
    if (!family) fail("config_json: unknown model_type \"" + c.model_type + "\"");
    std::string extra = "  \"mlp_bias\": false,\n";
    if (c.model_type == "qwen3")
        extra = "  \"use_sliding_window\": false,\n  \"sliding_window\": null,\n  \"max_window_layers\": " +
                std::to_string(c.num_hidden_layers) + ",\n";
    std::snprintf(buf, sizeof buf,
                  "{\n  \"architectures\": [\"%s\"],\n  \"model_type\": \"%s\",\n"
                  "  \"hidden_size\": %d,\n  \"intermediate_size\": %d,\n  \"num_hidden_layers\": %d,\n"
                  "  \"num_attention_heads\": %d,\n  \"num_key_value_heads\": %d,\n  \"head_dim\": %d,\n"
                  "  \"vocab_size\": %d,\n  \"max_position_embeddings\": %d,\n  \"rms_norm_eps\": %.9g,\n"
                  "  \"rope_theta\": %.9g,\n  \"rope_scaling\": %s,\n  \"tie_word_embeddings\": %s,\n"
                  "  \"hidden_act\": \"silu\",\n  \"attention_bias\": false,\n%s"
                  "  \"bos_token_id\": %d,\n  \"eos_token_id\": %s,\n  \"torch_dtype\": \"bfloat16\"\n}\n",
                  family->architecture, family->model_type, c.hidden_size, c.intermediate_size, c.num_hidden_layers,
                  c.num_attention_heads, c.num_key_value_heads,
                  c.head_dim, c.vocab_size, c.max_position_embeddings, c.rms_norm_eps, c.rope_theta, rope.c_str(),
                  c.tie_word_embeddings ? "true" : "false", extra.c_str(), c.bos_token_id, eos.c_str());
    return buf;
}

std::vector<float> rope_inv_freq(const LlamaConfig& c) {
    int half = c.head_dim / 2;
    std::vector<float> inv(size_t(half), 0.0f);
    for (int i = 0; i < half; ++i) {
        float f = 1.0f / std::pow(c.rope_theta, float(2 * i) / float(c.head_dim));  // fp32, as HF
        if (c.rope_llama3) {
            // Wavelengths longer than original/low_freq_factor are slowed by `factor`; those shorter than
            // original/high_freq_factor are kept; in between, a linear blend of the two.
            float wavelen = 2.0f * float(M_PI) / f;
            float low_wavelen = float(c.rope_original_max_position) / c.rope_low_freq_factor;
            float high_wavelen = float(c.rope_original_max_position) / c.rope_high_freq_factor;
            if (wavelen > low_wavelen) {
                f = f / c.rope_factor;
            } else if (wavelen >= high_wavelen) {
                float smooth = (float(c.rope_original_max_position) / wavelen - c.rope_low_freq_factor) /
                               (c.rope_high_freq_factor - c.rope_low_freq_factor);
                f = (1 - smooth) * f / c.rope_factor + smooth * f;
            }
        }
        inv[size_t(i)] = f;
    }
    return inv;
}

void rope_tables(const LlamaConfig& c, int positions, std::vector<float>& cos, std::vector<float>& sin) {
    int half = c.head_dim / 2;
    std::vector<float> inv = rope_inv_freq(c);
    cos.assign(size_t(positions) * size_t(half), 0.0f), sin.assign(cos.size(), 0.0f);
    for (int p = 0; p < positions; ++p)
        for (int i = 0; i < half; ++i) {
            float angle = float(p) * inv[size_t(i)];
            cos[size_t(p) * half + i] = bf16_to_float(float_to_bf16(std::cos(angle)));
            sin[size_t(p) * half + i] = bf16_to_float(float_to_bf16(std::sin(angle)));
        }
}

namespace {

const char* kLayerTensorNames[kLayerTensors] = {
    "input_layernorm.weight",  "self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
    "self_attn.o_proj.weight", "self_attn.q_norm.weight", "self_attn.k_norm.weight", "post_attention_layernorm.weight",
    "mlp.gate_proj.weight",    "mlp.up_proj.weight",      "mlp.down_proj.weight"};

}  // namespace

const char* layer_tensor_name(LayerTensor t) { return kLayerTensorNames[t]; }

std::vector<int64_t> layer_tensor_shape(const LlamaConfig& c, LayerTensor t) {
    int64_t D = c.hidden_size, F = c.intermediate_size, Q = int64_t(c.num_attention_heads) * c.head_dim,
            KV = int64_t(c.num_key_value_heads) * c.head_dim;
    switch (t) {
        case kInputNorm: case kPostNorm: return {D};
        case kQNorm: case kKNorm: return {c.head_dim};
        case kQProj: return {Q, D};
        case kKProj: case kVProj: return {KV, D};
        case kOProj: return {D, Q};
        case kGateProj: case kUpProj: return {F, D};
        case kDownProj: return {D, F};
        default: return {};
    }
}

std::vector<LayerTensor> layer_tensors(const LlamaConfig& c) {
    std::vector<LayerTensor> rows;
    for (int t = 0; t < kLayerTensors; ++t)
        if (c.qk_norm || (t != kQNorm && t != kKNorm)) rows.push_back(LayerTensor(t));
    return rows;
}

int64_t layer_tensor_offset(const LlamaConfig& c, LayerTensor t) {
    std::vector<LayerTensor> rows = layer_tensors(c);
    UnitLayout layer = unit_layout(c, 1);
    for (size_t k = 0; k < rows.size(); ++k)
        if (rows[k] == t) return layer.tensors[k].offset;
    return -1;
}

int num_units(const LlamaConfig& c) { return c.num_hidden_layers + 2; }

int64_t UnitTensor::first(int64_t x) const {
    int64_t rel = x - offset, n = spec.numel();
    if (rel <= 0) return 0;
    if (!pad) return std::min(rel, n);
    int64_t row = rel / (cols() + pad), col = rel % (cols() + pad);
    return std::min(n, row * cols() + std::min(col, cols()));
}

UnitLayout unit_layout(const LlamaConfig& c, int unit) {
    UnitLayout u;
    auto add = [&](const std::string& name, std::vector<int64_t> shape, int64_t pad = 0) {
        u.numel = align_up(u.numel);
        u.tensors.push_back({{name, std::move(shape)}, u.numel, pad});
        u.numel += u.tensors.back().span();
    };
    int L = c.num_hidden_layers;
    if (unit == 0) {
        add("model.embed_tokens.weight", {c.vocab_size, c.hidden_size});
    } else if (unit <= L) {
        std::string prefix = "model.layers." + std::to_string(unit - 1) + ".";
        for (LayerTensor t : layer_tensors(c)) add(prefix + kLayerTensorNames[t], layer_tensor_shape(c, t), c.row_pad[t]);
    } else {
        add("model.norm.weight", {c.hidden_size});
        if (!c.tie_word_embeddings) add("lm_head.weight", {c.vocab_size, c.hidden_size});
    }
    return u;
}

std::vector<TensorSpec> parameter_specs(const LlamaConfig& c) {
    std::vector<TensorSpec> specs;
    for (int u = 0; u < num_units(c); ++u)
        for (const UnitTensor& t : unit_layout(c, u).tensors) specs.push_back(t.spec);
    return specs;
}

void check_model_weights(const SafetensorsReader& weights, const LlamaConfig& c) {
    std::vector<TensorSpec> specs = parameter_specs(c);
    for (const auto& [name, t] : weights.tensors()) {
        bool known = name.size() > 19 && name.compare(name.size() - 19, 19, "rotary_emb.inv_freq") == 0;  // a buffer, not a parameter
        known |= name == "lm_head.weight" && c.tie_word_embeddings;
        for (const TensorSpec& s : specs) known |= s.name == name;
        if (!known) fail(t.file + ": unexpected tensor " + name + " (not a parameter of this Llama config)");
    }
    for (const TensorSpec& s : specs) weights.checked(s.name, s.shape);
}
