// zero3.cu — the parameter store behind gather / release / reduce_grads (zero3.h).
// Memory (per GPU, Psi = parameters): base weights 2 Psi (bf16); trainable elements Phi (all Psi for full
// fine-tuning, the adapters with LoRA) carry fp32 master 4 Phi, fp32 gradient 4 Phi, AdamW m and v 8 Phi.
// This is the ZeRO paper's 2 Psi + 2 Psi + K Psi with fp32 gradients and K = 12 (master, m, v).
#include "zero3.h"

#include <sys/stat.h>

#include <cmath>
#include <cstring>

#include "common.h"
#include "data.h"

namespace {

// w[i] = std * N(0,1) from a counter-based hash of (seed, i) (Box-Muller), or `fill` when std == 0.
__global__ void init_normal_kernel(bf16* w, float* master, int64_t n, uint64_t seed, float stddev, float fill) {
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
        float x = fill;
        if (stddev > 0) {
            uint64_t z = seed + uint64_t(i) * 0x9E3779B97F4A7C15ull;
            z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
            z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
            z ^= z >> 31;
            float u1 = (float(z >> 40) + 1.0f) / 16777217.0f, u2 = float((z >> 16) & 0xFFFFFF) / 16777216.0f;
            x = stddev * sqrtf(-2.0f * logf(u1)) * cospif(2.0f * u2);
        }
        w[i] = __float2bfloat16(x);
        if (master) master[i] = __bfloat162float(w[i]);
    }
}

__global__ void f32_to_bf16_kernel(const float* x, bf16* y, int64_t n) {
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
        y[i] = __float2bfloat16(x[i]);
}

int grid_for(int64_t n) { return int(std::min<int64_t>((n + 255) / 256, 132 * 16)); }

}  // namespace

ZeroStore::ZeroStore(const LlamaConfig& c, const LoraConfig& lora, cudaStream_t stream)
    : c_(c), lora_(lora), layout_(lora_layout(c, lora)), stream_(stream) {
    int U = num_units(c);
    unit_offset_.assign(size_t(U) + 1, 0);
    for (int u = 0; u < U; ++u) unit_offset_[size_t(u) + 1] = unit_offset_[size_t(u)] + unit_numel(c, u);
    n_base_ = unit_offset_.back();
    base_ = device_alloc<bf16>(size_t(n_base_), "base weights");
    if (lora.rank > 0) {
        n_train_ = layout_.per_layer * c.num_hidden_layers;
        lora16_ = device_alloc<bf16>(size_t(n_train_), "LoRA weights");
        segments_.push_back({0, n_train_, true});
    } else {
        n_train_ = n_base_;  // every base weight trains; norm weights without weight decay
        std::vector<TensorSpec> specs = parameter_specs(c);
        int64_t off = 0;
        for (const TensorSpec& s : specs) {
            bool decay = s.shape.size() > 1;
            if (!segments_.empty() && segments_.back().decay == decay) segments_.back().length += s.numel();
            else segments_.push_back({off, s.numel(), decay});
            off += s.numel();
        }
    }
    master_ = device_alloc<float>(size_t(n_train_), "fp32 master weights");
    grad_ = device_alloc<float>(size_t(n_train_), "fp32 gradients");
    m_ = device_alloc<float>(size_t(n_train_), "AdamW moments");
    v_ = device_alloc<float>(size_t(n_train_), "AdamW moments");
    norm_sq_ = device_alloc<float>(1, "grad norm");
    clip_scale_ = device_alloc<float>(1, "clip scale");
    check_cuda(cudaMemset(m_, 0, size_t(n_train_) * 4), "memset");
    check_cuda(cudaMemset(v_, 0, size_t(n_train_) * 4), "memset");
    check_cuda(cudaMemset(grad_, 0, size_t(n_train_) * 4), "memset");
}

ZeroStore::~ZeroStore() {
    for (void* p : {(void*)base_, (void*)lora16_, (void*)master_, (void*)grad_, (void*)m_, (void*)v_, (void*)norm_sq_, (void*)clip_scale_})
        cudaFree(p);
}

size_t ZeroStore::model_state_bytes() const { return size_t(n_base_) * 2 + size_t(n_train_) * (16 + (lora16_ ? 2 : 0)); }

void ZeroStore::init_random(uint64_t seed) {
    std::vector<TensorSpec> specs = parameter_specs(c_);
    for (int i = 0; i < int(specs.size()); ++i) {
        int unit;
        int64_t off;
        locate_parameter(c_, i, unit, off);
        int64_t at = unit_offset_[size_t(unit)] + off, n = specs[size_t(i)].numel();
        bool norm = specs[size_t(i)].shape.size() == 1;
        init_normal_kernel<<<grid_for(n), 256, 0, stream_>>>(base_ + at, lora_.rank ? nullptr : master_ + at, n,
                                                             seed * 1000003ull + uint64_t(i), norm ? 0.0f : 0.02f, 1.0f);
        check_launch("init_normal_kernel");
    }
    check_cuda(cudaStreamSynchronize(stream_), "init");
}

void ZeroStore::load(const std::string& dir) {
    SafetensorsReader reader(dir);
    std::vector<TensorSpec> specs = parameter_specs(c_);
    for (const auto& [name, t] : reader.tensors()) {
        bool known = name.size() > 19 && name.compare(name.size() - 19, 19, "rotary_emb.inv_freq") == 0;
        known |= name == "lm_head.weight" && c_.tie_word_embeddings;
        for (const TensorSpec& s : specs) known |= s.name == name;
        if (!known) fail(t.file + ": unexpected tensor " + name + " (not a parameter of this Llama config)");
    }
    std::vector<uint16_t> host16;
    for (int i = 0; i < int(specs.size()); ++i) {
        const TensorSpec& s = specs[size_t(i)];
        std::vector<float> w = reader.read_float(s.name, s.shape);
        int unit;
        int64_t off;
        locate_parameter(c_, i, unit, off);
        int64_t at = unit_offset_[size_t(unit)] + off;
        host16.resize(w.size());
        for (size_t k = 0; k < w.size(); ++k) host16[k] = float_to_bf16(w[k]);
        check_cuda(cudaMemcpy(base_ + at, host16.data(), w.size() * 2, cudaMemcpyHostToDevice), "copy weights");
        if (lora_.rank == 0) check_cuda(cudaMemcpy(master_ + at, w.data(), w.size() * 4, cudaMemcpyHostToDevice), "copy weights");
    }
}

void ZeroStore::set_lora(const std::vector<std::vector<float>>& layers) {
    for (int l = 0; l < c_.num_hidden_layers; ++l) {
        int64_t at = int64_t(l) * layout_.per_layer;
        check_cuda(cudaMemcpy(master_ + at, layers[size_t(l)].data(), size_t(layout_.per_layer) * 4, cudaMemcpyHostToDevice), "copy LoRA");
    }
    f32_to_bf16_kernel<<<grid_for(n_train_), 256, 0, stream_>>>(master_, lora16_, n_train_);
    check_launch("f32_to_bf16_kernel");
    check_cuda(cudaStreamSynchronize(stream_), "set_lora");
}

void ZeroStore::init_lora(uint64_t seed) {
    std::vector<std::vector<float>> layers(size_t(c_.num_hidden_layers), std::vector<float>(size_t(layout_.per_layer)));
    for (int l = 0; l < c_.num_hidden_layers; ++l) lora_init_layer(lora_, layout_, seed, l, layers[size_t(l)].data());
    set_lora(layers);
}

UnitView ZeroStore::gather(int unit) {
    UnitView v;
    v.weights = base_ + unit_offset_[size_t(unit)];
    if (lora_.rank == 0) {
        v.grads = grad_ + unit_offset_[size_t(unit)];
    } else if (unit >= 1 && unit <= c_.num_hidden_layers) {
        int64_t at = int64_t(unit - 1) * layout_.per_layer;
        v.lora = lora_view(lora_, layout_, lora16_ + at, grad_ + at);
    }
    return v;
}

void ZeroStore::zero_grads() { check_cuda(cudaMemsetAsync(grad_, 0, size_t(n_train_) * 4, stream_), "zero grads"); }

void ZeroStore::step(const AdamWConfig& c, float lr, int step, float max_norm) {
    check_cuda(cudaMemsetAsync(norm_sq_, 0, 4, stream_), "memset");
    grad_sum_squares(grad_, n_train_, norm_sq_, stream_);
    clip_coefficient(norm_sq_, max_norm, clip_scale_, stream_);
    bf16* compute = lora_.rank ? lora16_ : base_;
    for (const Segment& s : segments_)
        adamw_step_gpu(master_ + s.offset, grad_ + s.offset, m_ + s.offset, v_ + s.offset, compute + s.offset, s.length, c, lr,
                       s.decay ? c.weight_decay : 0.0f, step, clip_scale_, stream_);
}

std::vector<std::vector<float>> ZeroStore::lora_layers() const {
    std::vector<std::vector<float>> layers(size_t(c_.num_hidden_layers), std::vector<float>(size_t(layout_.per_layer)));
    for (int l = 0; l < c_.num_hidden_layers; ++l)
        check_cuda(cudaMemcpy(layers[size_t(l)].data(), master_ + int64_t(l) * layout_.per_layer, size_t(layout_.per_layer) * 4,
                              cudaMemcpyDeviceToHost), "copy LoRA");
    return layers;
}

std::vector<float> ZeroStore::unit_weights(int unit) const {
    int64_t at = unit_offset_[size_t(unit)], n = unit_offset_[size_t(unit) + 1] - at;
    std::vector<float> out(static_cast<size_t>(n));
    if (lora_.rank == 0) {
        check_cuda(cudaMemcpy(out.data(), master_ + at, size_t(n) * 4, cudaMemcpyDeviceToHost), "copy weights");
        return out;
    }
    std::vector<uint16_t> h(static_cast<size_t>(n));
    check_cuda(cudaMemcpy(h.data(), base_ + at, size_t(n) * 2, cudaMemcpyDeviceToHost), "copy weights");
    for (size_t i = 0; i < h.size(); ++i) out[i] = bf16_to_float(h[i]);
    return out;
}

void ZeroStore::save_hf(const std::string& dir) const {
    mkdir(dir.c_str(), 0755);
    std::vector<TensorSpec> specs = parameter_specs(c_);
    std::vector<std::vector<uint16_t>> data(specs.size());
    std::vector<TensorToWrite> tensors;
    std::vector<std::vector<float>> adapters = lora_.rank ? lora_layers() : std::vector<std::vector<float>>();
    for (int u = 0; u < num_units(c_); ++u) {  // one unit at a time, merged with its adapters
        std::vector<float> w = unit_weights(u);
        if (lora_.rank && u >= 1 && u <= c_.num_hidden_layers) merge_lora_layer(c_, lora_, adapters[size_t(u - 1)].data(), w.data());
        for (int i = 0; i < int(specs.size()); ++i) {
            int unit;
            int64_t off;
            locate_parameter(c_, i, unit, off);
            if (unit != u) continue;
            std::vector<uint16_t>& d = data[size_t(i)];
            d.resize(size_t(specs[size_t(i)].numel()));
            for (size_t k = 0; k < d.size(); ++k) d[k] = float_to_bf16(w[size_t(off) + k]);
            tensors.push_back({specs[size_t(i)].name, "BF16", specs[size_t(i)].shape, d.data()});
        }
    }
    write_safetensors(dir + "/model.safetensors", tensors, {{"format", "pt"}});
    std::string cfg = config_json(c_);
    FILE* f = std::fopen((dir + "/config.json").c_str(), "w");
    if (!f) fail("cannot write " + dir + "/config.json");
    std::fputs(cfg.c_str(), f);
    std::fclose(f);
}
