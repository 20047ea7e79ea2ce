// zero3.h — owns every parameter byte: base weights (bf16), trainable fp32 master weights, gradients and
// AdamW moments, laid out by unit. The model asks for a unit's weights with gather(u), gives them back
// with release(u), and says when the unit's gradients are complete with reduce_grads(u).
// This build has one rank (ZeRO stage 0 on one GPU): gather returns the resident unit and the
// collectives are no-ops. Sharding across ranks (stages 1-3) plugs in behind the same three calls.
#pragma once
#include <string>
#include <vector>

#include "adamw.h"
#include "llama.h"
#include "lora.h"

class ZeroStore : public UnitStore {
  public:
    // lora.rank == 0: full fine-tuning (every base weight trains); else only the adapters train.
    ZeroStore(const LlamaConfig& c, const LoraConfig& lora, cudaStream_t stream);
    ~ZeroStore() override;
    ZeroStore(const ZeroStore&) = delete;
    ZeroStore& operator=(const ZeroStore&) = delete;

    void init_random(uint64_t seed);                   // HF's init: N(0, 0.02) matrices, norms 1
    void load(const std::string& model_dir);           // safetensors of an HF model directory
    void init_lora(uint64_t seed);                     // PEFT's init
    void set_lora(const std::vector<std::vector<float>>& layers);  // from an adapter (fp32, per layer)

    UnitView gather(int unit) override;
    void release(int) override {}
    void reduce_grads(int) override {}

    void zero_grads();
    // Clips by global norm (max_norm <= 0: no clipping) and applies AdamW to every trainable element.
    // grad_norm() then holds the norm before clipping (device scalar).
    void step(const AdamWConfig& c, float lr, int step, float max_norm);
    const float* grad_norm_sq() const { return norm_sq_; }
    const float* grads() const { return grad_; }  // trainable gradients, fp32 (LoRA: layer by layer)

    int64_t trainable_numel() const { return n_train_; }
    int64_t base_numel() const { return n_base_; }
    size_t model_state_bytes() const;  // weights + master + grads + moments on the GPU

    std::vector<std::vector<float>> lora_layers() const;  // host fp32 masters, per layer
    std::vector<float> unit_weights(int unit) const;       // host fp32 copy of a unit's base weights
    // Writes model.safetensors + config.json (full fine-tune, or the base with adapters merged).
    void save_hf(const std::string& dir) const;

  private:
    LlamaConfig c_;
    LoraConfig lora_;
    LoraLayout layout_;
    cudaStream_t stream_;
    std::vector<int64_t> unit_offset_;  // into base_, per unit (+ end)
    int64_t n_base_ = 0, n_train_ = 0;
    bf16* base_ = nullptr;        // all base weights, bf16
    bf16* lora16_ = nullptr;      // LoRA compute copy, bf16 (layer l at (l) * per_layer)
    float *master_ = nullptr, *grad_ = nullptr, *m_ = nullptr, *v_ = nullptr;  // trainable, fp32
    float *norm_sq_ = nullptr, *clip_scale_ = nullptr;
    struct Segment { int64_t offset, length; bool decay; };
    std::vector<Segment> segments_;  // runs of trainable elements with/without weight decay
    int64_t lora_numel(int layer) const { return layer >= 0 ? layout_.per_layer : 0; }
};
