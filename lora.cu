// lora.cu — LoRA adapters: layout, init, PEFT files and merging (see lora.h). The forward and backward
// products live with the projections they adapt (LlamaModel::group_forward/backward in llama.cu):
//   forward   u = x A^T,  y += s u B^T
//   backward  dB += s dy^T u,  du = s dy B,  dA += du^T x,  dx += du A
#include "lora.h"

#include <sys/stat.h>

#include <cmath>
#include <cstring>
#include <set>

#include "support/cuda_calls.h"
#include "data.h"
#include "support/safetensors.h"

namespace {
const char* kNames[kTargets] = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
const char* kShort[kTargets] = {"q", "k", "v", "o", "gate", "up", "down"};
const char* kModule[kTargets] = {"self_attn", "self_attn", "self_attn", "self_attn", "mlp", "mlp", "mlp"};
}  // namespace

float LoraConfig::scale() const { return rank > 0 ? (use_rslora ? alpha / std::sqrt(float(rank)) : alpha / float(rank)) : 0.0f; }

const char* lora_target_name(LoraTarget t) { return kNames[t]; }

void parse_lora_targets(const std::string& list, LoraConfig& config, const std::string& flag) {
    for (bool& t : config.target) t = (list == "all" || list == "all-linear");
    if (config.target[0]) return;
    size_t start = 0;
    while (start <= list.size()) {
        size_t end = list.find(',', start);
        if (end == std::string::npos) end = list.size();
        std::string name = list.substr(start, end - start);
        bool found = false;
        for (int t = 0; t < kTargets; ++t)
            if (name == kNames[t] || name == kShort[t]) config.target[t] = found = true;
        if (!found)
            fail(flag + ": unknown LoRA target \"" + name + "\" (choose from q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj or all)");
        start = end + 1;
    }
}

LoraLayout lora_layout(const LlamaConfig& m, const LoraConfig& lora) {
    LoraLayout l;
    for (int t = 0; t < kTargets; ++t) {
        std::vector<int64_t> shape = layer_tensor_shape(m, kProjection[t]);  // W: [out, in]
        l.out[t] = int(shape[0]), l.in[t] = int(shape[1]);
    }
    if (lora.rank == 0) return l;
    // Every A, then every B, in target order: the A of q, k, v (and of gate, up), which read the same
    // input, are adjacent, so the model runs them as one product. Each tensor starts on 16 bytes (kAlign
    // elements), as the products need.
    for (int t = 0; t < kTargets; ++t)
        if (lora.target[t]) l.a_offset[t] = align_up(l.per_layer), l.per_layer = l.a_offset[t] + int64_t(lora.rank) * l.in[t];
    for (int t = 0; t < kTargets; ++t)
        if (lora.target[t]) l.b_offset[t] = align_up(l.per_layer), l.per_layer = l.b_offset[t] + int64_t(l.out[t]) * lora.rank;
    return l;
}

LlamaConfig with_lora_slots(const LlamaConfig& c, const LoraConfig& lora) {
    LlamaConfig out = c;
    for (LayerTensor t : {kQProj, kKProj, kVProj, kGateProj, kUpProj, kDownProj}) out.row_pad[t] = 0;
    if (lora.rank == 0) return out;
    for (int g : {kGroupQKV, kGroupGateUp, kGroupDown}) {
        int adapted = 0;
        for (int k = 0; k < kGroup[g].size; ++k) adapted += lora.target[kGroup[g].t[k]];
        for (int k = 0; k < kGroup[g].size; ++k)
            if (lora.target[kGroup[g].t[k]]) out.row_pad[kProjection[kGroup[g].t[k]]] = lora_slot_columns(lora.rank) * adapted;
    }
    return out;
}

LoraLayerView lora_view(const LoraConfig& lora, const LoraLayout& layout, const bf16* weights, float* grads) {
    LoraLayerView v;
    if (lora.rank == 0) return v;
    for (int t = 0; t < kTargets; ++t) {
        if (!lora.target[t]) continue;
        v.A[t] = weights + layout.a_offset[t], v.B[t] = weights + layout.b_offset[t];
        if (grads) v.dA[t] = grads + layout.a_offset[t], v.dB[t] = grads + layout.b_offset[t];
    }
    return v;
}

void lora_init_layer(const LoraConfig& lora, const LoraLayout& layout, uint64_t seed, int layer, float* master) {
    for (int t = 0; t < kTargets; ++t) {
        if (!lora.target[t]) continue;
        Rng rng(seed ^ (0xA0761D6478BD642Full * uint64_t(layer * kTargets + t + 1)));
        float bound = 1.0f / std::sqrt(float(layout.in[t]));  // kaiming_uniform_(a=sqrt(5)) on [r, in]
        for (int64_t i = 0; i < int64_t(lora.rank) * layout.in[t]; ++i)
            master[layout.a_offset[t] + i] = (2 * rng.uniform() - 1) * bound;
        std::memset(master + layout.b_offset[t], 0, sizeof(float) * size_t(layout.out[t]) * size_t(lora.rank));
    }
}

std::string peft_key(int layer, LoraTarget t, char which) {
    return "base_model.model.model.layers." + std::to_string(layer) + "." + kModule[t] + "." + kNames[t] + ".lora_" +
           which + ".weight";
}

void save_peft_adapter(const std::string& dir, const LlamaConfig& model, const LoraConfig& lora,
                       const std::vector<std::vector<float>>& layers, const std::string& base_model) {
    mkdir(dir.c_str(), 0755);
    LoraLayout layout = lora_layout(model, lora);
    std::vector<TensorToWrite> tensors;
    std::string targets;
    for (int t = 0; t < kTargets; ++t)
        if (lora.target[t]) targets += std::string(targets.empty() ? "" : ", ") + "\"" + kNames[t] + "\"";
    for (int l = 0; l < model.num_hidden_layers; ++l)
        for (int t = 0; t < kTargets; ++t) {
            if (!lora.target[t]) continue;
            const float* w = layers[size_t(l)].data();
            tensors.push_back({peft_key(l, LoraTarget(t), 'A'), "F32", {lora.rank, layout.in[t]}, w + layout.a_offset[t]});
            tensors.push_back({peft_key(l, LoraTarget(t), 'B'), "F32", {layout.out[t], lora.rank}, w + layout.b_offset[t]});
        }
    write_safetensors(dir + "/adapter_model.safetensors", tensors, {{"format", "pt"}});
    std::string base = json_quote(base_model);
    std::vector<char> buf(1024 + base.size());  // the fields PEFT writes for a causal LM (task_type CAUSAL_LM)
    std::snprintf(buf.data(), buf.size(),
                  "{\n  \"peft_type\": \"LORA\",\n  \"task_type\": \"CAUSAL_LM\",\n  \"base_model_name_or_path\": %s,\n"
                  "  \"auto_mapping\": null,\n  \"revision\": null,\n"
                  "  \"r\": %d,\n  \"lora_alpha\": %.9g,\n  \"lora_dropout\": %.9g,\n  \"target_modules\": [%s],\n"
                  "  \"bias\": \"none\",\n  \"fan_in_fan_out\": false,\n  \"use_rslora\": %s,\n  \"use_dora\": false,\n"
                  "  \"init_lora_weights\": true,\n  \"inference_mode\": true,\n  \"modules_to_save\": null\n}\n",
                  base.c_str(), lora.rank, lora.alpha, lora.dropout, targets.c_str(), lora.use_rslora ? "true" : "false");
    std::string tmp = dir + "/adapter_config.json.tmp";
    FILE* f = std::fopen(tmp.c_str(), "w");
    if (!f) fail("cannot write " + tmp + ": " + std::strerror(errno));
    std::fputs(buf.data(), f);
    std::fclose(f);
    if (std::rename(tmp.c_str(), (dir + "/adapter_config.json").c_str()) != 0) fail("cannot write " + dir + "/adapter_config.json");
}

void load_peft_adapter(const std::string& dir, const LlamaConfig& model, LoraConfig& lora,
                       std::vector<std::vector<float>>& layers) {
    std::string path = dir + "/adapter_config.json";
    Json j = read_json_file(path);
    const Json* type = j.find("peft_type");
    if (!type || !type->is_string() || type->string != "LORA") fail(path + ": peft_type must be \"LORA\"");
    const Json* r = j.find("r");
    if (!r || !r->is_int() || r->integer < 1 || r->integer > kMaxLoraRank)
        fail(path + ": field \"r\" must be a whole number from 1 to " + std::to_string(kMaxLoraRank) +
             (r && r->is_int() ? ", not " + std::to_string(r->integer) : ""));
    const Json* alpha = j.find("lora_alpha");
    if (!alpha || alpha->type != Json::Number || !(alpha->number > 0) || !std::isfinite(float(alpha->number)))
        fail(path + ": field \"lora_alpha\" must be a positive number (the adapter's scale is lora_alpha / r)");
    if (const Json* d = j.find("use_dora"); d && d->type == Json::Bool && d->boolean) fail(path + ": DoRA adapters are not supported");
    if (const Json* b = j.find("bias"); b && b->is_string() && b->string != "none") fail(path + ": bias \"" + b->string + "\" is not supported (only \"none\")");
    for (const char* k : {"rank_pattern", "alpha_pattern"})
        if (const Json* p = j.find(k); p && p->type == Json::Object && !p->object.empty()) fail(path + ": " + k + " is not supported");
    if (const Json* p = j.find("layers_to_transform"); p && p->type != Json::Null) fail(path + ": layers_to_transform is not supported");
    if (const Json* p = j.find("modules_to_save"); p && p->type == Json::Array && !p->array.empty()) fail(path + ": modules_to_save is not supported");
    lora.rank = int(r->integer);
    lora.alpha = float(alpha->number);
    if (const Json* d = j.find("lora_dropout"); d && d->type != Json::Null) {
        if (d->type != Json::Number || d->number < 0 || d->number >= 1) fail(path + ": lora_dropout must be a number in [0, 1)");
        lora.dropout = float(d->number);
    }
    const Json* rs = j.find("use_rslora");
    lora.use_rslora = rs && rs->type == Json::Bool && rs->boolean;
    const Json* targets = j.find("target_modules");
    if (!targets || targets->type != Json::Array) fail(path + ": field \"target_modules\" must be a list of module names");
    std::string list;
    for (const Json& t : targets->array) {
        if (!t.is_string()) fail(path + ": target_modules must hold strings");
        list += (list.empty() ? "" : ",") + t.string;
    }
    parse_lora_targets(list, lora, path + ": target_modules");
    // every tensor the config calls for, with its shape and a float dtype, and no other: checked from the
    // header before anything is allocated for the weights
    LoraLayout layout = lora_layout(model, lora);
    SafetensorsReader reader(dir + "/adapter_model.safetensors");
    std::set<std::string> expected;
    for (int l = 0; l < model.num_hidden_layers; ++l)
        for (int t = 0; t < kTargets; ++t) {
            if (!lora.target[t]) continue;
            reader.checked(peft_key(l, LoraTarget(t), 'A'), {lora.rank, layout.in[t]});
            reader.checked(peft_key(l, LoraTarget(t), 'B'), {layout.out[t], lora.rank});
            expected.insert(peft_key(l, LoraTarget(t), 'A')), expected.insert(peft_key(l, LoraTarget(t), 'B'));
        }
    for (const auto& [name, t] : reader.tensors())
        if (!expected.count(name))
            fail(t.file + ": unexpected tensor " + name + " (not an adapter of the model's " + std::to_string(model.num_hidden_layers) +
                 " layers and the target_modules of " + path + ")");
    layers.assign(size_t(model.num_hidden_layers), std::vector<float>(size_t(layout.per_layer)));
    for (int l = 0; l < model.num_hidden_layers; ++l)
        for (int t = 0; t < kTargets; ++t) {
            if (!lora.target[t]) continue;
            std::vector<float> a = reader.read_float(peft_key(l, LoraTarget(t), 'A'), {lora.rank, layout.in[t]});
            std::vector<float> b = reader.read_float(peft_key(l, LoraTarget(t), 'B'), {layout.out[t], lora.rank});
            std::copy(a.begin(), a.end(), layers[size_t(l)].begin() + layout.a_offset[t]);
            std::copy(b.begin(), b.end(), layers[size_t(l)].begin() + layout.b_offset[t]);
        }
}

void merge_lora_target(const LlamaConfig& model, const LoraConfig& lora, const float* adapters, LoraTarget t, float* W) {
    LoraLayout layout = lora_layout(model, lora);
    const float *A = adapters + layout.a_offset[t], *B = adapters + layout.b_offset[t];
    float s = lora.scale();
    int in = layout.in[t], out = layout.out[t];
    for (int o = 0; o < out; ++o)
        for (int k = 0; k < lora.rank; ++k) {
            float b = s * B[int64_t(o) * lora.rank + k];
            if (b == 0) continue;
            for (int i = 0; i < in; ++i) W[int64_t(o) * in + i] += b * A[int64_t(k) * in + i];
        }
}

void merge_lora_layer(const LlamaConfig& model, const LoraConfig& lora, const float* adapters, float* weights) {
    for (int t = 0; t < kTargets; ++t)  // every layer unit has the same layout
        if (lora.target[t]) merge_lora_target(model, lora, adapters, LoraTarget(t), weights + layer_tensor_offset(model, kProjection[t]));
}
