// test/reference.h — CPU references of the GPU kernels, in double precision, named after the kernels they
// check (`rmsnorm_forward_ref` checks `rmsnorm_forward`). Used by the kernel tests, the finite-difference
// gradient check and the kernel-development harnesses in dev/. Layouts are the kernels' own:
// activations row-major [N = B*T, features]; attention token-major q, o: [B, T, H, Dh], k, v: [B, T, KVH, Dh].
#pragma once
#include <cstdint>
#include <vector>

using Vec = std::vector<double>;

Vec to_double(const std::vector<float>& x);
std::vector<float> to_float(const Vec& x);

// y[n, o] = sum_i x[n, i] W[o, i]      (x: [N, in], W: [out, in], y: [N, out])
Vec linear_ref(const Vec& x, const Vec& W, int N, int in, int out);

// h[n, :] = E[ids[n], :]
Vec embedding_forward_ref(const std::vector<int32_t>& ids, const Vec& E, int D);

// y = w * x * rstd,  rstd = 1 / sqrt(mean(x^2) + eps)  (one row of D at a time); rstd out when given.
Vec rmsnorm_forward_ref(const Vec& x, const Vec& w, int N, int D, double eps, Vec* rstd = nullptr);
// dx = dy-path gradient of rmsnorm (+ residual when given), dw = sum over rows of dy * x * rstd.
void rmsnorm_backward_ref(const Vec& x, const Vec& w, const Vec& dy, int N, int D, double eps, Vec& dx, Vec& dw);

// RoPE in place on x [N, nh, Dh]: the halves of each head rotate by angle positions[n] * inv_freq[i]
// (HF's rotate_half); inverse = true rotates by the negative angle (the backward pass).
void rope_ref(Vec& x, const std::vector<int32_t>& positions, const std::vector<float>& inv_freq, int N, int nh, int Dh,
              bool inverse = false);

// act = silu(g) * u;  backward: dg, du from dact.
Vec swiglu_forward_ref(const Vec& g, const Vec& u);
void swiglu_backward_ref(const Vec& g, const Vec& u, const Vec& dact, Vec& dg, Vec& du);

// Causal attention over documents packed in rows, with grouped KV heads (g = h / (H / KVH)):
//   s_j = q[b,t,h] . k[b,j,g] / sqrt(Dh)   for doc_start[b,t] <= j <= t
//   o[b,t,h] = sum_j softmax(s)_j v[b,j,g],   lse[b,h,t] = log sum_j exp(s_j)
// doc_start [B, T] gives the position in its row where token t's document begins; empty = 0 for all
// (one document per row, plain causal attention).
struct AttentionDims {
    int B, T, H, KVH, Dh;
};
void attention_forward_ref(const AttentionDims& a, const Vec& q, const Vec& k, const Vec& v,
                           const std::vector<int32_t>& doc_start, Vec& o, Vec& lse);
// Gradients of sum(o * dO): dq [B,T,H,Dh], dk, dv [B,T,KVH,Dh] (each written whole).
void attention_backward_ref(const AttentionDims& a, const Vec& q, const Vec& k, const Vec& v, const Vec& dO,
                            const std::vector<int32_t>& doc_start, Vec& dq, Vec& dk, Vec& dv);

// Mean cross-entropy over rows with a target >= 0:  loss_r = logsumexp(z_r) - z_r[target_r];
// dz = (softmax(z) - onehot(target)) * inv_divisor (zero rows without a target). Returns the summed loss.
double cross_entropy_ref(const Vec& z, const std::vector<int32_t>& targets, int rows, int V, double inv_divisor, Vec* dz);
