// llama.cu — the Llama model (Touvron et al. 2023; HF's LlamaForCausalLM), on weights it borrows unit by
// unit from a UnitStore:
//   h_0 = embed[ids]
//   for each layer:  a = h + o_proj(attn(rope(q_proj(n)), rope(k_proj(n)), v_proj(n))),   n = rmsnorm(h)
//                    h = a + down_proj(silu(gate_proj(m)) * up_proj(m)),                    m = rmsnorm(a)
//   logits = lm_head(rmsnorm(h_L))   (lm_head = embed when tied);  loss = mean CE over labels != -100
// Sections: config (config.json, presets, RoPE frequencies, parameter names), units, GEMM (cuBLASLt),
// kernels (one line of math each) and their launchers, the model (forward, backward), generation.
#include "llama.h"


#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <unordered_map>

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
        c.max_position_embeddings = 8192;
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

// ================================================================================================ units

int num_units(const LlamaConfig& c) { return c.num_hidden_layers + 2; }

int64_t unit_numel(const LlamaConfig& c, int unit) {
    int64_t n = 0;
    std::vector<TensorSpec> specs = parameter_specs(c);
    for (int i = 0; i < int(specs.size()); ++i) {
        int u;
        int64_t off;
        locate_parameter(c, i, u, off);
        if (u == unit) n += specs[size_t(i)].numel();
    }
    return n;
}

void locate_parameter(const LlamaConfig& c, int index, int& unit, int64_t& offset) {
    // parameter_specs order: embed, then 9 tensors per layer, then norm (+ lm_head).
    int64_t d = c.hidden_size, f = c.intermediate_size, q = int64_t(c.num_attention_heads) * c.head_dim,
            kv = int64_t(c.num_key_value_heads) * c.head_dim;
    const int64_t layer_sizes[9] = {d, q * d, kv * d, kv * d, d * q, d, f * d, f * d, d * f};
    int L = c.num_hidden_layers;
    if (index == 0) { unit = 0, offset = 0; return; }
    if (index <= 9 * L) {
        unit = 1 + (index - 1) / 9, offset = 0;
        for (int k = 0; k < (index - 1) % 9; ++k) offset += layer_sizes[k];
        return;
    }
    unit = L + 1;
    offset = index == 9 * L + 1 ? 0 : d;  // model.norm.weight, then lm_head.weight
}

// ================================================================================================ GEMM

Gemm gemm_create(cudaStream_t stream) {
    Gemm g;
    g.stream = stream;
    check_cublas(cublasLtCreate(&g.lt), "cublasLtCreate");
    g.workspace_bytes = 64u << 20;
    g.workspace = device_alloc<char>(g.workspace_bytes, "cuBLASLt workspace");
    return g;
}

void gemm_destroy(Gemm& g) {
    if (g.lt) cublasLtDestroy(g.lt);
    if (g.workspace) cudaFree(g.workspace);
    g = Gemm();
}

namespace {

struct GemmKey {
    bool ta, tb, c32;
    int M, N, K, lda, ldb, ldc, batch;
    int64_t sa, sb, sc;
    bool beta0;
    bool operator==(const GemmKey& o) const { return std::memcmp(this, &o, sizeof *this) == 0; }
};
struct GemmPlan {
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t a, b, c;
    cublasLtMatmulAlgo_t algo;
};
struct GemmKeyHash {
    size_t operator()(const GemmKey& k) const {
        const unsigned char* p = reinterpret_cast<const unsigned char*>(&k);
        size_t h = 1469598103934665603ull;
        for (size_t i = 0; i < sizeof k; ++i) h = (h ^ p[i]) * 1099511628211ull;
        return h;
    }
};

cublasLtMatrixLayout_t layout(cudaDataType_t type, int rows, int cols, int ld, int batch, int64_t stride) {
    cublasLtMatrixLayout_t l;
    check_cublas(cublasLtMatrixLayoutCreate(&l, type, uint64_t(rows), uint64_t(cols), int64_t(ld)), "cublasLtMatrixLayoutCreate");
    if (batch > 1) {
        check_cublas(cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &batch, sizeof batch), "layout batch");
        check_cublas(cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride, sizeof stride),
                     "layout stride");
    }
    return l;
}

}  // namespace

void gemm(const Gemm& g, bool transA, bool transB, int M, int N, int K, const bf16* A, int lda, const bf16* B, int ldb,
          void* C, bool c_fp32, int ldc, float alpha, float beta, int batch, int64_t strideA, int64_t strideB,
          int64_t strideC) {
    // cuBLAS is column-major: a row-major X is the column-major X^T, so C = op(A) op(B) is computed as
    // C^T = op(B)^T op(A)^T with the operands swapped.
    static std::unordered_map<GemmKey, GemmPlan, GemmKeyHash> plans;
    GemmKey key{transA, transB, c_fp32, M, N, K, lda, ldb, ldc, batch, strideA, strideB, strideC, beta == 0.0f};
    auto it = plans.find(key);
    if (it == plans.end()) {
        GemmPlan p;
        check_cublas(cublasLtMatmulDescCreate(&p.op, CUBLAS_COMPUTE_32F, CUDA_R_32F), "cublasLtMatmulDescCreate");
        cublasOperation_t op1 = transB ? CUBLAS_OP_T : CUBLAS_OP_N, op2 = transA ? CUBLAS_OP_T : CUBLAS_OP_N;
        check_cublas(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSA, &op1, sizeof op1), "transa");
        check_cublas(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSB, &op2, sizeof op2), "transb");
        p.a = transB ? layout(CUDA_R_16BF, K, N, ldb, batch, strideB) : layout(CUDA_R_16BF, N, K, ldb, batch, strideB);
        p.b = transA ? layout(CUDA_R_16BF, M, K, lda, batch, strideA) : layout(CUDA_R_16BF, K, M, lda, batch, strideA);
        p.c = layout(c_fp32 ? CUDA_R_32F : CUDA_R_16BF, N, M, ldc, batch, strideC);
        cublasLtMatmulPreference_t pref;
        check_cublas(cublasLtMatmulPreferenceCreate(&pref), "preference");
        check_cublas(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &g.workspace_bytes,
                                                          sizeof g.workspace_bytes), "preference workspace");
        cublasLtMatmulHeuristicResult_t result;
        int found = 0;
        check_cublas(cublasLtMatmulAlgoGetHeuristic(g.lt, p.op, p.a, p.b, p.c, p.c, pref, 1, &result, &found), "heuristic");
        cublasLtMatmulPreferenceDestroy(pref);
        if (found == 0) exit_with_error("cuBLASLt has no algorithm for a " + std::to_string(M) + "x" + std::to_string(N) + "x" + std::to_string(K) + " product");
        p.algo = result.algo;
        it = plans.emplace(key, p).first;
    }
    const GemmPlan& p = it->second;
    check_cublas(cublasLtMatmul(g.lt, p.op, &alpha, B, p.a, A, p.b, &beta, C, p.c, C, p.c, &p.algo, g.workspace,
                                g.workspace_bytes, g.stream), "cublasLtMatmul");
}

// ================================================================================================ kernels
// Layouts: activations are row-major [N = B*T, features]; attention works on [B, heads, T, head_dim].

namespace {

constexpr int kThreads = 256;
inline int blocks_for(int64_t n, int threads = kThreads) { return int(std::min<int64_t>((n + threads - 1) / threads, 1 << 30)); }

__device__ float block_sum(float v) {  // sum over the block; every thread gets the total
    __shared__ float partial[32];
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    __syncthreads();
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    float total = 0;
    for (int w = 0; w < int(blockDim.x + 31) / 32; ++w) total += partial[w];
    return total;
}

__device__ float block_max(float v) {
    __shared__ float partial[32];
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffff, v, o));
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    __syncthreads();
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    float m = -INFINITY;
    for (int w = 0; w < int(blockDim.x + 31) / 32; ++w) m = fmaxf(m, partial[w]);
    return m;
}

// h[n, :] = E[ids[n], :]
__global__ void embedding_forward_kernel(const int32_t* ids, const bf16* E, bf16* h, int64_t N, int D) {
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < N * D; i += int64_t(gridDim.x) * blockDim.x)
        h[i] = E[int64_t(ids[i / D]) * D + i % D];
}

// dE[ids[n], :] += dh[n, :]   (one thread per column, tokens in order: deterministic, no atomics)
__global__ void embedding_backward_kernel(const int32_t* ids, const bf16* dh, float* dE, int64_t N, int D) {
    int d = blockIdx.x * blockDim.x + threadIdx.x;
    if (d >= D) return;
    for (int64_t n = 0; n < N; ++n) dE[int64_t(ids[n]) * D + d] += __bfloat162float(dh[n * D + d]);
}

// y = w * (x * rstd),  rstd = 1 / sqrt(mean(x^2) + eps)   (one block per row; x̂ rounded to bf16 as HF does)
__global__ void rmsnorm_forward_kernel(const bf16* x, const bf16* w, bf16* y, float* rstd, int D, float eps) {
    const bf16* xr = x + int64_t(blockIdx.x) * D;
    float ss = 0;
    for (int i = threadIdx.x; i < D; i += blockDim.x) { float v = __bfloat162float(xr[i]); ss += v * v; }
    float r = rsqrtf(block_sum(ss) / float(D) + eps);
    if (threadIdx.x == 0) rstd[blockIdx.x] = r;
    bf16* yr = y + int64_t(blockIdx.x) * D;
    for (int i = threadIdx.x; i < D; i += blockDim.x) {
        float xhat = __bfloat162float(__float2bfloat16(__bfloat162float(xr[i]) * r));
        yr[i] = __float2bfloat16(__bfloat162float(w[i]) * xhat);
    }
}

// dx = residual + rstd * (g - x̂ * mean(g * x̂)),  g = dy * w,  x̂ = x * rstd
__global__ void rmsnorm_backward_kernel(const bf16* x, const bf16* w, const float* rstd, const bf16* dy,
                                        const bf16* residual, bf16* dx, int D) {
    int64_t row = blockIdx.x;
    const bf16 *xr = x + row * D, *dyr = dy + row * D;
    float r = rstd[row], dot = 0;
    for (int i = threadIdx.x; i < D; i += blockDim.x)
        dot += __bfloat162float(dyr[i]) * __bfloat162float(w[i]) * __bfloat162float(xr[i]) * r;
    float mean = block_sum(dot) / float(D);
    for (int i = threadIdx.x; i < D; i += blockDim.x) {
        float g = __bfloat162float(dyr[i]) * __bfloat162float(w[i]), xhat = __bfloat162float(xr[i]) * r;
        dx[row * D + i] = __float2bfloat16(__bfloat162float(residual[row * D + i]) + r * (g - xhat * mean));
    }
}

// partial[r, i] = sum over rows n = r, r + R, r + 2R, ... of dy[n,i] * x̂[n,i]   (R = gridDim.y)
__global__ void rmsnorm_weight_partial_kernel(const bf16* x, const float* rstd, const bf16* dy, float* partial, int64_t N, int D) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= D) return;
    float acc = 0;
    for (int64_t n = blockIdx.y; n < N; n += gridDim.y)
        acc += __bfloat162float(dy[n * D + i]) * __bfloat162float(__float2bfloat16(__bfloat162float(x[n * D + i]) * rstd[n]));
    partial[int64_t(blockIdx.y) * D + i] = acc;
}

// dw[i] += sum_r partial[r, i], r in order   (the two passes keep the sum's order fixed: deterministic)
__global__ void rmsnorm_weight_sum_kernel(const float* partial, float* dw, int R, int D) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= D) return;
    float acc = 0;
    for (int r = 0; r < R; ++r) acc += partial[int64_t(r) * D + i];
    dw[i] += acc;
}

// RoPE on the halves of each head (HF's rotate_half), angle = t * inv_freq[i]:
//   (x1, x2) -> (x1 cos - sign x2 sin, x2 cos + sign x1 sin)
// forward (sign +1) reads [B,T,nh,Dh] and writes [B,nh,T,Dh]; backward (sign -1, the transpose of the
// rotation) reads [B,nh,T,Dh] and writes [B,T,nh,Dh]. rotate = false only moves the data (for V and O).
__global__ void rope_kernel(const bf16* src, bf16* dst, const float* cos_t, const float* sin_t, int B, int T, int nh, int Dh,
                            bool rotate, bool forward) {
    int half = Dh / 2;
    float sign = forward ? 1.0f : -1.0f;
    int64_t total = int64_t(B) * T * nh * half;
    for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total; idx += int64_t(gridDim.x) * blockDim.x) {
        int i = int(idx % half);
        int64_t rest = idx / half;
        int h = int(rest % nh);
        rest /= nh;
        int t = int(rest % T), b = int(rest / T);
        int64_t token_major = ((int64_t(b) * T + t) * nh + h) * Dh, head_major = ((int64_t(b) * nh + h) * T + t) * Dh;
        const bf16* in = src + (forward ? token_major : head_major);
        bf16* out = dst + (forward ? head_major : token_major);
        float x1 = __bfloat162float(in[i]), x2 = __bfloat162float(in[i + half]);
        if (rotate) {
            float c = cos_t[t * half + i], s = sign * sin_t[t * half + i];
            out[i] = __float2bfloat16(x1 * c - x2 * s);
            out[i + half] = __float2bfloat16(x2 * c + x1 * s);
        } else {
            out[i] = in[i], out[i + half] = in[i + half];
        }
    }
}

// P = softmax(scale * S) over columns 0..t of each row (row r of a (b, kv-group) block is position
// t = r % T), 0 beyond; lse = log sum exp of the scaled row.  One block per row.
__global__ void causal_softmax_kernel(const float* S, bf16* P, float* lse, int T, float scale) {
    int64_t row = blockIdx.x;
    int t = int(row % T);
    const float* s = S + row * T;
    float m = -INFINITY;
    for (int j = threadIdx.x; j <= t; j += blockDim.x) m = fmaxf(m, s[j] * scale);
    m = block_max(m);
    float sum = 0;
    for (int j = threadIdx.x; j <= t; j += blockDim.x) sum += __expf(s[j] * scale - m);
    sum = block_sum(sum);
    float l = m + logf(sum);
    if (threadIdx.x == 0) lse[row] = l;
    for (int j = threadIdx.x; j < T; j += blockDim.x)
        P[row * T + j] = __float2bfloat16(j <= t ? __expf(s[j] * scale - l) : 0.0f);
}

// Recomputes P = exp(scale * S - lse) (causal) into P.
__global__ void causal_probs_kernel(const float* S, const float* lse, bf16* P, int T, float scale) {
    int64_t row = blockIdx.x;
    int t = int(row % T);
    float l = lse[row];
    for (int j = threadIdx.x; j < T; j += blockDim.x)
        P[row * T + j] = __float2bfloat16(j <= t ? __expf(S[row * T + j] * scale - l) : 0.0f);
}

// dS = scale * P * (dP - D_row)  written over P;  D_row = sum_d dO * O (the softmax backward).
__global__ void softmax_backward_kernel(const float* dP, const float* rowdot, bf16* P, int T, float scale) {
    int64_t row = blockIdx.x;
    int t = int(row % T);
    float d = rowdot[row];
    for (int j = threadIdx.x; j < T; j += blockDim.x) {
        float p = __bfloat162float(P[row * T + j]);
        P[row * T + j] = __float2bfloat16(j <= t ? scale * p * (dP[row * T + j] - d) : 0.0f);
    }
}

// rowdot[(b,h,t)] = sum_d dO[b,t,h,d] * O[b,t,h,d]   (one warp per row)
__global__ void attention_rowdot_kernel(const bf16* dO, const bf16* O, float* rowdot, int B, int T, int H, int Dh) {
    int64_t row = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) / 32;
    int lane = threadIdx.x % 32;
    if (row >= int64_t(B) * H * T) return;
    int t = int(row % T), h = int((row / T) % H), b = int(row / (int64_t(T) * H));
    int64_t base = ((int64_t(b) * T + t) * H + h) * Dh;
    float acc = 0;
    for (int d = lane; d < Dh; d += 32) acc += __bfloat162float(dO[base + d]) * __bfloat162float(O[base + d]);
    for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffff, acc, o);
    if (lane == 0) rowdot[row] = acc;
}

// act = silu(g) * u,  silu(g) = g * sigmoid(g)
__global__ void swiglu_forward_kernel(const bf16* g, const bf16* u, bf16* act, int64_t n) {
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
        float x = __bfloat162float(g[i]);
        act[i] = __float2bfloat16(x / (1.0f + __expf(-x)) * __bfloat162float(u[i]));
    }
}

// dg = dact * u * sigmoid(g) * (1 + g * (1 - sigmoid(g))),  du = dact * silu(g)
__global__ void swiglu_backward_kernel(const bf16* g, const bf16* u, const bf16* dact, bf16* dg, bf16* du, int64_t n) {
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
        float x = __bfloat162float(g[i]), s = 1.0f / (1.0f + __expf(-x)), d = __bfloat162float(dact[i]);
        dg[i] = __float2bfloat16(d * __bfloat162float(u[i]) * s * (1.0f + x * (1.0f - s)));
        du[i] = __float2bfloat16(d * x * s);
    }
}

// targets[n] = labels[n + 1] within a row, -100 at its last position (HF's shift)
__global__ void shift_labels_kernel(const int32_t* labels, int32_t* targets, int64_t N, int T) {
    for (int64_t n = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; n < N; n += int64_t(gridDim.x) * blockDim.x)
        targets[n] = (n % T == T - 1) ? -100 : labels[n + 1];
}

// Cross-entropy of one row of logits:  loss = logsumexp(z) - z[target];
// dz = (softmax(z) - onehot(target)) / divisor  (0 for rows without a target).  One block per row.
__global__ void cross_entropy_kernel(const float* logits, const int32_t* targets, bf16* dlogits, float* row_loss, int V,
                                     float inv_divisor, bool backward) {
    int64_t row = blockIdx.x;
    const float* z = logits + row * V;
    int target = targets[row];
    if (target < 0) {
        if (threadIdx.x == 0) row_loss[row] = 0.0f;
        if (backward)
            for (int j = threadIdx.x; j < V; j += blockDim.x) dlogits[row * V + j] = __float2bfloat16(0.0f);
        return;
    }
    float m = -INFINITY;
    for (int j = threadIdx.x; j < V; j += blockDim.x) m = fmaxf(m, z[j]);
    m = block_max(m);
    float sum = 0;
    for (int j = threadIdx.x; j < V; j += blockDim.x) sum += __expf(z[j] - m);
    float lse = m + logf(block_sum(sum));
    if (threadIdx.x == 0) row_loss[row] = lse - z[target];
    if (backward)
        for (int j = threadIdx.x; j < V; j += blockDim.x)
            dlogits[row * V + j] = __float2bfloat16((__expf(z[j] - lse) - (j == target ? 1.0f : 0.0f)) * inv_divisor);
}

// sum += sum of x[0..n)   (one block, a fixed order: deterministic)
__global__ void sum_kernel(const float* x, int n, float* sum) {
    float acc = 0;
    for (int i = threadIdx.x; i < n; i += blockDim.x) acc += x[i];
    acc = block_sum(acc);
    if (threadIdx.x == 0) *sum += acc;
}

}  // namespace

// ================================================================================================ launchers

void embedding_forward(const int32_t* ids, const bf16* E, bf16* h, int64_t N, int D, cudaStream_t s) {
    embedding_forward_kernel<<<blocks_for(N * D), kThreads, 0, s>>>(ids, E, h, N, D);
    check_launch("embedding_forward_kernel");
}
void embedding_backward(const int32_t* ids, const bf16* dh, float* dE, int64_t N, int D, cudaStream_t s) {
    embedding_backward_kernel<<<blocks_for(D), kThreads, 0, s>>>(ids, dh, dE, N, D);
    check_launch("embedding_backward_kernel");
}
void rmsnorm_forward(const bf16* x, const bf16* w, bf16* y, float* rstd, int64_t N, int D, float eps, cudaStream_t s) {
    rmsnorm_forward_kernel<<<unsigned(N), kThreads, 0, s>>>(x, w, y, rstd, D, eps);
    check_launch("rmsnorm_forward_kernel");
}
void rmsnorm_backward(const bf16* x, const bf16* w, const float* rstd, const bf16* dy, const bf16* residual, bf16* dx,
                      float* dw, float* dw_partial, int64_t N, int D, cudaStream_t s) {
    rmsnorm_backward_kernel<<<unsigned(N), kThreads, 0, s>>>(x, w, rstd, dy, residual, dx, D);
    check_launch("rmsnorm_backward_kernel");
    if (!dw) return;
    rmsnorm_weight_partial_kernel<<<dim3(unsigned(blocks_for(D)), kNormPartials), kThreads, 0, s>>>(x, rstd, dy, dw_partial, N, D);
    check_launch("rmsnorm_weight_partial_kernel");
    rmsnorm_weight_sum_kernel<<<blocks_for(D), kThreads, 0, s>>>(dw_partial, dw, kNormPartials, D);
    check_launch("rmsnorm_weight_sum_kernel");
}
void rope_forward(const bf16* x, bf16* out, const float* cos_t, const float* sin_t, int B, int T, int nh, int Dh,
                  bool rotate, cudaStream_t s) {
    rope_kernel<<<blocks_for(int64_t(B) * T * nh * (Dh / 2)), kThreads, 0, s>>>(x, out, cos_t, sin_t, B, T, nh, Dh, rotate, true);
    check_launch("rope_kernel");
}
void rope_backward(const bf16* dout, bf16* dx, const float* cos_t, const float* sin_t, int B, int T, int nh, int Dh,
                   bool rotate, cudaStream_t s) {
    rope_kernel<<<blocks_for(int64_t(B) * T * nh * (Dh / 2)), kThreads, 0, s>>>(dout, dx, cos_t, sin_t, B, T, nh, Dh, rotate, false);
    check_launch("rope_kernel");
}
void swiglu_forward(const bf16* g, const bf16* u, bf16* act, int64_t n, cudaStream_t s) {
    swiglu_forward_kernel<<<blocks_for(n), kThreads, 0, s>>>(g, u, act, n);
    check_launch("swiglu_forward_kernel");
}
void swiglu_backward(const bf16* g, const bf16* u, const bf16* dact, bf16* dg, bf16* du, int64_t n, cudaStream_t s) {
    swiglu_backward_kernel<<<blocks_for(n), kThreads, 0, s>>>(g, u, dact, dg, du, n);
    check_launch("swiglu_backward_kernel");
}
void shift_labels(const int32_t* labels, int32_t* targets, int64_t N, int T, cudaStream_t s) {
    shift_labels_kernel<<<blocks_for(N), kThreads, 0, s>>>(labels, targets, N, T);
    check_launch("shift_labels_kernel");
}
void cross_entropy(const float* logits, const int32_t* targets, bf16* dlogits, float* row_loss, float* loss_sum, int rows,
                   int V, float inv_divisor, bool backward, cudaStream_t s) {
    cross_entropy_kernel<<<unsigned(rows), 1024, 0, s>>>(logits, targets, dlogits, row_loss, V, inv_divisor, backward);
    check_launch("cross_entropy_kernel");
    sum_kernel<<<1, 1024, 0, s>>>(row_loss, rows, loss_sum);
    check_launch("sum_kernel");
}

AttentionShape::AttentionShape(int B_, int T_, int H_, int KVH_, int Dh_, int64_t budget_bytes)
    : B(B_), T(T_), H(H_), KVH(KVH_), Dh(Dh_) {
    int64_t per_block = int64_t(H / KVH) * T * T * 6;  // fp32 scores + bf16 probabilities
    chunk = int(std::max<int64_t>(1, std::min<int64_t>(int64_t(B) * KVH, budget_bytes / per_block)));
}
int64_t AttentionShape::scratch_elems() const { return int64_t(chunk) * (H / KVH) * T * T; }

// For each (batch b, kv head g): the group's queries Q_bg [group*T, Dh] (rows t of head g*group+j are at
// j*T + t in [B,H,T,Dh]) against K_bg, V_bg [T, Dh]:  S = Q K^T,  P = causal softmax(S / sqrt(Dh)),  O = P V.
void attention_forward(const Gemm& gm, const AttentionShape& a, const bf16* qt, const bf16* kt, const bf16* vt, bf16* ot,
                       float* lse, float* scores, bf16* probs) {
    int group = a.H / a.KVH, T = a.T, Dh = a.Dh;
    int64_t q_block = int64_t(group) * T * Dh, kv_block = int64_t(T) * Dh, s_block = int64_t(group) * T * T;
    float scale = 1.0f / std::sqrt(float(Dh));
    for (int p0 = 0; p0 < a.B * a.KVH; p0 += a.chunk) {  // p = b * KVH + g
        int n = std::min(a.chunk, a.B * a.KVH - p0);
        gemm(gm, false, true, group * T, T, Dh, qt + p0 * q_block, Dh, kt + p0 * kv_block, Dh, scores, true, T, 1.0f, 0.0f,
             n, q_block, kv_block, s_block);
        causal_softmax_kernel<<<unsigned(n * group * T), kThreads, 0, gm.stream>>>(scores, probs, lse + p0 * int64_t(group) * T, T, scale);
        check_launch("causal_softmax_kernel");
        gemm(gm, false, false, group * T, Dh, T, probs, T, vt + p0 * kv_block, Dh, ot + p0 * q_block, false, Dh, 1.0f, 0.0f, n,
             s_block, kv_block, q_block);
    }
}

// Recomputes P from S and lse, then  dV = P^T dO,  dP = dO V^T,  dS = P (dP - rowdot) / sqrt(Dh),
// dQ = dS K,  dK = dS^T Q;  rowdot = sum_d dO * O per query row. o and d_o are [B,T,H,Dh]; d_ot is d_o
// as [B,H,T,Dh].
void attention_backward(const Gemm& gm, const AttentionShape& a, const bf16* qt, const bf16* kt, const bf16* vt,
                        const bf16* o, const bf16* d_o, const bf16* d_ot, const float* lse, bf16* dqt, bf16* dkt,
                        bf16* dvt, float* rowdot, float* scores, bf16* probs) {
    int group = a.H / a.KVH, T = a.T, Dh = a.Dh;
    int64_t q_block = int64_t(group) * T * Dh, kv_block = int64_t(T) * Dh, s_block = int64_t(group) * T * T;
    float scale = 1.0f / std::sqrt(float(Dh));
    attention_rowdot_kernel<<<blocks_for(int64_t(a.B) * T * a.H * 32), kThreads, 0, gm.stream>>>(d_o, o, rowdot, a.B, T, a.H, Dh);
    check_launch("attention_rowdot_kernel");
    for (int p0 = 0; p0 < a.B * a.KVH; p0 += a.chunk) {
        int n = std::min(a.chunk, a.B * a.KVH - p0);
        const bf16 *q = qt + p0 * q_block, *k = kt + p0 * kv_block, *v = vt + p0 * kv_block, *dO = d_ot + p0 * q_block;
        unsigned rows = unsigned(n * group * T);
        gemm(gm, false, true, group * T, T, Dh, q, Dh, k, Dh, scores, true, T, 1.0f, 0.0f, n, q_block, kv_block, s_block);
        causal_probs_kernel<<<rows, kThreads, 0, gm.stream>>>(scores, lse + p0 * int64_t(group) * T, probs, T, scale);
        check_launch("causal_probs_kernel");
        gemm(gm, true, false, T, Dh, group * T, probs, T, dO, Dh, dvt + p0 * kv_block, false, Dh, 1.0f, 0.0f, n, s_block,
             q_block, kv_block);
        gemm(gm, false, true, group * T, T, Dh, dO, Dh, v, Dh, scores, true, T, 1.0f, 0.0f, n, q_block, kv_block, s_block);
        softmax_backward_kernel<<<rows, kThreads, 0, gm.stream>>>(scores, rowdot + p0 * int64_t(group) * T, probs, T, scale);
        check_launch("softmax_backward_kernel");
        gemm(gm, false, false, group * T, Dh, T, probs, T, k, Dh, dqt + p0 * q_block, false, Dh, 1.0f, 0.0f, n, s_block,
             kv_block, q_block);
        gemm(gm, true, false, T, Dh, group * T, probs, T, q, Dh, dkt + p0 * kv_block, false, Dh, 1.0f, 0.0f, n, s_block,
             q_block, kv_block);
    }
}

// ================================================================================================ model

struct LlamaModel::Layer {  // what backward needs of one layer's forward
    const bf16* h = nullptr;  // input (a slice of hidden_)
    bf16 *n, *qt, *kt, *vt, *o, *a, *m, *g, *u, *act;
    float *rstd1, *rstd2, *lse;
    bf16* lora_u[kTargets] = {};  // x A^T of each adapted projection
};

namespace {

struct LayerWeights {  // pointers into one gathered layer unit (parameter_specs order)
    const bf16 *norm1, *q, *k, *v, *o, *norm2, *gate, *up, *down;
    float *dnorm1, *dq, *dk, *dv, *do_, *dnorm2, *dgate, *dup, *ddown;
};

LayerWeights layer_weights(const LlamaConfig& c, const UnitView& u) {
    int64_t d = c.hidden_size, f = c.intermediate_size, q = int64_t(c.num_attention_heads) * c.head_dim,
            kv = int64_t(c.num_key_value_heads) * c.head_dim;
    const int64_t sizes[9] = {d, q * d, kv * d, kv * d, d * q, d, f * d, f * d, d * f};
    const bf16* w[9];
    float* g[9];
    int64_t off = 0;
    for (int k = 0; k < 9; ++k) {
        w[k] = u.weights + off;
        g[k] = u.grads ? u.grads + off : nullptr;
        off += sizes[k];
    }
    return {w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7], w[8], g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7], g[8]};
}

}  // namespace

LlamaModel::LlamaModel(const LlamaConfig& c, int lora_rank, float lora_scale, int B, int T, cudaStream_t stream, bool recompute)
    : c_(c), r_(lora_rank), lora_scale_(lora_scale), B_(B), T_(T), N_(B * T), stream_(stream), recompute_(recompute),
      attn_(B, T, c.num_attention_heads, c.num_key_value_heads, c.head_dim) {
    gemm_ = gemm_create(stream);
    int64_t N = N_, D = c.hidden_size, F = c.intermediate_size, H = c.num_attention_heads, KVH = c.num_key_value_heads,
            Dh = c.head_dim, Hd = H * Dh, KVd = KVH * Dh, L = c.num_hidden_layers;
    auto alloc_bf16 = [&](int64_t n, const char* what) { activation_bytes_ += size_t(n) * 2; return device_alloc<bf16>(size_t(n), what); };
    auto alloc_f32 = [&](int64_t n, const char* what) { activation_bytes_ += size_t(n) * 4; return device_alloc<float>(size_t(n), what); };
    hidden_ = alloc_bf16((L + 1) * N * D, "activations (hidden states)");
    for (int l = 0; l < (recompute ? 1 : L); ++l) {  // with recompute, one set serves every layer
        Layer* a = new Layer();
        a->n = alloc_bf16(N * D, "activations"), a->a = alloc_bf16(N * D, "activations"), a->m = alloc_bf16(N * D, "activations");
        a->qt = alloc_bf16(N * Hd, "activations"), a->o = alloc_bf16(N * Hd, "activations");
        a->kt = alloc_bf16(N * KVd, "activations"), a->vt = alloc_bf16(N * KVd, "activations");
        a->g = alloc_bf16(N * F, "activations"), a->u = alloc_bf16(N * F, "activations"), a->act = alloc_bf16(N * F, "activations");
        a->rstd1 = alloc_f32(N, "activations"), a->rstd2 = alloc_f32(N, "activations"), a->lse = alloc_f32(N * H, "activations");
        if (r_ > 0)
            for (int t = 0; t < kTargets; ++t) a->lora_u[t] = alloc_bf16(N * r_, "LoRA activations");
        layers_.push_back(a);
    }
    final_norm_ = alloc_bf16(N * D, "activations");
    final_rstd_ = alloc_f32(N, "activations");
    d_hidden_ = alloc_bf16(N * D, "gradient scratch"), d_a_ = alloc_bf16(N * D, "gradient scratch");
    d_n_ = alloc_bf16(N * D, "gradient scratch");
    d_ff_ = alloc_bf16(N * F, "gradient scratch"), d_g_ = alloc_bf16(N * F, "gradient scratch"), d_u_ = alloc_bf16(N * F, "gradient scratch");
    d_q_ = alloc_bf16(N * Hd, "gradient scratch"), d_k_ = alloc_bf16(N * KVd, "gradient scratch");
    d_v_ = alloc_bf16(N * KVd, "gradient scratch");
    d_qt_ = alloc_bf16(N * Hd, "gradient scratch"), d_kt_ = alloc_bf16(N * KVd, "gradient scratch");
    d_vt_ = alloc_bf16(N * KVd, "gradient scratch"), d_ot_ = alloc_bf16(N * Hd, "gradient scratch");
    if (r_ > 0) lora_du_ = alloc_bf16(N * r_, "LoRA scratch");
    attn_scores_ = alloc_f32(attn_.scratch_elems(), "attention scores");
    attn_probs_ = alloc_bf16(attn_.scratch_elems(), "attention scores");
    attn_rowdot_ = alloc_f32(N * H, "attention scratch");
    // The lm_head + cross-entropy works on head_rows_ tokens at a time: fp32 logits never exceed ~256 MiB.
    head_rows_ = int(std::max<int64_t>(1, std::min<int64_t>(N, (256ll << 20) / (int64_t(c.vocab_size) * 6))));
    logits_ = alloc_f32(int64_t(head_rows_) * c.vocab_size, "logits chunk");
    dlogits_ = alloc_bf16(int64_t(head_rows_) * c.vocab_size, "logits chunk");
    targets_ = device_alloc<int32_t>(size_t(N), "targets");
    loss_sum_ = device_alloc<float>(1, "loss");
    row_loss_ = device_alloc<float>(size_t(head_rows_), "loss");
    norm_partial_ = alloc_f32(int64_t(kNormPartials) * D, "gradient scratch");
    check_cuda(cudaMemset(loss_sum_, 0, sizeof(float)), "memset loss");
    // RoPE tables: angle = t * inv_freq[i]; cos and sin rounded to bf16 as HF's are.
    std::vector<float> inv = rope_inv_freq(c), cos_h(size_t(T) * size_t(Dh / 2)), sin_h(cos_h.size());
    for (int t = 0; t < T; ++t)
        for (int i = 0; i < Dh / 2; ++i) {
            float angle = float(t) * inv[size_t(i)];
            cos_h[size_t(t * (Dh / 2) + i)] = bf16_to_float(float_to_bf16(std::cos(angle)));
            sin_h[size_t(t * (Dh / 2) + i)] = bf16_to_float(float_to_bf16(std::sin(angle)));
        }
    rope_cos_ = alloc_f32(int64_t(cos_h.size()), "RoPE table"), rope_sin_ = alloc_f32(int64_t(sin_h.size()), "RoPE table");
    check_cuda(cudaMemcpy(rope_cos_, cos_h.data(), cos_h.size() * 4, cudaMemcpyHostToDevice), "copy RoPE table");
    check_cuda(cudaMemcpy(rope_sin_, sin_h.data(), sin_h.size() * 4, cudaMemcpyHostToDevice), "copy RoPE table");
}

LlamaModel::~LlamaModel() {
    for (Layer* a : layers_) {
        for (void* p : {(void*)a->n, (void*)a->a, (void*)a->m, (void*)a->qt, (void*)a->o, (void*)a->kt, (void*)a->vt,
                        (void*)a->g, (void*)a->u, (void*)a->act, (void*)a->rstd1, (void*)a->rstd2, (void*)a->lse})
            cudaFree(p);
        for (bf16* p : a->lora_u) cudaFree(p);
        delete a;
    }
    for (void* p : {(void*)hidden_, (void*)final_norm_, (void*)final_rstd_, (void*)d_hidden_, (void*)d_a_, (void*)d_n_,
                    (void*)d_ff_, (void*)d_g_, (void*)d_u_, (void*)d_q_, (void*)d_k_, (void*)d_v_, (void*)d_qt_,
                    (void*)d_kt_, (void*)d_vt_, (void*)d_ot_, (void*)lora_du_, (void*)attn_scores_, (void*)attn_probs_,
                    (void*)attn_rowdot_, (void*)logits_, (void*)dlogits_, (void*)targets_, (void*)loss_sum_, (void*)row_loss_, (void*)norm_partial_,
                    (void*)rope_cos_, (void*)rope_sin_})
        cudaFree(p);
    gemm_destroy(gemm_);
}

// y = beta * y + x W^T  (+ s * (x A^T) B^T when the target has an adapter; u = x A^T is kept for backward)
void LlamaModel::linear_forward(const bf16* x, int in, const bf16* W, int out, bf16* y, float beta, LoraTarget t,
                                const LoraLayerView& lora, bf16* lora_u) {
    gemm(gemm_, false, true, N_, out, in, x, in, W, in, y, false, out, 1.0f, beta);
    if (!lora.A[t]) return;
    gemm(gemm_, false, true, N_, r_, in, x, in, lora.A[t], in, lora_u, false, r_, 1.0f, 0.0f);
    gemm(gemm_, false, true, N_, out, r_, lora_u, r_, lora.B[t], r_, y, false, out, lora_scale_, 1.0f);
}

// dx = dx_beta * dx + dy W;  dW += dy^T x when W trains;  LoRA: dB += s dy^T u,  du = s dy B,  dA += du^T x,  dx += du A
void LlamaModel::linear_backward(const bf16* x, int in, const bf16* W, float* dW, int out, const bf16* dy, bf16* dx,
                                 float dx_beta, LoraTarget t, const LoraLayerView& lora, const bf16* lora_u) {
    gemm(gemm_, false, false, N_, in, out, dy, out, W, in, dx, false, in, 1.0f, dx_beta);
    if (dW) gemm(gemm_, true, false, out, in, N_, dy, out, x, in, dW, true, in, 1.0f, 1.0f);
    if (!lora.A[t]) return;
    gemm(gemm_, true, false, out, r_, N_, dy, out, lora_u, r_, lora.dB[t], true, r_, lora_scale_, 1.0f);
    gemm(gemm_, false, false, N_, r_, out, dy, out, lora.B[t], r_, lora_du_, false, r_, lora_scale_, 0.0f);
    gemm(gemm_, true, false, r_, in, N_, lora_du_, r_, x, in, lora.dA[t], true, in, 1.0f, 1.0f);
    gemm(gemm_, false, false, N_, in, r_, lora_du_, r_, lora.A[t], in, dx, false, in, 1.0f, 1.0f);
}

void LlamaModel::layer_forward(int l, const UnitView& uv, const bf16* h_in, bf16* h_out) {
    Layer& a = *layers_[recompute_ ? 0 : size_t(l)];
    LayerWeights w = layer_weights(c_, uv);
    const LoraLayerView& lora = uv.lora;
    int D = c_.hidden_size, F = c_.intermediate_size, H = c_.num_attention_heads, KVH = c_.num_key_value_heads,
        Dh = c_.head_dim, Hd = H * Dh, KVd = KVH * Dh;
    a.h = h_in;
    rmsnorm_forward(h_in, w.norm1, a.n, a.rstd1, N_, D, c_.rms_norm_eps, stream_);
    linear_forward(a.n, D, w.q, Hd, d_q_, 0.0f, kQ, lora, a.lora_u[kQ]);
    linear_forward(a.n, D, w.k, KVd, d_k_, 0.0f, kK, lora, a.lora_u[kK]);
    linear_forward(a.n, D, w.v, KVd, d_v_, 0.0f, kV, lora, a.lora_u[kV]);
    rope_forward(d_q_, a.qt, rope_cos_, rope_sin_, B_, T_, H, Dh, true, stream_);
    rope_forward(d_k_, a.kt, rope_cos_, rope_sin_, B_, T_, KVH, Dh, true, stream_);
    rope_forward(d_v_, a.vt, rope_cos_, rope_sin_, B_, T_, KVH, Dh, false, stream_);
    attention_forward(gemm_, attn_, a.qt, a.kt, a.vt, d_ot_, a.lse, attn_scores_, attn_probs_);
    rope_backward(d_ot_, a.o, rope_cos_, rope_sin_, B_, T_, H, Dh, false, stream_);  // [B,H,T,Dh] -> [B,T,H,Dh]
    check_cuda(cudaMemcpyAsync(a.a, h_in, size_t(N_) * D * 2, cudaMemcpyDeviceToDevice, stream_), "copy residual");
    linear_forward(a.o, Hd, w.o, D, a.a, 1.0f, kO, lora, a.lora_u[kO]);  // a = h + o_proj(o)
    rmsnorm_forward(a.a, w.norm2, a.m, a.rstd2, N_, D, c_.rms_norm_eps, stream_);
    linear_forward(a.m, D, w.gate, F, a.g, 0.0f, kGate, lora, a.lora_u[kGate]);
    linear_forward(a.m, D, w.up, F, a.u, 0.0f, kUp, lora, a.lora_u[kUp]);
    swiglu_forward(a.g, a.u, a.act, int64_t(N_) * F, stream_);
    check_cuda(cudaMemcpyAsync(h_out, a.a, size_t(N_) * D * 2, cudaMemcpyDeviceToDevice, stream_), "copy residual");
    linear_forward(a.act, F, w.down, D, h_out, 1.0f, kDown, lora, a.lora_u[kDown]);  // h_out = a + down_proj(act)
}

void LlamaModel::layer_backward(int l, const UnitView& uv, bf16* dh) {
    Layer& a = *layers_[recompute_ ? 0 : size_t(l)];
    LayerWeights w = layer_weights(c_, uv);
    const LoraLayerView& lora = uv.lora;
    int D = c_.hidden_size, F = c_.intermediate_size, H = c_.num_attention_heads, KVH = c_.num_key_value_heads,
        Dh = c_.head_dim, Hd = H * Dh, KVd = KVH * Dh;
    // MLP: h_out = a + down(silu(gate(m)) * up(m)),  m = rmsnorm(a)
    linear_backward(a.act, F, w.down, w.ddown, D, dh, d_ff_, 0.0f, kDown, lora, a.lora_u[kDown]);
    swiglu_backward(a.g, a.u, d_ff_, d_g_, d_u_, int64_t(N_) * F, stream_);
    linear_backward(a.m, D, w.gate, w.dgate, F, d_g_, d_n_, 0.0f, kGate, lora, a.lora_u[kGate]);
    linear_backward(a.m, D, w.up, w.dup, F, d_u_, d_n_, 1.0f, kUp, lora, a.lora_u[kUp]);
    rmsnorm_backward(a.a, w.norm2, a.rstd2, d_n_, dh, d_a_, w.dnorm2, norm_partial_, N_, D, stream_);
    // Attention: a = h + o_proj(attn(rope(q), rope(k), v)),  q, k, v = projections of n = rmsnorm(h)
    linear_backward(a.o, Hd, w.o, w.do_, D, d_a_, d_q_, 0.0f, kO, lora, a.lora_u[kO]);  // dO as [B,T,H,Dh] in d_q_
    rope_forward(d_q_, d_ot_, rope_cos_, rope_sin_, B_, T_, H, Dh, false, stream_);     // and as [B,H,T,Dh]
    attention_backward(gemm_, attn_, a.qt, a.kt, a.vt, a.o, d_q_, d_ot_, a.lse, d_qt_, d_kt_, d_vt_, attn_rowdot_,
                       attn_scores_, attn_probs_);
    rope_backward(d_qt_, d_q_, rope_cos_, rope_sin_, B_, T_, H, Dh, true, stream_);
    rope_backward(d_kt_, d_k_, rope_cos_, rope_sin_, B_, T_, KVH, Dh, true, stream_);
    rope_backward(d_vt_, d_v_, rope_cos_, rope_sin_, B_, T_, KVH, Dh, false, stream_);
    linear_backward(a.n, D, w.q, w.dq, Hd, d_q_, d_n_, 0.0f, kQ, lora, a.lora_u[kQ]);
    linear_backward(a.n, D, w.k, w.dk, KVd, d_k_, d_n_, 1.0f, kK, lora, a.lora_u[kK]);
    linear_backward(a.n, D, w.v, w.dv, KVd, d_v_, d_n_, 1.0f, kV, lora, a.lora_u[kV]);
    rmsnorm_backward(a.h, w.norm1, a.rstd1, d_n_, d_a_, dh, w.dnorm1, norm_partial_, N_, D, stream_);
}

// Final norm, lm_head and cross-entropy, head_rows_ tokens at a time, so full-vocabulary fp32 logits exist
// only for one chunk. With backward, writes d(h_L) into d_hidden_ and accumulates the head's gradients.
void LlamaModel::head_forward_backward(const DeviceBatch& batch, UnitStore& store, float loss_divisor, bool backward,
                                       float* logits_out) {
    int L = c_.num_hidden_layers, D = c_.hidden_size, V = c_.vocab_size;
    Pass pass = backward ? Pass::backward : Pass::forward;
    UnitView fin = store.gather(L + 1, pass);
    UnitView emb = c_.tie_word_embeddings ? store.gather(0, pass) : UnitView();
    const bf16* norm_w = fin.weights;
    const bf16* head_w = c_.tie_word_embeddings ? emb.weights : fin.weights + D;
    float* head_g = c_.tie_word_embeddings ? emb.grads : (fin.grads ? fin.grads + D : nullptr);
    const bf16* h = hidden_ + int64_t(L) * N_ * D;
    rmsnorm_forward(h, norm_w, final_norm_, final_rstd_, N_, D, c_.rms_norm_eps, stream_);
    shift_labels(batch.labels, targets_, N_, T_, stream_);
    for (int r0 = 0; r0 < N_; r0 += head_rows_) {
        int rows = std::min(head_rows_, N_ - r0);
        const bf16* x = final_norm_ + int64_t(r0) * D;
        gemm(gemm_, false, true, rows, V, D, x, D, head_w, D, logits_, true, V, 1.0f, 0.0f);
        if (logits_out)
            check_cuda(cudaMemcpyAsync(logits_out + int64_t(r0) * V, logits_, size_t(rows) * V * 4, cudaMemcpyDeviceToDevice, stream_),
                       "copy logits");
        cross_entropy(logits_, targets_ + r0, dlogits_, row_loss_, loss_sum_, rows, V, 1.0f / loss_divisor, backward, stream_);
        if (!backward) continue;
        gemm(gemm_, false, false, rows, D, V, dlogits_, V, head_w, D, d_n_ + int64_t(r0) * D, false, D, 1.0f, 0.0f);
        if (head_g) gemm(gemm_, true, false, V, D, rows, dlogits_, V, x, D, head_g, true, D, 1.0f, 1.0f);
    }
    if (backward) {  // d h_L through the final norm (no residual term)
        check_cuda(cudaMemsetAsync(d_a_, 0, size_t(N_) * D * 2, stream_), "memset");
        rmsnorm_backward(h, norm_w, final_rstd_, d_n_, d_a_, d_hidden_, fin.grads, norm_partial_, N_, D, stream_);
    }
    if (c_.tie_word_embeddings) store.release(0);
    store.release(L + 1);
}

// Embedding and every layer: h_0 .. h_L into hidden_, each unit gathered for its turn.
void LlamaModel::forward_layers(const DeviceBatch& batch, UnitStore& store) {
    if (batch.B != B_ || batch.T != T_) exit_with_error("LlamaModel: the batch's shape differs from the model's");
    int L = c_.num_hidden_layers, D = c_.hidden_size;
    UnitView emb = store.gather(0, Pass::forward);
    embedding_forward(batch.ids, emb.weights, hidden_, N_, D, stream_);
    store.release(0);
    for (int l = 0; l < L; ++l) {
        UnitView w = store.gather(l + 1, Pass::forward);
        layer_forward(l, w, hidden_ + int64_t(l) * N_ * D, hidden_ + int64_t(l + 1) * N_ * D);
        store.release(l + 1);
    }
}

void LlamaModel::forward(const DeviceBatch& batch, UnitStore& store, float* logits) {
    forward_layers(batch, store);
    head_forward_backward(batch, store, 1.0f, false, logits);
}

void LlamaModel::forward_backward(const DeviceBatch& batch, UnitStore& store, float loss_divisor) {
    int L = c_.num_hidden_layers, D = c_.hidden_size;
    forward_layers(batch, store);
    head_forward_backward(batch, store, loss_divisor, true, nullptr);
    store.reduce_grads(L + 1);
    for (int l = L - 1; l >= 0; --l) {
        UnitView w = store.gather(l + 1, Pass::backward);
        if (recompute_)  // activation checkpointing: rebuild this layer's activations from its saved input
            layer_forward(l, w, hidden_ + int64_t(l) * N_ * D, hidden_ + int64_t(l + 1) * N_ * D);
        layer_backward(l, w, d_hidden_);
        store.release(l + 1);
        store.reduce_grads(l + 1);
    }
    UnitView emb = store.gather(0, Pass::backward);
    if (emb.grads) embedding_backward(batch.ids, d_hidden_, emb.grads, N_, D, stream_);
    store.release(0);
    store.reduce_grads(0);
}

// ================================================================================================ generation

namespace {

// out[h] = sum_j softmax_j(q[h] . k[g, j] / sqrt(Dh)) v[g, j] over positions j < len  (one block per head)
__global__ void decode_attention_kernel(const bf16* q, const bf16* k_cache, const bf16* v_cache, bf16* out, int len,
                                        int max_len, int group, int Dh) {
    extern __shared__ float scores[];  // [len]
    int h = blockIdx.x, g = h / group;
    const bf16* qh = q + int64_t(h) * Dh;
    const bf16 *kg = k_cache + int64_t(g) * max_len * Dh, *vg = v_cache + int64_t(g) * max_len * Dh;
    float scale = rsqrtf(float(Dh));
    for (int j = threadIdx.x; j < len; j += blockDim.x) {
        float acc = 0;
        for (int d = 0; d < Dh; ++d) acc += __bfloat162float(qh[d]) * __bfloat162float(kg[int64_t(j) * Dh + d]);
        scores[j] = acc * scale;
    }
    __syncthreads();
    float m = -INFINITY;
    for (int j = threadIdx.x; j < len; j += blockDim.x) m = fmaxf(m, scores[j]);
    m = block_max(m);
    float sum = 0;
    for (int j = threadIdx.x; j < len; j += blockDim.x) sum += __expf(scores[j] - m);
    sum = block_sum(sum);
    for (int d = threadIdx.x; d < Dh; d += blockDim.x) {
        float acc = 0;
        for (int j = 0; j < len; ++j) acc += __expf(scores[j] - m) * __bfloat162float(vg[int64_t(j) * Dh + d]);
        out[int64_t(h) * Dh + d] = __float2bfloat16(acc / sum);
    }
}

}  // namespace

Generator::Generator(const LlamaConfig& c, int lora_rank, float lora_scale, int max_len, cudaStream_t stream)
    : c_(c), r_(lora_rank), max_len_(max_len), scale_(lora_scale), stream_(stream) {
    gemm_ = gemm_create(stream);
    int64_t L = c.num_hidden_layers, D = c.hidden_size, F = c.intermediate_size, Hd = int64_t(c.num_attention_heads) * c.head_dim,
            KVd = int64_t(c.num_key_value_heads) * c.head_dim;
    k_cache_ = device_alloc<bf16>(size_t(L * KVd * max_len), "KV cache");
    v_cache_ = device_alloc<bf16>(size_t(L * KVd * max_len), "KV cache");
    h_ = device_alloc<bf16>(size_t(D), "generation"), n_ = device_alloc<bf16>(size_t(D), "generation");
    q_ = device_alloc<bf16>(size_t(Hd), "generation"), qt_ = device_alloc<bf16>(size_t(Hd), "generation");
    att_ = device_alloc<bf16>(size_t(Hd), "generation");
    k_ = device_alloc<bf16>(size_t(KVd), "generation"), v_ = device_alloc<bf16>(size_t(KVd), "generation");
    kt_ = device_alloc<bf16>(size_t(KVd), "generation");
    g_ = device_alloc<bf16>(size_t(F), "generation"), u_ = device_alloc<bf16>(size_t(F), "generation");
    act_ = device_alloc<bf16>(size_t(F), "generation");
    lora_u_ = device_alloc<bf16>(size_t(std::max(1, r_)), "generation");
    rstd_ = device_alloc<float>(1, "generation");
    logits_ = device_alloc<float>(size_t(c.vocab_size), "generation");
    token_ = device_alloc<int32_t>(1, "generation");
    std::vector<float> inv = rope_inv_freq(c), cos_h(size_t(max_len) * size_t(c.head_dim / 2)), sin_h(cos_h.size());
    for (int t = 0; t < max_len; ++t)
        for (int i = 0; i < c.head_dim / 2; ++i) {
            float angle = float(t) * inv[size_t(i)];
            cos_h[size_t(t * (c.head_dim / 2) + i)] = bf16_to_float(float_to_bf16(std::cos(angle)));
            sin_h[size_t(t * (c.head_dim / 2) + i)] = bf16_to_float(float_to_bf16(std::sin(angle)));
        }
    rope_cos_ = device_alloc<float>(cos_h.size(), "RoPE table"), rope_sin_ = device_alloc<float>(sin_h.size(), "RoPE table");
    check_cuda(cudaMemcpy(rope_cos_, cos_h.data(), cos_h.size() * 4, cudaMemcpyHostToDevice), "copy RoPE table");
    check_cuda(cudaMemcpy(rope_sin_, sin_h.data(), sin_h.size() * 4, cudaMemcpyHostToDevice), "copy RoPE table");
}

Generator::~Generator() {
    for (void* p : {(void*)k_cache_, (void*)v_cache_, (void*)h_, (void*)n_, (void*)q_, (void*)qt_, (void*)att_, (void*)k_,
                    (void*)v_, (void*)kt_, (void*)g_, (void*)u_, (void*)act_, (void*)lora_u_, (void*)rstd_, (void*)logits_,
                    (void*)token_, (void*)rope_cos_, (void*)rope_sin_})
        cudaFree(p);
    gemm_destroy(gemm_);
}

void Generator::linear(const bf16* x, int in, const bf16* W, int out, bf16* y, float beta, LoraTarget t,
                       const LoraLayerView& lora) {
    gemm(gemm_, false, true, 1, out, in, x, in, W, in, y, false, out, 1.0f, beta);
    if (!lora.A[t]) return;
    gemm(gemm_, false, true, 1, r_, in, x, in, lora.A[t], in, lora_u_, false, r_, 1.0f, 0.0f);
    gemm(gemm_, false, true, 1, out, r_, lora_u_, r_, lora.B[t], r_, y, false, out, scale_, 1.0f);
}

void Generator::step(UnitStore& store, int32_t token, int pos, bool want_logits) {
    int L = c_.num_hidden_layers, D = c_.hidden_size, F = c_.intermediate_size, H = c_.num_attention_heads,
        KVH = c_.num_key_value_heads, Dh = c_.head_dim, Hd = H * Dh, KVd = KVH * Dh, half = Dh / 2;
    check_cuda(cudaMemcpyAsync(token_, &token, 4, cudaMemcpyHostToDevice, stream_), "copy token");
    UnitView emb = store.gather(0, Pass::forward);
    embedding_forward(token_, emb.weights, h_, 1, D, stream_);
    store.release(0);
    for (int l = 0; l < L; ++l) {
        UnitView u = store.gather(l + 1, Pass::forward);
        LayerWeights w = layer_weights(c_, u);
        bf16 *kc = k_cache_ + int64_t(l) * KVd * max_len_, *vc = v_cache_ + int64_t(l) * KVd * max_len_;
        rmsnorm_forward(h_, w.norm1, n_, rstd_, 1, D, c_.rms_norm_eps, stream_);
        linear(n_, D, w.q, Hd, q_, 0.0f, kQ, u.lora);
        linear(n_, D, w.k, KVd, k_, 0.0f, kK, u.lora);
        linear(n_, D, w.v, KVd, v_, 0.0f, kV, u.lora);
        rope_forward(q_, qt_, rope_cos_ + pos * half, rope_sin_ + pos * half, 1, 1, H, Dh, true, stream_);
        rope_forward(k_, kt_, rope_cos_ + pos * half, rope_sin_ + pos * half, 1, 1, KVH, Dh, true, stream_);
        // append this position's keys and values: head g's row `pos` of the cache
        check_cuda(cudaMemcpy2DAsync(kc + int64_t(pos) * Dh, size_t(max_len_) * Dh * 2, kt_, size_t(Dh) * 2, size_t(Dh) * 2,
                                     size_t(KVH), cudaMemcpyDeviceToDevice, stream_), "KV cache");
        check_cuda(cudaMemcpy2DAsync(vc + int64_t(pos) * Dh, size_t(max_len_) * Dh * 2, v_, size_t(Dh) * 2, size_t(Dh) * 2,
                                     size_t(KVH), cudaMemcpyDeviceToDevice, stream_), "KV cache");
        decode_attention_kernel<<<unsigned(H), 128, size_t(pos + 1) * 4, stream_>>>(qt_, kc, vc, att_, pos + 1, max_len_, H / KVH, Dh);
        check_launch("decode_attention_kernel");
        linear(att_, Hd, w.o, D, h_, 1.0f, kO, u.lora);
        rmsnorm_forward(h_, w.norm2, n_, rstd_, 1, D, c_.rms_norm_eps, stream_);
        linear(n_, D, w.gate, F, g_, 0.0f, kGate, u.lora);
        linear(n_, D, w.up, F, u_, 0.0f, kUp, u.lora);
        swiglu_forward(g_, u_, act_, F, stream_);
        linear(act_, F, w.down, D, h_, 1.0f, kDown, u.lora);
        store.release(l + 1);
    }
    if (!want_logits) return;
    UnitView fin = store.gather(L + 1, Pass::forward);
    UnitView head = c_.tie_word_embeddings ? store.gather(0, Pass::forward) : fin;
    rmsnorm_forward(h_, fin.weights, n_, rstd_, 1, D, c_.rms_norm_eps, stream_);
    gemm(gemm_, false, true, 1, c_.vocab_size, D, n_, D, c_.tie_word_embeddings ? head.weights : fin.weights + D, D, logits_, true,
         c_.vocab_size, 1.0f, 0.0f);
    if (c_.tie_word_embeddings) store.release(0);
    store.release(L + 1);
}

std::vector<int32_t> Generator::generate(UnitStore& store, const std::vector<int32_t>& prompt, int max_new, float temperature,
                                         float top_p, uint64_t seed) {
    std::vector<int32_t> out = prompt;
    if (prompt.empty()) return out;
    Rng rng(seed);
    std::vector<float> logits(size_t(c_.vocab_size));
    for (int pos = 0; pos < int(out.size()) && pos < max_len_; ++pos) {
        bool last = pos == int(out.size()) - 1;
        step(store, out[size_t(pos)], pos, last);
        if (!last) continue;
        if (int(out.size()) - int(prompt.size()) >= max_new || int(out.size()) >= max_len_) break;
        check_cuda(cudaMemcpyAsync(logits.data(), logits_, logits.size() * 4, cudaMemcpyDeviceToHost, stream_), "copy logits");
        check_cuda(cudaStreamSynchronize(stream_), "generate");
        int32_t next = int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin());
        if (temperature > 0) {  // nucleus sampling
            std::vector<std::pair<float, int32_t>> p;
            float m = logits[size_t(next)], sum = 0;
            for (int32_t i = 0; i < c_.vocab_size; ++i) {
                float e = std::exp((logits[size_t(i)] - m) / temperature);
                if (e > 1e-8f) p.push_back({e, i}), sum += e;
            }
            std::sort(p.begin(), p.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
            float keep = 0, cut = top_p * sum;
            size_t n = 0;
            while (n < p.size() && keep < cut) keep += p[n++].first;
            float r = rng.uniform() * keep;
            for (size_t i = 0; i < n; ++i)
                if ((r -= p[i].first) <= 0 || i + 1 == n) { next = p[i].second; break; }
        }
        out.push_back(next);
        if (std::find(c_.eos_token_ids.begin(), c_.eos_token_ids.end(), next) != c_.eos_token_ids.end()) break;
    }
    return out;
}
