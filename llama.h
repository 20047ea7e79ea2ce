// llama.h — the Llama model: its configuration (HF config.json or a named preset), its parameters by HF
// name and shape, and safetensors files. Knows nothing of NCCL, MPI or where weights live.
#pragma once
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "safetensors.h"

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


// ================================================================================================ GPU

using bf16 = __nv_bfloat16;

// Matrix products through cuBLASLt, in row-major terms (bf16 inputs, fp32 accumulation):
//   C[M,N] = alpha * op(A)[M,K] * op(B)[K,N] + beta * C
// A is stored [M,K] (transA: [K,M]), B is stored [K,N] (transB: [N,K]); C is bf16 or fp32.
// `batch` > 1 runs strided batches (stride in elements).
struct Gemm {
    cublasLtHandle_t lt = nullptr;
    void* workspace = nullptr;
    size_t workspace_bytes = 0;
    cudaStream_t stream = nullptr;
};
Gemm gemm_create(cudaStream_t stream);
void gemm_destroy(Gemm& g);
void gemm(const Gemm& g, bool transA, bool transB, int M, int N, int K, const bf16* A, int lda, const bf16* B,
          int ldb, void* C, bool c_fp32, int ldc, float alpha, float beta, int batch = 1, int64_t strideA = 0,
          int64_t strideB = 0, int64_t strideC = 0);

// Kernels, as host functions (one line of math each in llama.cu). Activations are row-major
// [N = B*T, features]; attention works on [B, heads, T, head_dim] ("t" layouts).
void embedding_forward(const int32_t* ids, const bf16* E, bf16* h, int64_t N, int D, cudaStream_t s);
void embedding_backward(const int32_t* ids, const bf16* dh, float* dE, int64_t N, int D, cudaStream_t s);
void rmsnorm_forward(const bf16* x, const bf16* w, bf16* y, float* rstd, int64_t N, int D, float eps, cudaStream_t s);
// dx = residual + d rmsnorm / dx;  dw += d rmsnorm / dw when dw is not null (dw_partial: kNormPartials * D floats)
constexpr int kNormPartials = 64;
void rmsnorm_backward(const bf16* x, const bf16* w, const float* rstd, const bf16* dy, const bf16* residual, bf16* dx,
                      float* dw, float* dw_partial, int64_t N, int D, cudaStream_t s);
// [B,T,nh,Dh] -> [B,nh,T,Dh], rotated when `rotate`;  backward: the transpose of both.
void rope_forward(const bf16* x, bf16* out, const float* cos_t, const float* sin_t, int B, int T, int nh, int Dh,
                  bool rotate, cudaStream_t s);
void rope_backward(const bf16* dout, bf16* dx, const float* cos_t, const float* sin_t, int B, int T, int nh, int Dh,
                   bool rotate, cudaStream_t s);
void swiglu_forward(const bf16* g, const bf16* u, bf16* act, int64_t n, cudaStream_t s);
void swiglu_backward(const bf16* g, const bf16* u, const bf16* dact, bf16* dg, bf16* du, int64_t n, cudaStream_t s);
void shift_labels(const int32_t* labels, int32_t* targets, int64_t N, int T, cudaStream_t s);
// row_loss = CE of each row (0 without a target), loss_sum += their sum (in a fixed order);
// dlogits = (softmax - onehot) * inv_divisor when backward.
void cross_entropy(const float* logits, const int32_t* targets, bf16* dlogits, float* row_loss, float* loss_sum, int rows,
                   int V, float inv_divisor, bool backward, cudaStream_t s);

// Causal GQA attention through cuBLASLt, `chunk` (batch, kv-head) blocks of scores at a time.
struct AttentionShape {
    int B, T, H, KVH, Dh, chunk;
    AttentionShape(int B, int T, int H, int KVH, int Dh, int64_t budget_bytes = 512ll << 20);
    int64_t scratch_elems() const;  // elements of `scores` (fp32) and `probs` (bf16)
};
void attention_forward(const Gemm& g, const AttentionShape& a, const bf16* qt, const bf16* kt, const bf16* vt, bf16* ot,
                       float* lse, float* scores, bf16* probs);
void attention_backward(const Gemm& g, const AttentionShape& a, const bf16* qt, const bf16* kt, const bf16* vt,
                        const bf16* o, const bf16* d_o, const bf16* d_ot, const float* lse, bf16* dqt, bf16* dkt,
                        bf16* dvt, float* rowdot, float* scores, bf16* probs);

// The trainable adapters of one layer, if any (see lora.h). Pointers are null for absent targets.
enum LoraTarget { kQ, kK, kV, kO, kGate, kUp, kDown, kTargets };
struct LoraLayerView {
    const bf16* A[kTargets] = {};  // [r, in]
    const bf16* B[kTargets] = {};  // [out, r]
    float* dA[kTargets] = {};      // fp32 gradients, accumulated
    float* dB[kTargets] = {};
};

// One unit's weights as the model sees them while it is gathered: the base weights (bf16, in
// parameter_specs order), their fp32 gradients when they train (full fine-tuning), and the LoRA view.
struct UnitView {
    const bf16* weights = nullptr;
    float* grads = nullptr;
    LoraLayerView lora;
};

// Where the model gets its weights: the ZeRO partitioner implements this (zero3.h). Units are
//   0 = embed_tokens (and the tied lm_head), 1..L = decoder layers, L+1 = final norm (+ untied lm_head).
// In the backward pass a gathered unit also carries its gradient buffers (zeroed for this micro-batch
// where the store reduces them away after each one).
enum class Pass { forward, backward };
struct UnitStore {
    virtual UnitView gather(int unit, Pass pass) = 0;  // full weights of `unit`, valid until release
    virtual void release(int unit) = 0;                 // the gathered buffer may be reused
    virtual void reduce_grads(int unit) = 0;            // the unit's gradients for this micro-batch are complete
    virtual ~UnitStore() = default;
};
int64_t unit_numel(const LlamaConfig& c, int unit);  // base elements of a unit
int num_units(const LlamaConfig& c);
// The element offset of parameter `index` (in parameter_specs order) within its unit, and its unit.
void locate_parameter(const LlamaConfig& c, int index, int& unit, int64_t& offset);

// A micro-batch on the GPU.
struct DeviceBatch {
    int B = 0, T = 0;
    int32_t* ids = nullptr;     // [B*T]
    int32_t* labels = nullptr;  // [B*T], -100 = no loss; position t predicts labels[t+1]
};

// The model's activations and workspace for batches up to B x T, and the forward/backward passes.
class LlamaModel {
  public:
    // recompute = activation checkpointing: keep only each layer's input, recompute the layer in backward.
    LlamaModel(const LlamaConfig& c, int lora_rank, float lora_scale, int B, int T, cudaStream_t stream,
               bool recompute = false);
    ~LlamaModel();
    LlamaModel(const LlamaModel&) = delete;
    LlamaModel& operator=(const LlamaModel&) = delete;

    // Forward and backward of one micro-batch. Gradients accumulate (scaled by 1/loss_divisor, the
    // number of target tokens in the whole optimizer step). Returns nothing; the summed CE of this
    // micro-batch is added to the device scalar loss_sum() (read it when logging).
    void forward_backward(const DeviceBatch& batch, UnitStore& store, float loss_divisor);
    // Forward only: adds summed CE to loss_sum(); when `logits` is given (B*T*V floats), writes them.
    void forward(const DeviceBatch& batch, UnitStore& store, float* logits = nullptr);
    float* loss_sum() { return loss_sum_; }  // device fp32 scalar
    size_t activation_bytes() const { return activation_bytes_; }
    const LlamaConfig& config() const { return c_; }

  private:
    struct Layer;  // saved activations of one layer
    void forward_layers(const DeviceBatch& batch, UnitStore& store);
    void layer_forward(int l, const UnitView& w, const bf16* h_in, bf16* h_out);
    void layer_backward(int l, const UnitView& w, bf16* dh);  // dh: in = d h_out, out = d h_in
    void head_forward_backward(const DeviceBatch& batch, UnitStore& store, float loss_divisor, bool backward,
                               float* logits);
    void linear_forward(const bf16* x, int in, const bf16* W, int out, bf16* y, float beta, LoraTarget t,
                        const LoraLayerView& lora, bf16* lora_u);
    void linear_backward(const bf16* x, int in, const bf16* W, float* dW, int out, const bf16* dy, bf16* dx,
                         float dx_beta, LoraTarget t, const LoraLayerView& lora, const bf16* lora_u);

    LlamaConfig c_;
    int r_;
    float lora_scale_;
    int B_, T_, N_ = 0;
    cudaStream_t stream_;
    bool recompute_ = false;
    Gemm gemm_;
    std::vector<Layer*> layers_;
    bf16* hidden_ = nullptr;  // [L+1][N, D]: h_0 .. h_L
    bf16* final_norm_ = nullptr;
    float* final_rstd_ = nullptr;
    float* rope_cos_ = nullptr, *rope_sin_ = nullptr;  // [T, Dh/2]
    // scratch (reused by every layer)
    bf16 *d_hidden_ = nullptr, *d_a_ = nullptr, *d_n_ = nullptr, *d_ff_ = nullptr, *d_g_ = nullptr, *d_u_ = nullptr;
    bf16 *d_q_ = nullptr, *d_k_ = nullptr, *d_v_ = nullptr, *d_qt_ = nullptr, *d_kt_ = nullptr, *d_vt_ = nullptr;
    bf16 *d_ot_ = nullptr, *lora_du_ = nullptr;
    float* attn_scores_ = nullptr;  // [chunk, group*T, T]
    bf16* attn_probs_ = nullptr;
    float* attn_rowdot_ = nullptr;
    AttentionShape attn_;
    float* logits_ = nullptr;  // [head_rows, V]
    bf16* dlogits_ = nullptr;
    int head_rows_ = 0;
    int32_t* targets_ = nullptr;
    float* loss_sum_ = nullptr;
    float* row_loss_ = nullptr;
    float* norm_partial_ = nullptr;
    size_t activation_bytes_ = 0;
};

// Text generation with a KV cache, one token at a time (prompt tokens too): for each layer the keys and
// values of every position so far are kept, so a new token costs one pass of M = 1 products.
class Generator {
  public:
    Generator(const LlamaConfig& c, int lora_rank, float lora_scale, int max_len, cudaStream_t stream);
    ~Generator();
    Generator(const Generator&) = delete;
    Generator& operator=(const Generator&) = delete;
    // Appends prompt + generated ids; stops at any eos id or after max_new tokens. temperature 0 = greedy;
    // otherwise samples from the top-p nucleus of softmax(logits / temperature).
    std::vector<int32_t> generate(UnitStore& store, const std::vector<int32_t>& prompt, int max_new,
                                  float temperature, float top_p, uint64_t seed);

  private:
    void step(UnitStore& store, int32_t token, int pos, bool want_logits);
    void linear(const bf16* x, int in, const bf16* W, int out, bf16* y, float beta, LoraTarget t, const LoraLayerView& lora);
    LlamaConfig c_;
    int r_, max_len_;
    float scale_;
    cudaStream_t stream_;
    Gemm gemm_;
    bf16 *k_cache_ = nullptr, *v_cache_ = nullptr;  // [L][KVH][max_len][Dh]
    bf16 *h_, *n_, *q_, *k_, *v_, *qt_, *kt_, *att_, *g_, *u_, *act_, *lora_u_;
    float *rstd_, *logits_, *rope_cos_, *rope_sin_;
    int32_t* token_;
};
