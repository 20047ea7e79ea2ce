// llama.cu — the Llama model (Touvron et al. 2023; HF's LlamaForCausalLM):
//   h_0 = embed[ids]
//   for each layer l:  a = h + o_proj(attn(rope(q_proj(n)), rope(k_proj(n)), v_proj(n))),  n = rmsnorm(h)
//                      h = a + down_proj(silu(gate_proj(m)) * up_proj(m)),                  m = rmsnorm(a)
//   logits = lm_head(rmsnorm(h_L))   (lm_head = embed when tied);  loss = mean CE over labels != -100
// This part: configuration, parameter names and shapes, safetensors files.
#include "llama.h"

#include <sys/stat.h>
#include <dirent.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>

#include "common.h"
#include "data.h"

// ================================================================================================ config

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
        c.max_position_embeddings = 4096;
    } else if (name == "llama-3.2-1b") {  // meta-llama/Llama-3.2-1B(-Instruct)'s shape
        c.hidden_size = 2048, c.intermediate_size = 8192, c.num_hidden_layers = 16;
        c.num_attention_heads = 32, c.num_key_value_heads = 8, c.head_dim = 64;
        c.max_position_embeddings = 131072;
    } else {
        fail("unknown preset \"" + name + "\" (--preset: tiny or llama-3.2-1b)");
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

std::vector<TensorSpec> parameter_specs(const LlamaConfig& c) {
    int64_t d = c.hidden_size, f = c.intermediate_size, q = int64_t(c.num_attention_heads) * c.head_dim,
            kv = int64_t(c.num_key_value_heads) * c.head_dim;
    std::vector<TensorSpec> specs{{"model.embed_tokens.weight", {c.vocab_size, d}}};
    for (int l = 0; l < c.num_hidden_layers; ++l) {
        std::string p = "model.layers." + std::to_string(l) + ".";
        specs.push_back({p + "input_layernorm.weight", {d}});
        specs.push_back({p + "self_attn.q_proj.weight", {q, d}});
        specs.push_back({p + "self_attn.k_proj.weight", {kv, d}});
        specs.push_back({p + "self_attn.v_proj.weight", {kv, d}});
        specs.push_back({p + "self_attn.o_proj.weight", {d, q}});
        specs.push_back({p + "post_attention_layernorm.weight", {d}});
        specs.push_back({p + "mlp.gate_proj.weight", {f, d}});
        specs.push_back({p + "mlp.up_proj.weight", {f, d}});
        specs.push_back({p + "mlp.down_proj.weight", {d, f}});
    }
    specs.push_back({"model.norm.weight", {d}});
    if (!c.tie_word_embeddings) specs.push_back({"lm_head.weight", {c.vocab_size, d}});
    return specs;
}

std::string shape_string(const std::vector<int64_t>& shape) {
    std::string s = "[";
    for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
    return s + "]";
}

// ================================================================================================ safetensors

namespace {

size_t dtype_size(const std::string& dtype) {
    if (dtype == "F32" || dtype == "I32") return 4;
    if (dtype == "BF16" || dtype == "F16" || dtype == "I16") return 2;
    if (dtype == "F64" || dtype == "I64") return 8;
    if (dtype == "U8" || dtype == "I8" || dtype == "BOOL" || dtype == "F8_E4M3" || dtype == "F8_E5M2") return 1;
    return 0;
}

float half_to_float(uint16_t h) {
    uint32_t sign = uint32_t(h >> 15) << 31, exp = (h >> 10) & 0x1F, mant = h & 0x3FF, bits;
    if (exp == 0) {
        if (mant == 0) bits = sign;
        else {  // subnormal: renormalise
            int e = -1;
            do { ++e, mant <<= 1; } while (!(mant & 0x400));
            bits = sign | uint32_t(127 - 15 - e) << 23 | (mant & 0x3FF) << 13;
        }
    } else if (exp == 31) {
        bits = sign | 0x7F800000u | mant << 13;
    } else {
        bits = sign | (exp + 127 - 15) << 23 | mant << 13;
    }
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
}

bool is_dir(const std::string& path) {
    struct stat st;
    return stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

}  // namespace

SafetensorsReader::SafetensorsReader(const std::string& path) : where_(path) {
    if (!is_dir(path)) {
        add_file(path);
        return;
    }
    std::string index = path + "/model.safetensors.index.json";
    struct stat st;
    if (stat(index.c_str(), &st) == 0) {  // sharded: weight_map names each tensor's file
        Json j = read_json_file(index);
        const Json* map = j.find("weight_map");
        if (!map || map->type != Json::Object) fail(index + ": missing object \"weight_map\"");
        std::vector<std::string> files;
        for (const auto& [name, file] : map->object) {
            if (!file.is_string()) fail(index + ": weight_map entry " + name + " must name a file");
            if (std::find(files.begin(), files.end(), file.string) == files.end()) files.push_back(file.string);
        }
        for (const std::string& f : files) add_file(path + "/" + f);
        for (const auto& [name, file] : map->object)
            if (!tensors_.count(name)) fail(index + ": tensor " + name + " is not in " + file.string);
        return;
    }
    std::vector<std::string> files;
    if (DIR* d = opendir(path.c_str())) {
        while (dirent* e = readdir(d)) {
            std::string n = e->d_name;
            if (n.size() > 12 && n.compare(n.size() - 12, 12, ".safetensors") == 0 && n.rfind("adapter_", 0) != 0)
                files.push_back(path + "/" + n);
        }
        closedir(d);
    }
    if (files.empty()) fail("no *.safetensors weights in " + path);
    std::sort(files.begin(), files.end());
    for (const std::string& f : files) add_file(f);
}

void SafetensorsReader::add_file(const std::string& file) {
    std::ifstream in(file, std::ios::binary);
    if (!in) fail("cannot read " + file + ": " + std::strerror(errno));
    in.seekg(0, std::ios::end);
    uint64_t size = uint64_t(in.tellg());
    in.seekg(0);
    uint64_t n = 0;
    if (size < 8 || !in.read(reinterpret_cast<char*>(&n), 8)) fail(file + ": not a safetensors file (too short)");
    if (n > size - 8 || n > (100u << 20)) fail(file + ": not a safetensors file (header length " + std::to_string(n) + ")");
    std::string header(n, '\0');
    in.read(header.data(), std::streamsize(n));
    Json j = parse_json(header, file + " (header)");
    if (j.type != Json::Object) fail(file + ": the safetensors header is not a JSON object");
    uint64_t data_start = 8 + n;
    for (const auto& [name, info] : j.object) {
        if (name == "__metadata__") continue;
        SafeTensor t;
        t.name = name, t.file = file;
        const Json* dtype = info.find("dtype");
        const Json* shape = info.find("shape");
        const Json* offsets = info.find("data_offsets");
        if (!dtype || !dtype->is_string() || !shape || shape->type != Json::Array || !offsets ||
            offsets->type != Json::Array || offsets->array.size() != 2 || !offsets->array[0].is_int() ||
            !offsets->array[1].is_int())
            fail(file + ": tensor " + name + " has a malformed header entry");
        t.dtype = dtype->string;
        uint64_t numel = 1;
        for (const Json& d : shape->array) {
            if (!d.is_int() || d.integer < 0) fail(file + ": tensor " + name + " has a bad shape");
            t.shape.push_back(d.integer);
            numel *= uint64_t(d.integer);
        }
        uint64_t begin = uint64_t(offsets->array[0].integer), end = uint64_t(offsets->array[1].integer);
        t.offset = data_start + begin, t.bytes = end - begin;
        size_t es = dtype_size(t.dtype);
        if (end < begin || data_start + end > size)
            fail(file + ": tensor " + name + " lies beyond the end of the file (truncated download?)");
        if (es && numel * es != t.bytes)
            fail(file + ": tensor " + name + " has " + std::to_string(t.bytes) + " bytes, its shape and dtype need " +
                 std::to_string(numel * es));
        if (tensors_.count(name)) fail(file + ": tensor " + name + " is also in " + tensors_[name].file);
        tensors_[name] = t;
    }
}

const SafeTensor* SafetensorsReader::find(const std::string& name) const {
    auto it = tensors_.find(name);
    return it == tensors_.end() ? nullptr : &it->second;
}

std::vector<float> SafetensorsReader::read_float(const std::string& name, const std::vector<int64_t>& shape) const {
    const SafeTensor* t = find(name);
    if (!t) fail(where_ + ": missing tensor " + name);
    if (t->shape != shape)
        fail(t->file + ": tensor " + name + " has shape " + shape_string(t->shape) + ", the config needs " + shape_string(shape));
    if (t->dtype != "BF16" && t->dtype != "F16" && t->dtype != "F32")
        fail(t->file + ": tensor " + name + " has dtype " + t->dtype + " (supported: BF16, F16, F32)");
    std::string raw(t->bytes, '\0');
    std::ifstream in(t->file, std::ios::binary);
    in.seekg(std::streamoff(t->offset));
    if (!in.read(raw.data(), std::streamsize(raw.size()))) fail(t->file + ": cannot read tensor " + name);
    size_t n = t->bytes / dtype_size(t->dtype);
    std::vector<float> out(n);
    for (size_t i = 0; i < n; ++i) {
        if (t->dtype == "F32") std::memcpy(&out[i], raw.data() + 4 * i, 4);
        else {
            uint16_t h;
            std::memcpy(&h, raw.data() + 2 * i, 2);
            out[i] = t->dtype == "BF16" ? bf16_to_float(h) : half_to_float(h);
        }
    }
    return out;
}

void write_safetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata) {
    std::string header = "{";
    if (!metadata.empty()) {
        header += "\"__metadata__\": {";
        size_t i = 0;
        for (const auto& [k, v] : metadata) header += (i++ ? ", " : "") + json_quote(k) + ": " + json_quote(v);
        header += "}";
    }
    uint64_t offset = 0;
    for (const TensorToWrite& t : tensors) {
        size_t es = dtype_size(t.dtype);
        if (!es) fail("cannot write tensor " + t.name + " of dtype " + t.dtype);
        uint64_t numel = 1;
        for (int64_t d : t.shape) numel *= uint64_t(d);
        header += std::string(header.size() > 1 ? ", " : "") + json_quote(t.name) + ": {\"dtype\": \"" + t.dtype +
                  "\", \"shape\": " + shape_string(t.shape) + ", \"data_offsets\": [" + std::to_string(offset) + ", " +
                  std::to_string(offset + numel * es) + "]}";
        offset += numel * es;
    }
    header += "}";
    while (header.size() % 8) header += ' ';  // keeps the data 8-byte aligned, as the reference writer does
    std::string tmp = path + ".tmp";
    {
        std::ofstream out(tmp, std::ios::binary);
        if (!out) fail("cannot write " + tmp + ": " + std::strerror(errno));
        uint64_t n = header.size();
        out.write(reinterpret_cast<const char*>(&n), 8);
        out.write(header.data(), std::streamsize(n));
        for (const TensorToWrite& t : tensors) {
            uint64_t numel = 1;
            for (int64_t d : t.shape) numel *= uint64_t(d);
            out.write(static_cast<const char*>(t.data), std::streamsize(numel * dtype_size(t.dtype)));
        }
        if (!out) fail("cannot write " + tmp + ": disk full?");
    }
    if (std::rename(tmp.c_str(), path.c_str()) != 0) fail("cannot rename " + tmp + " to " + path + ": " + std::strerror(errno));
}
