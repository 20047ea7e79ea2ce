// support/llama_config.cpp — the model's configuration: HF config.json (transformers 4 and 5 spellings), the named
// presets, RoPE frequencies, and the parameters by HF name and shape grouped into units (llama_config.h).
#include "support/llama_config.h"

#include <cmath>
#include <cstdio>

#include "support/common.h"
#include "support/json.h"

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

int int_field(const Json& j, const char* key, const std::string& path, int fallback, bool required) {
    const Json* v = j.find(key);
    if (!v || v->type == Json::Null) {
        if (required) fail(path + ": missing field \"" + key + "\"");
        return fallback;
    }
    if (!v->is_int() || v->integer <= 0 || v->integer > (1LL << 31) - 1)
        fail(path + ": field \"" + key + "\" must be a positive whole number");
    return int(v->integer);
}

float real_field(const Json& j, const char* key, const std::string& path, float fallback) {
    const Json* v = j.find(key);
    if (!v || v->type == Json::Null) return fallback;
    if (v->type != Json::Number || !(v->number > 0)) fail(path + ": field \"" + key + "\" must be a positive number");
    return float(v->number);
}

void validate(const LlamaConfig& c, const std::string& where) {
    if (c.num_attention_heads % c.num_key_value_heads != 0)
        fail(where + ": num_attention_heads (" + std::to_string(c.num_attention_heads) +
             ") must be a multiple of num_key_value_heads (" + std::to_string(c.num_key_value_heads) + ")");
    if (c.head_dim % 2 != 0 || c.head_dim > 256) fail(where + ": head_dim must be even and at most 256");
    if (c.rope_llama3 && !(c.rope_high_freq_factor > c.rope_low_freq_factor))
        fail(where + ": rope_scaling high_freq_factor must exceed low_freq_factor");
}

}  // namespace

LlamaConfig load_config(const std::string& path) {
    Json j = read_json_file(path);
    if (j.type != Json::Object) fail(path + ": not a config.json (expected a JSON object)");
    const Json* type = j.find("model_type");
    if (!type || !type->is_string() || type->string != "llama")
        fail(path + ": model_type must be \"llama\"" + (type && type->is_string() ? ", not \"" + type->string + "\"" : ""));
    if (const Json* act = j.find("hidden_act"); act && (!act->is_string() || act->string != "silu"))
        fail(path + ": hidden_act must be \"silu\" (Llama's SwiGLU)");
    for (const char* bias : {"attention_bias", "mlp_bias"})
        if (const Json* b = j.find(bias); b && b->type == Json::Bool && b->boolean)
            fail(path + ": " + bias + " is true; Llama layers have no biases");
    LlamaConfig c;
    c.name = path;
    c.hidden_size = int_field(j, "hidden_size", path, 0, true);
    c.intermediate_size = int_field(j, "intermediate_size", path, 0, true);
    c.num_hidden_layers = int_field(j, "num_hidden_layers", path, 0, true);
    c.num_attention_heads = int_field(j, "num_attention_heads", path, 0, true);
    c.num_key_value_heads = int_field(j, "num_key_value_heads", path, c.num_attention_heads, false);
    c.head_dim = int_field(j, "head_dim", path, c.hidden_size / c.num_attention_heads, false);
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
    if (const Json* tie = j.find("tie_word_embeddings"); tie && tie->type == Json::Bool) c.tie_word_embeddings = tie->boolean;
    c.bos_token_id = int_field(j, "bos_token_id", path, 128000, false);
    if (const Json* eos = j.find("eos_token_id"); eos && eos->type != Json::Null) {
        c.eos_token_ids.clear();
        if (eos->is_int()) c.eos_token_ids.push_back(int(eos->integer));
        else if (eos->type == Json::Array)
            for (const Json& e : eos->array) {
                if (!e.is_int()) fail(path + ": eos_token_id must hold whole numbers");
                c.eos_token_ids.push_back(int(e.integer));
            }
        else fail(path + ": eos_token_id must be a number or a list of numbers");
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
    } else if (name == "llama-2-7b" || name == "llama-2-13b") {  // meta-llama/Llama-2-7b-hf's and -13b-hf's shapes
        bool big = name == "llama-2-13b";
        c.vocab_size = 32000, c.rope_theta = 10000.0f, c.rope_llama3 = false, c.tie_word_embeddings = false;
        c.bos_token_id = 1, c.eos_token_ids = {2};
        c.hidden_size = big ? 5120 : 4096, c.intermediate_size = big ? 13824 : 11008, c.num_hidden_layers = big ? 40 : 32;
        c.num_attention_heads = c.num_key_value_heads = big ? 40 : 32, c.head_dim = 128;
        c.max_position_embeddings = 4096;
    } else {
        fail("unknown preset \"" + name + "\" (--preset: tiny, llama-3.2-1b, llama-2-7b or llama-2-13b)");
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
    std::snprintf(buf, sizeof buf,
                  "{\n  \"architectures\": [\"LlamaForCausalLM\"],\n  \"model_type\": \"llama\",\n"
                  "  \"hidden_size\": %d,\n  \"intermediate_size\": %d,\n  \"num_hidden_layers\": %d,\n"
                  "  \"num_attention_heads\": %d,\n  \"num_key_value_heads\": %d,\n  \"head_dim\": %d,\n"
                  "  \"vocab_size\": %d,\n  \"max_position_embeddings\": %d,\n  \"rms_norm_eps\": %.9g,\n"
                  "  \"rope_theta\": %.9g,\n  \"rope_scaling\": %s,\n  \"tie_word_embeddings\": %s,\n"
                  "  \"hidden_act\": \"silu\",\n  \"attention_bias\": false,\n  \"mlp_bias\": false,\n"
                  "  \"bos_token_id\": %d,\n  \"eos_token_id\": %s,\n  \"torch_dtype\": \"bfloat16\"\n}\n",
                  c.hidden_size, c.intermediate_size, c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads,
                  c.head_dim, c.vocab_size, c.max_position_embeddings, c.rms_norm_eps, c.rope_theta, rope.c_str(),
                  c.tie_word_embeddings ? "true" : "false", c.bos_token_id, eos.c_str());
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

namespace {

const char* kLayerTensorNames[kLayerTensors] = {
    "input_layernorm.weight", "self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
    "self_attn.o_proj.weight", "post_attention_layernorm.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight",
    "mlp.down_proj.weight"};

}  // namespace

const char* layer_tensor_name(LayerTensor t) { return kLayerTensorNames[t]; }

std::vector<int64_t> layer_tensor_shape(const LlamaConfig& c, LayerTensor t) {
    int64_t D = c.hidden_size, F = c.intermediate_size, Q = int64_t(c.num_attention_heads) * c.head_dim,
            KV = int64_t(c.num_key_value_heads) * c.head_dim;
    switch (t) {
        case kInputNorm: case kPostNorm: return {D};
        case kQProj: return {Q, D};
        case kKProj: case kVProj: return {KV, D};
        case kOProj: return {D, Q};
        case kGateProj: case kUpProj: return {F, D};
        case kDownProj: return {D, F};
        default: return {};
    }
}

int num_units(const LlamaConfig& c) { return c.num_hidden_layers + 2; }

UnitLayout unit_layout(const LlamaConfig& c, int unit) {
    UnitLayout u;
    auto add = [&](const std::string& name, std::vector<int64_t> shape) {
        u.numel = align_up(u.numel);
        u.tensors.push_back({{name, std::move(shape)}, u.numel});
        u.numel += u.tensors.back().spec.numel();
    };
    int L = c.num_hidden_layers;
    if (unit == 0) {
        add("model.embed_tokens.weight", {c.vocab_size, c.hidden_size});
    } else if (unit <= L) {
        std::string prefix = "model.layers." + std::to_string(unit - 1) + ".";
        for (int t = 0; t < kLayerTensors; ++t) add(prefix + kLayerTensorNames[t], layer_tensor_shape(c, LayerTensor(t)));
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
