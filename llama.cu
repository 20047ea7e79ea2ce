// llama.cu — the Llama model (Touvron et al. 2023; HF's LlamaForCausalLM) on weights it borrows unit by
// unit from a UnitStore (llama.h). Per row of tokens:
//   h_0 = embed[ids]
//   for each layer:  a = h + o_proj(attn(rope(q_proj(n)), rope(k_proj(n)), v_proj(n))),   n = rmsnorm(h)
//                    h = a + down_proj(silu(gate_proj(m)) * up_proj(m)),                    m = rmsnorm(a)
//   logits = lm_head(rmsnorm(h_L))   (lm_head = embed when tied);  loss = mean CE over labels != -100
// Qwen3 (config qk_norm) is this model with q_proj(n) -> q_norm(q_proj(n)) and k likewise before RoPE: an
// RMSNorm over each head's head_dim, its weight shared by the heads (HF's Qwen3ForCausalLM).
// Every projection may carry a LoRA adapter:  y = x W^T + s (x_d A^T) B^T  (lora.h; x_d: x after dropout).
// Where the layout gives the weights room (lora.h with_lora_slots: training's all but o_proj), the adapter's
// term rides in the base product: y = [x | u] [W | s B]^T, and in backward [dx | du] = dy [W | s B].
// The call order of a training micro-batch (forward_backward), each unit gathered for its turn:
//   embedding_forward, layer_forward for l = 0..L-1, head (final norm, lm_head, cross-entropy and their
//   backward, chunk by chunk), then for l = L-1..0: layer_forward again when recomputing, layer_backward,
//   reduce_grads; last embedding_backward. A layer: rmsnorm, q/k/v projections, (Qwen3: q/k norms,) rope,
//   attention, o_proj (+ h), rmsnorm, gate/up projections, swiglu, down_proj (+ a); backward reverses them.
//   Generation (decode) runs the same passes, one token a row, through a KV cache.
// Sections: the activation arena (carve), the projections (base weight plus adapters), a layer forward and
// backward, the head and the passes. The ops are kernels/ops.h, attention.h, gemm.h.
#include "llama.h"

#include <algorithm>

#include "kernels/ops.h"
#include "support/cuda_calls.h"

// ================================================================================================ the activation arena

struct LlamaModel::Layer {  // what backward needs of one layer's forward (rows N = B*T)
    const bf16* h = nullptr;          // [N, D] input (a slice of hidden_)
    bf16* n = nullptr;                // [N, D + P] rmsnorm(h), and x A^T of q, k, v in the P columns when folded (fold_columns)
    float* rstd1 = nullptr;           // [N]
    bf16* q = nullptr;                // [N, H*Dh] q_proj(n) (then q_norm), rotated
    bf16* k = nullptr;                // [N, KVH*Dh] k_proj(n) (then k_norm), rotated
    bf16 *qp = nullptr, *kp = nullptr;  // qk_norm: [N, H*Dh], [N, KVH*Dh] q_proj(n), k_proj(n) before the norms
    float *rstd_q = nullptr, *rstd_k = nullptr;  // qk_norm: [N*H], [N*KVH]
    bf16* v = nullptr;                // [N, KVH*Dh] v_proj(n)
    bf16* o = nullptr;                // [N, H*Dh] attention output
    float* lse = nullptr;             // [B, H, T] log-sum-exp of each attention row
    bf16* a = nullptr;                // [N, D] h + o_proj(o)
    bf16* m = nullptr;                // [N, D + P] rmsnorm(a), and x A^T of gate, up in the P columns when folded
    float* rstd2 = nullptr;           // [N]
    bf16 *g = nullptr, *u = nullptr;  // [N, F] gate_proj(m), up_proj(m)
    bf16* act = nullptr;              // [N, F + P] silu(g) * u, and x A^T of down in the P columns when folded
    bf16* lora_u[kGroups] = {};       // [N, c * group size] x A^T of each adapted projection, by input group (c = lora_columns()); null when folded
};

struct LlamaModel::GradScratch {  // gradients flowing back through one layer, reused by every layer
    bf16* h = nullptr;                // [N, D] in: d h_out; out: d h_in
    bf16 *a = nullptr, *n = nullptr;  // [N, D] d a; [N, D + P] d n (and d m), and d u in the P columns when folded
    bf16 *act = nullptr, *g = nullptr, *u = nullptr;  // [N, F + P] d act (and d u of down when folded); [N, F] d g, d u
    bf16 *q = nullptr, *o = nullptr;  // [N, H*Dh] d q, d o
    bf16 *k = nullptr, *v = nullptr;  // [N, KVH*Dh]
    bf16* lora_u = nullptr;           // [N, 3 c] d u of the adapters of the group being differentiated
};

// Every activation and scratch buffer with its size, carved in order from one allocation. Called once
// with base = null to count the bytes, once more to hand out the pointers: the one list of buffers.
void LlamaModel::carve(char* base) {
    size_t at = 0;
    auto take = [&](auto*& p, int64_t count) {
        at = (at + 255) / 256 * 256;
        p = base ? reinterpret_cast<std::remove_reference_t<decltype(p)>>(base + at) : nullptr;
        at += size_t(count) * sizeof(*p);
    };
    int64_t N = N_, D = c_.hidden_size, F = c_.intermediate_size, H = c_.num_attention_heads, Hd = H * c_.head_dim,
            KVd = int64_t(c_.num_key_value_heads) * c_.head_dim, L = c_.num_hidden_layers, r = lora_.rank, V = c_.vocab_size;
    take(hidden_, (L + 1) * N * D);
    for (Layer& a : layers_) {
        take(a.n, N * (D + fold_columns(kGroupQKV))), take(a.rstd1, N), take(a.q, N * Hd), take(a.k, N * KVd), take(a.v, N * KVd), take(a.o, N * Hd);
        take(a.lse, N * H), take(a.a, N * D), take(a.m, N * (D + fold_columns(kGroupGateUp))), take(a.rstd2, N);
        take(a.g, N * F), take(a.u, N * F), take(a.act, N * (F + fold_columns(kGroupDown)));
        if (c_.qk_norm) take(a.qp, N * Hd), take(a.kp, N * KVd), take(a.rstd_q, N * H), take(a.rstd_k, N * KVd / c_.head_dim);
        if (r > 0)
            for (int g = 0; g < kGroups; ++g)
                if (!fold_columns(g)) take(a.lora_u[g], N * lora_columns() * kGroup[g].size);
    }
    GradScratch& d = *grad_;
    take(d.h, N * D), take(d.a, N * D), take(d.n, N * (D + std::max(fold_columns(kGroupQKV), fold_columns(kGroupGateUp)))), take(d.act, N * (F + fold_columns(kGroupDown))), take(d.g, N * F), take(d.u, N * F);
    take(d.q, N * Hd), take(d.o, N * Hd), take(d.k, N * KVd), take(d.v, N * KVd);
    if (r > 0) take(d.lora_u, N * lora_columns() * 3);
    if (r > 0 && lora_.dropout > 0) take(lora_x_, N * std::max({D, F, Hd})), take(lora_dx_, N * std::max({D, F, Hd}));
    take(final_norm_, N * D), take(final_rstd_, N), take(positions_, N), take(decode_io_, 2 * N);
    take(rope_cos_, int64_t(max_position_) * (c_.head_dim / 2)), take(rope_sin_, int64_t(max_position_) * (c_.head_dim / 2));
    take(logits_, int64_t(head_rows_) * V);
    take(targets_, N), take(loss_sum_, 1), take(row_loss_, head_rows_);
    take(norm_partial_, int64_t(kNormPartials) * std::max(D, c_.qk_norm ? Hd : 0));  // q_norm's dw views q as [N, H*Dh]
    arena_bytes_ = at;
}

// Sizes every buffer and counts the arena (carve with no base); allocates nothing, touches no GPU.
LlamaModel::LlamaModel(const LlamaConfig& c, LoraShape lora, int B, int T, bool recompute, int max_position, CountOnly)
    : c_(c), lora_(lora), B_(B), T_(T), N_(B * T), max_position_(std::max(T, max_position)), recompute_(recompute) {
    for (int t = 0; t < kLayerTensors; ++t) layer_offset_[t] = layer_tensor_offset(c, LayerTensor(t));
    for (int t = 0; t < kTargets; ++t) projection_out_[t] = int(layer_tensor_shape(c, kProjection[t])[0]);  // W: [out, in]
    for (int t = 0; t < kLayerTensors; ++t)  // padded rows only where fold_columns reads them: with adapters, not o_proj's
        if (c.row_pad[t] && (lora.rank == 0 || t == kOProj || layer_tensor_shape(c, LayerTensor(t)).size() != 2))
            exit_with_error("LlamaModel: weights with padded rows are LoRA's folded layout (lora.h with_lora_slots) only");
    if (!c.tie_word_embeddings) lm_head_offset_ = unit_layout(c, c.num_hidden_layers + 1).tensors[1].offset;
    layers_.resize(recompute ? 1 : size_t(c.num_hidden_layers));  // with recompute, one set serves every layer
    grad_ = new GradScratch();
    // The lm_head + cross-entropy works on head_rows_ tokens at a time: bf16 logits never exceed 512 MiB,
    // or 1 GiB when the head trains (full fine-tuning), since each chunk reads and writes its fp32 gradient;
    // a multiple of 128 rows (the products' tile height: 1,046 rows of the 1B's 128,256-token vocabulary took
    // 3% longer than 1,024, and 2,048 rows 7% less, bench/gemm_bench's fourth question).
    int64_t logit_bytes = lora.rank > 0 ? (512ll << 20) : (1ll << 30);
    int64_t rows = logit_bytes / (int64_t(c.vocab_size) * 2);
    if (rows >= 128) rows -= rows % 128;
    head_rows_ = int(std::max<int64_t>(1, std::min<int64_t>(N_, rows)));
    carve(nullptr);
}

size_t LlamaModel::arena_bytes(const LlamaConfig& c, LoraShape lora, int B, int T, bool recompute, int max_position) {
    return LlamaModel(c, lora, B, T, recompute, max_position, CountOnly{}).arena_bytes_;
}

LlamaModel::LlamaModel(const LlamaConfig& c, LoraShape lora, int B, int T, cudaStream_t stream, bool recompute, int max_position)
    : LlamaModel(c, lora, B, T, recompute, max_position, CountOnly{}) {
    stream_ = stream;
    gemm_ = gemm_create(stream);
    attention_ = new Attention({B, T, c.num_attention_heads, c.num_key_value_heads, c.head_dim}, gemm_);
    arena_ = device_alloc<char>(arena_bytes_, "activations");
    check_cuda(cudaMemset(arena_, 0, arena_bytes_), "memset activations");  // x's columns between adapters' u (r < c) stay 0
    carve(arena_);
    check_cuda(cudaMemset(loss_sum_, 0, sizeof(float)), "memset loss");
    std::vector<int32_t> t_of_row(static_cast<size_t>(N_));
    for (int n = 0; n < N_; ++n) t_of_row[size_t(n)] = n % T;
    check_cuda(cudaMemcpy(positions_, t_of_row.data(), t_of_row.size() * 4, cudaMemcpyHostToDevice), "copy positions");
    std::vector<float> cos_h, sin_h;
    rope_tables(c, max_position_, cos_h, sin_h);
    check_cuda(cudaMemcpy(rope_cos_, cos_h.data(), cos_h.size() * 4, cudaMemcpyHostToDevice), "copy RoPE table");
    check_cuda(cudaMemcpy(rope_sin_, sin_h.data(), sin_h.size() * 4, cudaMemcpyHostToDevice), "copy RoPE table");
}

LlamaModel::~LlamaModel() {
    delete grad_;
    delete attention_;  // before the gemm handle it borrows
    device_free(arena_), gemm_destroy(gemm_);
}

// ================================================================================================ the projections

// The adapter's input: x, or in training with LoRA dropout x * mask / (1 - p) (the mask of this layer,
// target and micro-batch, regenerated identically in backward).
const bf16* LlamaModel::dropped(int l, LoraTarget t, const bf16* x, int in, int ldx) {
    if (!training_ || lora_.dropout <= 0) return x;
    lora_dropout(x, lora_x_, int64_t(N_) * in, in, ldx ? ldx : in, lora_.seed, l, int(t), dropout_step, lora_.dropout, stream_);
    return lora_x_;
}

static LayerWeights layer_weights(const int64_t* offset, const UnitView& u) {
    LayerWeights v;
    for (int t = 0; t < kLayerTensors; ++t) {
        v.w[t] = offset[t] < 0 ? nullptr : u.weights + offset[t];
        v.dw[t] = offset[t] < 0 || !u.grads ? nullptr : u.grads + offset[t];
    }
    return v;
}

// The projections that read the same input: LoRA's A products of a group run as one product.
LlamaModel::Adapters LlamaModel::adapters(int group, const LoraLayerView& lora, int in) const {
    Adapters p;
    const int r = lora_.rank;
    for (int k = 0; k < kGroup[group].size; ++k)
        if (LoraTarget t = kGroup[group].t[k]; lora.A[t]) p.t[p.n++] = t;
    p.col = lora_columns(), p.ld = p.col * kGroup[group].size;
    p.batched = p.n > 1 && p.col == r && !(training_ && lora_.dropout > 0);  // dropout masks differ per target
    for (int k = 1; k < p.n; ++k)
        p.batched &= lora.A[p.t[k]] == lora.A[p.t[0]] + int64_t(k) * r * in && (!lora.dA[p.t[0]] || lora.dA[p.t[k]] == lora.dA[p.t[0]] + int64_t(k) * r * in);
    return p;
}

// One group of projections, forward, each member t:  y_t = x W_t^T + s (x_d A_t^T) B_t^T + residual
// (residual: single-member groups only, may be null). u = x_d A^T of the k-th adapted member goes to
// columns k c .. k c + r of u [N, c * group size] (c = r rounded up to 8: rows of 16 bytes), kept for
// backward (x_d: x, or x with LoRA dropout in training). The adapter's term is written first, so the base
// product adds it (and the residual) in its epilogue: y is written once by each product and never read
// back outside them.
void LlamaModel::group_forward(int l, int group, bf16* x, int in, const LayerWeights& w, bf16* const* y, const bf16* residual,
                               const LoraLayerView& lora, bf16* u) {
    if (fold_columns(group)) return folded_forward(l, group, x, in, w, y, residual, lora);
    const int r = lora_.rank;
    Adapters p = adapters(group, lora, in);
    if (p.n > 0) {
        Region region(profiler, Family::lora);
        if (p.batched) matmul_nt(gemm_, u, x, lora.A[p.t[0]], N_, p.n * r, in, 1.0f, 0.0f, {}, {0, 0, p.ld});  // u = x [A_1; A_2; ..]^T
        else
            for (int k = 0; k < p.n; ++k)
                matmul_nt(gemm_, u + k * p.col, dropped(l, p.t[k], x, in), lora.A[p.t[k]], N_, r, in, 1.0f, 0.0f, {}, {0, 0, p.ld});  // u_k = x_d A^T
    }
    static_assert(kGroup[kGroupQKV].size <= kGemvMaxGroup && kGroup[kGroupGateUp].size <= kGemvMaxGroup && kGroup[kGroupO].size <= kGemvMaxGroup &&
                      kGroup[kGroupDown].size <= kGemvMaxGroup, "each group's products fit one matmul_nt_group");
    GemvOut base[kGemvMaxGroup];  // y = x W^T + what it adds: the adapter's term and/or the residual, or nothing
    for (int m = 0, k = 0; m < kGroup[group].size; ++m) {
        LoraTarget t = kGroup[group].t[m];
        int out = projection_out_[t];
        base[m] = {w.w[kProjection[t]], y[m], residual, out};
        if (lora.A[t]) {
            Region region(profiler, Family::lora);
            const bf16* uk = u + k++ * p.col;
            if (residual) matmul_nt_add(gemm_, y[m], residual, uk, lora.B[t], N_, out, r, lora_.scale, {p.ld, 0, 0});  // y = s u B^T + residual
            else matmul_nt(gemm_, y[m], uk, lora.B[t], N_, out, r, lora_.scale, 0.0f, {}, {p.ld, 0, 0});                // y = s u B^T
            base[m].c = y[m];
        }
    }
    Region region(profiler, Family::base_gemm);
    matmul_nt_group(gemm_, x, N_, in, base, kGroup[group].size);  // y = x W^T + add, each member (one launch in generation)
}

// One group of projections, backward, given dy of each member:
//   LoRA (adapted members k): dB += s dy^T u_k,  du_k = s dy B,  dA += du_k^T x_d,  dx += du_k A (through
//   the dropout's mask when there is one);  base: dx += dy W,  dW += dy^T x when the base trains.
// dx = dx_beta dx + all of it. Without dropout the adapters' du A go into dx first (one product for the
// group when batched) and the base products add to it (beta = 1).
void LlamaModel::group_backward(int l, int group, const bf16* x, int in, const LayerWeights& w, const bf16* const* dy, bf16* dx,
                                float dx_beta, const LoraLayerView& lora, const bf16* u) {
    if (fold_columns(group)) {
        if (dx_beta != 0.0f) exit_with_error("LlamaModel: a folded group's backward writes dx (dx_beta 0)");
        return folded_backward(l, group, x, in, w, dy, dx, lora);
    }
    const int r = lora_.rank;
    Adapters p = adapters(group, lora, in);
    bool masked = training_ && lora_.dropout > 0;
    bf16* du = grad_->lora_u;  // [N, p.ld]
    if (p.n > 0) {
        Region region(profiler, Family::lora);
        for (int m = 0, k = 0; m < kGroup[group].size; ++m) {
            LoraTarget t = kGroup[group].t[m];
            if (!lora.A[t]) continue;
            int out = projection_out_[t];
            matmul_tn(gemm_, lora.dB[t], dy[m], u + k * p.col, out, r, N_, lora_.scale, 1.0f, {}, {0, p.ld, 0});  // dB += s dy^T u_k
            matmul_nn(gemm_, du + k * p.col, dy[m], lora.B[t], N_, r, out, lora_.scale, 0.0f, {}, {0, 0, p.ld});  // du_k = s dy B
            ++k;
        }
        if (p.batched) {
            matmul_tn(gemm_, lora.dA[p.t[0]], du, x, p.n * r, in, N_, 1.0f, 1.0f, {}, {p.ld, 0, 0});  // dA_1.. += du^T x
            matmul_nn(gemm_, dx, du, lora.A[p.t[0]], N_, in, p.n * r, 1.0f, dx_beta, {}, {p.ld, 0, 0});  // dx = du [A_1; ..] + dx_beta dx
            dx_beta = 1.0f;
        } else {
            for (int k = 0; k < p.n; ++k) {
                matmul_tn(gemm_, lora.dA[p.t[k]], du + k * p.col, dropped(l, p.t[k], x, in), r, in, N_, 1.0f, 1.0f, {}, {p.ld, 0, 0});  // dA += du_k^T x_d
                if (masked) continue;
                matmul_nn(gemm_, dx, du + k * p.col, lora.A[p.t[k]], N_, in, r, 1.0f, dx_beta, {}, {p.ld, 0, 0});  // dx = du_k A + dx_beta dx
                dx_beta = 1.0f;
            }
        }
    }
    {
        Region region(profiler, Family::base_gemm);
        for (int m = 0; m < kGroup[group].size; ++m) {
            LayerTensor W = kProjection[kGroup[group].t[m]];
            int out = projection_out_[kGroup[group].t[m]];
            matmul_nn(gemm_, dx, dy[m], w.w[W], N_, in, out, 1.0f, dx_beta);        // dx = dy W + dx_beta dx
            if (w.dw[W]) matmul_tn(gemm_, w.dw[W], dy[m], x, out, in, N_, 1.0f, 1.0f);  // dW += dy^T x
            dx_beta = 1.0f;
        }
    }
    if (!masked || p.n == 0) return;
    Region region(profiler, Family::lora);
    for (int k = 0; k < p.n; ++k) {  // dx += mask(du_k A) / (1 - p)
        matmul_nn(gemm_, lora_dx_, du + k * p.col, lora.A[p.t[k]], N_, in, r, 1.0f, 0.0f, {}, {p.ld, 0, 0});
        lora_dropout_backward(lora_dx_, dx, int64_t(N_) * in, in, in, lora_.seed, l, int(p.t[k]), dropout_step, lora_.dropout, stream_);
    }
}

int LlamaModel::fold_columns(int group) const {
    if (lora_.rank == 0 || group == kGroupO) return 0;
    int P = 0;
    for (int k = 0; k < kGroup[group].size; ++k) P = std::max(P, c_.row_pad[kProjection[kGroup[group].t[k]]]);
    return P;
}

// A group whose weights carry s B in padded rows (lora.h with_lora_slots), forward. x has rows of ld = in + P;
// u_k = x_d A_k^T of the k-th adapted member goes to its columns in + k c (c = lora_columns()), then one
// product per member reads x and the u's up to its own:
//   y_t = [x | u_0 .. u_k] [W_t | 0 .. s B_t]^T = x W_t^T + s u_k B_t^T
// so the adapter's term is never written apart and read back.
void LlamaModel::folded_forward(int l, int group, bf16* x, int in, const LayerWeights& w, bf16* const* y, const bf16* residual,
                                const LoraLayerView& lora) {
    const int r = lora_.rank, P = fold_columns(group), ld = in + P;
    Adapters p = adapters(group, lora, in);
    for (int k = 0; k < kGroup[group].size; ++k)
        if (LoraTarget t = kGroup[group].t[k]; c_.row_pad[kProjection[t]] != (lora.A[t] ? p.n * p.col : 0))
            exit_with_error("LlamaModel: the weights' LoRA columns do not match the adapters (lora.h with_lora_slots)");
    const int x_ld = training_ && lora_.dropout > 0 ? in : ld;  // dropped() hands back x, or x_d with rows of in
    bf16* u = x + in;
    {
        Region region(profiler, Family::lora);
        if (p.batched) matmul_nt(gemm_, u, x, lora.A[p.t[0]], N_, p.n * r, in, 1.0f, 0.0f, {}, {ld, 0, ld});  // u = x [A_0; A_1; ..]^T
        else
            for (int k = 0; k < p.n; ++k)
                matmul_nt(gemm_, u + k * p.col, dropped(l, p.t[k], x, in, ld), lora.A[p.t[k]], N_, r, in, 1.0f, 0.0f, {}, {x_ld, 0, ld});
    }
    GemvOut base[kGemvMaxGroup];
    for (int m = 0, k = 0; m < kGroup[group].size; ++m) {
        LoraTarget t = kGroup[group].t[m];
        base[m] = {w.w[kProjection[t]], y[m], residual, projection_out_[t]};  // (+ residual: down's)
        if (lora.A[t]) base[m].K = in + ++k * p.col, base[m].ldw = ld;
    }
    Region region(profiler, Family::base_gemm);
    matmul_nt_group(gemm_, x, N_, in, base, kGroup[group].size, ld);
}

// The same group, backward. The adapted members' products first (they write every column), then the others:
//   [dx | du] = sum_t dy_t [W_t | 0 .. s B_t ..]      du_k = s dy_k B_k lands in columns in + k c of dx
// then  dB += s dy^T u_k,  dA += du_k^T x_d,  dx += du_k A_k  (through the dropout's mask when there is one).
void LlamaModel::folded_backward(int l, int group, const bf16* x, int in, const LayerWeights& w, const bf16* const* dy, bf16* dx,
                                 const LoraLayerView& lora) {
    const int r = lora_.rank, P = fold_columns(group), ld = in + P;
    Adapters p = adapters(group, lora, in);
    bool masked = training_ && lora_.dropout > 0;
    const bf16* u = x + in;
    bf16* du = dx + in;
    {
        Region region(profiler, Family::base_gemm);
        float beta = 0.0f;
        for (bool adapted : {true, false})
            for (int m = 0; m < kGroup[group].size; ++m) {
                LoraTarget t = kGroup[group].t[m];
                if (bool(lora.A[t]) != adapted) continue;
                if (w.dw[kProjection[t]]) exit_with_error("LlamaModel: LoRA's folded products with trainable base weights");
                int cols = adapted ? ld : in;
                matmul_nn(gemm_, dx, dy[m], w.w[kProjection[t]], N_, cols, projection_out_[t], 1.0f, beta, {}, {0, cols, ld});  // [dx | du] (+)= dy W'
                beta = 1.0f;
            }
    }
    Region region(profiler, Family::lora);
    for (int m = 0, k = 0; m < kGroup[group].size; ++m)
        if (LoraTarget t = kGroup[group].t[m]; lora.A[t])
            matmul_tn(gemm_, lora.dB[t], dy[m], u + k++ * p.col, projection_out_[t], r, N_, lora_.scale, 1.0f, {}, {0, ld, 0});  // dB += s dy^T u_k
    if (p.batched) {
        matmul_tn(gemm_, lora.dA[p.t[0]], du, x, p.n * r, in, N_, 1.0f, 1.0f, {}, {ld, ld, 0});  // dA_0.. += du^T x
        matmul_nn(gemm_, dx, du, lora.A[p.t[0]], N_, in, p.n * r, 1.0f, 1.0f, {}, {ld, 0, ld});   // dx += du [A_0; A_1; ..]
        return;
    }
    for (int k = 0; k < p.n; ++k) {
        const bf16* xd = dropped(l, p.t[k], x, in, ld);
        matmul_tn(gemm_, lora.dA[p.t[k]], du + k * p.col, xd, r, in, N_, 1.0f, 1.0f, {}, {ld, masked ? in : ld, 0});  // dA += du_k^T x_d
        if (!masked) {
            matmul_nn(gemm_, dx, du + k * p.col, lora.A[p.t[k]], N_, in, r, 1.0f, 1.0f, {}, {ld, 0, ld});  // dx += du_k A
            continue;
        }
        matmul_nn(gemm_, lora_dx_, du + k * p.col, lora.A[p.t[k]], N_, in, r, 1.0f, 0.0f, {}, {ld, 0, 0});  // dx += mask(du_k A) / (1 - p)
        lora_dropout_backward(lora_dx_, dx, int64_t(N_) * in, in, ld, lora_.seed, l, int(p.t[k]), dropout_step, lora_.dropout, stream_);
    }
}

// s B of every adapter of a folded group into its columns of the weight's padded rows, on the weights as
// gathered (a gather buffer holds whatever the shards' gaps held; B changes with every update).
void LlamaModel::fill_lora_slots(const LayerWeights& w, const LoraLayerView& lora) {
    LoraSlot slots[kMaxLoraSlots];
    int n = 0;
    for (int g : {kGroupQKV, kGroupGateUp, kGroupDown}) {
        int P = fold_columns(g), in = g == kGroupDown ? c_.intermediate_size : c_.hidden_size;
        for (int m = 0, k = 0; P && m < kGroup[g].size; ++m)
            if (LoraTarget t = kGroup[g].t[m]; lora.B[t])
                slots[n++] = {lora.B[t], const_cast<bf16*>(w.w[kProjection[t]]), projection_out_[t], in + P, in + k++ * lora_columns()};
    }
    if (n == 0) return;
    Region region(profiler, Family::lora);
    lora_fill_slots(slots, n, lora_.rank, lora_.scale, stream_);
}

// ================================================================================================ a layer

// One decoder layer, forward. Training and generation share it. With a KV cache and one token a row
// (decode), k and v are also written into the cache at each row's position and the attention is the
// decode attention over the row's cache; with a cache and T tokens a row (prefill), the attention is
// training's and k, v fill the cache's positions 0..T-1; everything else is the same.
void LlamaModel::layer_forward(int l, const UnitView& uv, const bf16* h_in, bf16* h_out, const DeviceBatch& batch,
                               const KvCache* cache) {
    Layer& a = layers_[recompute_ ? 0 : size_t(l)];
    LayerWeights w = layer_weights(layer_offset_, uv);
    const LoraLayerView& lora = uv.lora;
    int D = c_.hidden_size, F = c_.intermediate_size, H = c_.num_attention_heads, KVH = c_.num_key_value_heads,
        Dh = c_.head_dim, Hd = H * Dh, KVd = KVH * Dh;
    const int32_t* positions = batch.positions ? batch.positions : positions_;
    a.h = h_in;
    fill_lora_slots(w, lora);
    // Attention block:  a = h + o_proj(attention(rope(q), rope(k), v)),  q, k, v = projections of n = rmsnorm(h)
    {
        Region r(profiler, Family::norm);
        rmsnorm_forward(h_in, w.w[kInputNorm], a.n, a.rstd1, N_, D, c_.rms_norm_eps, stream_, D + fold_columns(kGroupQKV));
    }
    bf16* qkv[3] = {c_.qk_norm ? a.qp : a.q, c_.qk_norm ? a.kp : a.k, a.v};
    group_forward(l, kGroupQKV, a.n, D, w, qkv, nullptr, lora, a.lora_u[kGroupQKV]);
    if (c_.qk_norm) {  // q = q_norm(q_proj(n)), k = k_norm(k_proj(n)): rmsnorm over each head's Dh, one weight [Dh]
        Region r(profiler, Family::norm);
        rmsnorm_forward(a.qp, w.w[kQNorm], a.q, a.rstd_q, int64_t(N_) * H, Dh, c_.rms_norm_eps, stream_);
        rmsnorm_forward(a.kp, w.w[kKNorm], a.k, a.rstd_k, int64_t(N_) * KVH, Dh, c_.rms_norm_eps, stream_);
    }
    {
        Region r(profiler, Family::rope);
        rope(a.q, positions, rope_cos_, rope_sin_, N_, H, Dh, false, stream_);
        rope(a.k, positions, rope_cos_, rope_sin_, N_, KVH, Dh, false, stream_);
    }
    const int64_t layer = cache ? int64_t(l) * B_ * cache->max_len * KVd : 0;  // this layer's part of the cache
    if (cache && T_ == 1) {  // decode: this token's k, v join the cache; attend to the row's cache
        kv_cache_write(a.k, a.v, cache->k + layer, cache->v + layer, positions, B_, cache->max_len, KVd, stream_);
        decode_attention(a.q, cache->k + layer, cache->v + layer, positions, a.o, cache->scores, B_, cache->max_len, H, KVH, Dh, stream_);
    } else {
        Region r(profiler, Family::attention);
        attention_->forward(a.q, a.k, a.v, batch.doc_start, a.o, a.lse);
        if (cache) kv_cache_fill(a.k, a.v, cache->k + layer, cache->v + layer, B_, T_, cache->max_len, KVd, stream_);  // prefill
    }
    group_forward(l, kGroupO, a.o, Hd, w, &a.a, h_in, lora, a.lora_u[kGroupO]);  // a = h + o_proj(o)
    // MLP block:  h_out = a + down_proj(silu(gate_proj(m)) * up_proj(m)),  m = rmsnorm(a)
    {
        Region r(profiler, Family::norm);
        rmsnorm_forward(a.a, w.w[kPostNorm], a.m, a.rstd2, N_, D, c_.rms_norm_eps, stream_, D + fold_columns(kGroupGateUp));
    }
    bf16* gu[2] = {a.g, a.u};
    group_forward(l, kGroupGateUp, a.m, D, w, gu, nullptr, lora, a.lora_u[kGroupGateUp]);
    {
        Region r(profiler, Family::swiglu);
        swiglu_forward(a.g, a.u, a.act, int64_t(N_) * F, stream_, F, F + fold_columns(kGroupDown));
    }
    group_forward(l, kGroupDown, a.act, F, w, &h_out, a.a, lora, a.lora_u[kGroupDown]);  // h_out = a + down_proj(act)
}

// One decoder layer, backward: the forward's steps in reverse. dh holds d h_out on entry, d h_in on exit.
void LlamaModel::layer_backward(int l, const UnitView& uv, const DeviceBatch& batch, bf16* dh) {
    Layer& a = layers_[recompute_ ? 0 : size_t(l)];
    GradScratch& d = *grad_;
    LayerWeights w = layer_weights(layer_offset_, uv);
    const LoraLayerView& lora = uv.lora;
    int D = c_.hidden_size, F = c_.intermediate_size, H = c_.num_attention_heads, KVH = c_.num_key_value_heads,
        Dh = c_.head_dim, Hd = H * Dh;
    const int32_t* positions = batch.positions ? batch.positions : positions_;
    fill_lora_slots(w, lora);
    // MLP: h_out = a + down(silu(gate(m)) * up(m)),  m = rmsnorm(a)
    const bf16* d_down[1] = {dh};
    group_backward(l, kGroupDown, a.act, F, w, d_down, d.act, 0.0f, lora, a.lora_u[kGroupDown]);
    {
        Region r(profiler, Family::swiglu);
        swiglu_backward(a.g, a.u, d.act, d.g, d.u, int64_t(N_) * F, stream_, F, F + fold_columns(kGroupDown));
    }
    const bf16* d_gu[2] = {d.g, d.u};
    group_backward(l, kGroupGateUp, a.m, D, w, d_gu, d.n, 0.0f, lora, a.lora_u[kGroupGateUp]);
    {
        Region r(profiler, Family::norm);
        rmsnorm_backward(a.a, w.w[kPostNorm], a.rstd2, d.n, dh, d.a, w.dw[kPostNorm], norm_partial_, N_, D, stream_,
                         D + fold_columns(kGroupGateUp));  // + residual
    }
    // Attention: a = h + o_proj(attention(rope(q), rope(k), v)),  q, k, v = projections of n = rmsnorm(h)
    const bf16* d_o[1] = {d.a};
    group_backward(l, kGroupO, a.o, Hd, w, d_o, d.o, 0.0f, lora, a.lora_u[kGroupO]);
    {
        Region r(profiler, Family::attention);
        attention_->backward(a.q, a.k, a.v, a.o, d.o, a.lse, batch.doc_start, d.q, d.k, d.v);
    }
    {
        Region r(profiler, Family::rope);
        rope(d.q, positions, rope_cos_, rope_sin_, N_, H, Dh, true, stream_);  // back through the rotation
        rope(d.k, positions, rope_cos_, rope_sin_, N_, KVH, Dh, true, stream_);
    }
    if (c_.qk_norm) {  // back through q_norm, k_norm, in place: d q -> d q_proj(n), d k -> d k_proj(n)
        Region r(profiler, Family::norm);
        head_rmsnorm_backward(a.qp, w.w[kQNorm], a.rstd_q, d.q, w.dw[kQNorm], norm_partial_, N_, H, Dh, stream_);
        head_rmsnorm_backward(a.kp, w.w[kKNorm], a.rstd_k, d.k, w.dw[kKNorm], norm_partial_, N_, KVH, Dh, stream_);
    }
    const bf16* d_qkv[3] = {d.q, d.k, d.v};
    group_backward(l, kGroupQKV, a.n, D, w, d_qkv, d.n, 0.0f, lora, a.lora_u[kGroupQKV]);
    {
        Region r(profiler, Family::norm);
        rmsnorm_backward(a.h, w.w[kInputNorm], a.rstd1, d.n, d.a, dh, w.dw[kInputNorm], norm_partial_, N_, D, stream_,
                         D + fold_columns(kGroupQKV));  // + residual
    }
}

// ================================================================================================ the head and the passes

// Final norm, lm_head and cross-entropy, head_rows_ tokens at a time, so full-vocabulary logits exist
// only for one chunk. With backward, writes d(h_L) into grad_->h and accumulates the head's gradients.
// A batch without labels (generation) gets logits only.
void LlamaModel::head(const DeviceBatch& batch, UnitStore& store, float loss_divisor, bool backward, float* logits_out) {
    int L = c_.num_hidden_layers, D = c_.hidden_size, V = c_.vocab_size;
    Pass pass = backward ? Pass::backward : Pass::forward;
    UnitView fin = store.gather(L + 1, pass);
    UnitView emb = c_.tie_word_embeddings ? store.gather(0, pass) : UnitView();
    const bf16* norm_w = fin.weights;
    const bf16* head_w = c_.tie_word_embeddings ? emb.weights : fin.weights + lm_head_offset_;
    float* head_g = c_.tie_word_embeddings ? emb.grads : (fin.grads ? fin.grads + lm_head_offset_ : nullptr);
    const bf16* h = hidden_ + int64_t(L) * N_ * D;
    bf16* dx = grad_->n;  // d rmsnorm(h_L), chunk by chunk
    {
        Region r(profiler, Family::norm);
        rmsnorm_forward(h, norm_w, final_norm_, final_rstd_, N_, D, c_.rms_norm_eps, stream_);
    }
    if (batch.labels) shift_labels(batch.labels, targets_, N_, T_, stream_);
    for (int r0 = 0; r0 < N_; r0 += head_rows_) {
        Region r(profiler, Family::head);
        int rows = std::min(head_rows_, N_ - r0);
        const bf16* x = final_norm_ + int64_t(r0) * D;
        matmul_nt(gemm_, logits_, x, head_w, rows, V, D);  // logits = x E^T (bf16, as HF's)
        if (logits_out) bf16_to_f32(logits_, logits_out + int64_t(r0) * V, int64_t(rows) * V, stream_);
        if (!batch.labels) continue;
        cross_entropy(logits_, targets_ + r0, row_loss_, loss_sum_, rows, V, 1.0f / loss_divisor, backward, stream_);
        if (!backward) continue;  // logits_ holds dlogits now
        matmul_nn(gemm_, dx + int64_t(r0) * D, logits_, head_w, rows, D, V);      // dx = dlogits E
        if (head_g) matmul_tn(gemm_, head_g, logits_, x, V, D, rows, 1.0f, 1.0f);  // dE += dlogits^T x
    }
    if (backward) {  // d h_L through the final norm (no residual term)
        Region r(profiler, Family::norm);
        rmsnorm_backward(h, norm_w, final_rstd_, dx, nullptr, grad_->h, fin.grads, norm_partial_, N_, D, stream_);
    }
    if (c_.tie_word_embeddings) store.release(0);
    store.release(L + 1);
}

// Embedding and every layer: h_0 .. h_L into hidden_, each unit gathered for its turn (generation: through
// the KV cache).
void LlamaModel::forward_layers(const DeviceBatch& batch, UnitStore& store, const KvCache* cache) {
    if (batch.B != B_ || batch.T != T_) exit_with_error("LlamaModel: the batch's shape differs from the model's");
    int L = c_.num_hidden_layers, D = c_.hidden_size;
    UnitView emb = store.gather(0, Pass::forward);
    {
        Region r(profiler, Family::embedding);
        embedding_forward(batch.ids, emb.weights, hidden_, N_, D, stream_);
    }
    store.release(0);
    for (int l = 0; l < L; ++l) {
        UnitView w = store.gather(l + 1, Pass::forward);
        layer_forward(l, w, hidden_ + int64_t(l) * N_ * D, hidden_ + int64_t(l + 1) * N_ * D, batch, cache);
        store.release(l + 1);
    }
}

void LlamaModel::forward(const DeviceBatch& batch, UnitStore& store, float* logits) {
    forward_layers(batch, store);
    head(batch, store, 1.0f, false, logits);
}

void LlamaModel::forward_backward(const DeviceBatch& batch, UnitStore& store, float loss_divisor) {
    int L = c_.num_hidden_layers, D = c_.hidden_size;
    training_ = true;
    forward_layers(batch, store);
    head(batch, store, loss_divisor, true, nullptr);
    store.reduce_grads(L + 1);
    for (int l = L - 1; l >= 0; --l) {
        UnitView w = store.gather(l + 1, Pass::backward);
        if (recompute_)  // activation checkpointing: rebuild this layer's activations from its saved input
            layer_forward(l, w, hidden_ + int64_t(l) * N_ * D, hidden_ + int64_t(l + 1) * N_ * D, batch);
        layer_backward(l, w, batch, grad_->h);
        store.release(l + 1);
        store.reduce_grads(l + 1);
    }
    UnitView emb = store.gather(0, Pass::backward);
    if (emb.grads) {
        Region r(profiler, Family::embedding);
        embedding_backward(batch.ids, grad_->h, emb.grads, N_, D, stream_);
    }
    store.release(0);
    store.reduce_grads(0);
    training_ = false;
}

void LlamaModel::set_decode_inputs(const std::vector<int32_t>& tokens, const std::vector<int32_t>& positions, int max_len) {
    if (T_ != 1 || int(tokens.size()) != B_ || int(positions.size()) != B_)
        exit_with_error("LlamaModel::decode needs a model made for one token per row and a token and position for each row");
    for (int32_t p : positions)
        if (p < 0 || p >= max_len || p >= max_position_) exit_with_error("LlamaModel::decode: position past the KV cache");
    std::vector<int32_t> io(tokens);  // pageable source: copied before the call returns
    io.insert(io.end(), positions.begin(), positions.end());
    check_cuda(cudaMemcpyAsync(decode_io_, io.data(), io.size() * 4, cudaMemcpyHostToDevice, stream_), "copy tokens");
}

void LlamaModel::prefill(UnitStore& store, const KvCache& cache, int32_t* ids) {
    if (T_ < 2) exit_with_error("LlamaModel::prefill needs a model made for at least 2 tokens a row");
    DeviceBatch batch{B_, T_, ids, nullptr, nullptr, nullptr};
    forward_layers(batch, store, &cache);
}

void LlamaModel::decode(UnitStore& store, const KvCache& cache, float* logits) {
    DeviceBatch batch{B_, 1, decode_io_, nullptr, decode_io_ + B_, nullptr};
    forward_layers(batch, store, &cache);
    head(batch, store, 1.0f, false, logits);
}
