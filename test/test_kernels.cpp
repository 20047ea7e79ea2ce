// test/test_kernels.cpp — every kernel, forward and backward, against a CPU reference: fresh random
// inputs, odd sizes, GQA ratios 1 and 4, head_dim 64 and 128, sequence lengths that are no block
// multiple, outputs poisoned with NaN first. Bound: max |gpu - cpu| / max |cpu| (bf16 storage: 2^-8 per
// rounding, so 1e-2 for single kernels and 2e-2 where bf16 intermediates feed a product).
#include "gpu.h"

#include "adamw.h"

namespace {
uint64_t fresh_seed() { return uint64_t(time(nullptr)) * 2654435761ull; }
}

TEST_CASE("gpu: gemm in every transpose, bf16 and fp32 out, batched") {
    if (!need_gpu()) return;
    Rng rng(fresh_seed());
    cudaStream_t s = nullptr;
    Gemm g = gemm_create(s);
    for (int ta = 0; ta < 2; ++ta)
        for (int tb = 0; tb < 2; ++tb)
            for (int c32 = 0; c32 < 2; ++c32) {
                int M = 37, N = 53, K = 29, batch = 3;
                std::vector<float> A = bf16_round(random_vector(size_t(batch * M * K), rng)),
                                   B = bf16_round(random_vector(size_t(batch * K * N), rng)),
                                   C0 = bf16_round(random_vector(size_t(batch * M * N), rng));
                DeviceFree keep;
                bf16 *dA = keep(to_device_bf16(A)), *dB = keep(to_device_bf16(B));
                void* dC = c32 ? (void*)keep(to_device(C0)) : (void*)keep(to_device_bf16(C0));
                // C = 0.5 op(A) op(B) + 1 C
                gemm(g, ta, tb, M, N, K, dA, ta ? M : K, dB, tb ? K : N, dC, c32, N, 0.5f, 1.0f, batch, M * K, K * N, M * N);
                std::vector<float> got = c32 ? from_device((float*)dC, C0.size()) : from_device_bf16((bf16*)dC, C0.size());
                std::vector<float> want = C0;
                for (int b = 0; b < batch; ++b)
                    for (int i = 0; i < M; ++i)
                        for (int j = 0; j < N; ++j) {
                            double acc = 0;
                            for (int k = 0; k < K; ++k) {
                                float a = ta ? A[size_t(b * M * K + k * M + i)] : A[size_t(b * M * K + i * K + k)];
                                float bb = tb ? B[size_t(b * K * N + j * K + k)] : B[size_t(b * K * N + k * N + j)];
                                acc += double(a) * bb;
                            }
                            want[size_t(b * M * N + i * N + j)] += float(0.5 * acc);
                        }
                CAPTURE(ta);
                CAPTURE(tb);
                CAPTURE(c32);
                CHECK(rel_error(got, want) < (c32 ? 1e-5 : 1e-2));
            }
    gemm_destroy(g);
}

TEST_CASE("gpu: embedding forward and backward") {
    if (!need_gpu()) return;
    Rng rng(fresh_seed());
    int V = 301, D = 67, N = 45;
    std::vector<float> E = bf16_round(random_vector(size_t(V * D), rng)), dh = bf16_round(random_vector(size_t(N * D), rng));
    std::vector<int32_t> ids(static_cast<size_t>(N));
    for (int32_t& i : ids) i = int32_t(rng.below(uint64_t(V)));
    ids[1] = ids[0];  // a repeated id accumulates
    DeviceFree keep;
    bf16* h = keep(poisoned<bf16>(size_t(N * D)));
    float* dE = keep(to_device(std::vector<float>(size_t(V * D), 0.0f)));
    int32_t* dids = keep(to_device(ids));
    embedding_forward(dids, keep(to_device_bf16(E)), h, N, D, nullptr);
    embedding_backward(dids, keep(to_device_bf16(dh)), dE, N, D, nullptr);
    std::vector<float> want_h(size_t(N * D)), want_dE(size_t(V * D), 0.0f);
    for (int n = 0; n < N; ++n)
        for (int d = 0; d < D; ++d) {
            want_h[size_t(n * D + d)] = E[size_t(ids[size_t(n)] * D + d)];
            want_dE[size_t(ids[size_t(n)] * D + d)] += dh[size_t(n * D + d)];
        }
    CHECK(rel_error(from_device_bf16(h, want_h.size()), want_h) == 0.0);
    CHECK(rel_error(from_device(dE, want_dE.size()), want_dE) < 1e-6);
}

TEST_CASE("gpu: rmsnorm forward and backward") {
    if (!need_gpu()) return;
    Rng rng(fresh_seed());
    for (int D : {67, 2048}) {
        int N = 29;
        float eps = 1e-5f;
        std::vector<float> x = bf16_round(random_vector(size_t(N * D), rng, 3.0f)), w = bf16_round(random_vector(size_t(D), rng)),
                           dy = bf16_round(random_vector(size_t(N * D), rng)), res = bf16_round(random_vector(size_t(N * D), rng));
        DeviceFree keep;
        bf16 *y = keep(poisoned<bf16>(size_t(N * D))), *dx = keep(poisoned<bf16>(size_t(N * D)));
        float *rstd = keep(poisoned<float>(size_t(N))), *dw = keep(to_device(std::vector<float>(size_t(D), 0.0f)));
        bf16 *dxin = keep(to_device_bf16(x)), *dwin = keep(to_device_bf16(w));
        rmsnorm_forward(dxin, dwin, y, rstd, N, D, eps, nullptr);
        float* partial = keep(poisoned<float>(size_t(kNormPartials) * D));
        rmsnorm_backward(dxin, dwin, rstd, keep(to_device_bf16(dy)), keep(to_device_bf16(res)), dx, dw, partial, N, D, nullptr);
        std::vector<float> want_y(size_t(N * D)), want_dx(size_t(N * D)), want_dw(size_t(D), 0.0f);
        for (int n = 0; n < N; ++n) {
            double ss = 0;
            for (int i = 0; i < D; ++i) ss += double(x[size_t(n * D + i)]) * x[size_t(n * D + i)];
            double r = 1.0 / std::sqrt(ss / D + eps), dot = 0;
            for (int i = 0; i < D; ++i) {
                size_t k = size_t(n * D + i);
                want_y[k] = float(w[size_t(i)] * x[k] * r);
                dot += dy[k] * w[size_t(i)] * x[k] * r;
                want_dw[size_t(i)] += float(dy[k] * x[k] * r);
            }
            for (int i = 0; i < D; ++i) {
                size_t k = size_t(n * D + i);
                want_dx[k] = float(res[k] + r * (dy[k] * w[size_t(i)] - x[k] * r * dot / D));
            }
        }
        CAPTURE(D);
        CHECK(rel_error(from_device_bf16(y, want_y.size()), want_y) < 1e-2);
        CHECK(rel_error(from_device_bf16(dx, want_dx.size()), want_dx) < 1e-2);
        CHECK(rel_error(from_device(dw, want_dw.size()), want_dw) < 1e-2);
    }
}

TEST_CASE("gpu: rope forward and backward, with the transposes") {
    if (!need_gpu()) return;
    Rng rng(fresh_seed());
    for (int Dh : {64, 128}) {
        int B = 2, T = 37, nh = 3, half = Dh / 2;
        std::vector<float> cos_t(size_t(T * half)), sin_t(cos_t.size());
        for (int t = 0; t < T; ++t)
            for (int i = 0; i < half; ++i) {
                double angle = t * std::pow(10000.0, -2.0 * i / Dh);
                cos_t[size_t(t * half + i)] = float(std::cos(angle)), sin_t[size_t(t * half + i)] = float(std::sin(angle));
            }
        std::vector<float> x = bf16_round(random_vector(size_t(B * T * nh * Dh), rng)), g = bf16_round(random_vector(x.size(), rng));
        DeviceFree keep;
        float *dc = keep(to_device(cos_t)), *ds = keep(to_device(sin_t));
        bf16 *out = keep(poisoned<bf16>(x.size())), *dx = keep(poisoned<bf16>(x.size())), *tr = keep(poisoned<bf16>(x.size()));
        rope_forward(keep(to_device_bf16(x)), out, dc, ds, B, T, nh, Dh, true, nullptr);
        rope_backward(keep(to_device_bf16(g)), dx, dc, ds, B, T, nh, Dh, true, nullptr);
        rope_forward(keep(to_device_bf16(x)), tr, dc, ds, B, T, nh, Dh, false, nullptr);
        std::vector<float> want(x.size()), want_dx(x.size()), want_tr(x.size());
        for (int b = 0; b < B; ++b)
            for (int t = 0; t < T; ++t)
                for (int h = 0; h < nh; ++h)
                    for (int i = 0; i < half; ++i) {
                        size_t src = size_t(((b * T + t) * nh + h) * Dh), dst = size_t(((b * nh + h) * T + t) * Dh);
                        float c = cos_t[size_t(t * half + i)], sn = sin_t[size_t(t * half + i)];
                        float x1 = x[src + size_t(i)], x2 = x[src + size_t(i + half)];
                        want[dst + size_t(i)] = x1 * c - x2 * sn, want[dst + size_t(i + half)] = x2 * c + x1 * sn;
                        want_tr[dst + size_t(i)] = x1, want_tr[dst + size_t(i + half)] = x2;
                        float g1 = g[dst + size_t(i)], g2 = g[dst + size_t(i + half)];  // g is [B,nh,T,Dh]
                        want_dx[src + size_t(i)] = g1 * c + g2 * sn, want_dx[src + size_t(i + half)] = g2 * c - g1 * sn;
                    }
        CAPTURE(Dh);
        CHECK(rel_error(from_device_bf16(out, x.size()), want) < 1e-2);
        CHECK(rel_error(from_device_bf16(dx, x.size()), want_dx) < 1e-2);
        CHECK(rel_error(from_device_bf16(tr, x.size()), want_tr) == 0.0);
    }
}

TEST_CASE("gpu: swiglu forward and backward") {
    if (!need_gpu()) return;
    Rng rng(fresh_seed());
    size_t n = 1001;
    std::vector<float> g = bf16_round(random_vector(n, rng, 4.0f)), u = bf16_round(random_vector(n, rng)),
                       d = bf16_round(random_vector(n, rng));
    DeviceFree keep;
    bf16 *act = keep(poisoned<bf16>(n)), *dg = keep(poisoned<bf16>(n)), *du = keep(poisoned<bf16>(n));
    bf16 *dgi = keep(to_device_bf16(g)), *dui = keep(to_device_bf16(u));
    swiglu_forward(dgi, dui, act, int64_t(n), nullptr);
    swiglu_backward(dgi, dui, keep(to_device_bf16(d)), dg, du, int64_t(n), nullptr);
    std::vector<float> wa(n), wg(n), wu(n);
    for (size_t i = 0; i < n; ++i) {
        double s = 1.0 / (1.0 + std::exp(-double(g[i])));
        wa[i] = float(g[i] * s * u[i]);
        wg[i] = float(d[i] * u[i] * s * (1 + g[i] * (1 - s)));
        wu[i] = float(d[i] * g[i] * s);
    }
    CHECK(rel_error(from_device_bf16(act, n), wa) < 1e-2);
    CHECK(rel_error(from_device_bf16(dg, n), wg) < 1e-2);
    CHECK(rel_error(from_device_bf16(du, n), wu) < 1e-2);
}

TEST_CASE("gpu: cross-entropy with ignored targets and the label shift") {
    if (!need_gpu()) return;
    Rng rng(fresh_seed());
    int B = 2, T = 5, V = 1001, rows = B * T;
    std::vector<float> z = random_vector(size_t(rows * V), rng, 5.0f);
    std::vector<int32_t> labels(static_cast<size_t>(rows));
    for (int32_t& l : labels) l = int32_t(rng.below(uint64_t(V)));
    labels[2] = -100;
    DeviceFree keep;
    int32_t* targets = keep(poisoned<int32_t>(size_t(rows)));
    shift_labels(keep(to_device(labels)), targets, rows, T, nullptr);
    std::vector<int32_t> t(static_cast<size_t>(rows));
    check_cuda(cudaMemcpy(t.data(), targets, size_t(rows) * 4, cudaMemcpyDeviceToHost), "copy");
    for (int r = 0; r < rows; ++r) CHECK(t[size_t(r)] == (r % T == T - 1 ? -100 : labels[size_t(r + 1)]));
    float* loss = keep(to_device(std::vector<float>{0.0f}));
    bf16* dz = keep(poisoned<bf16>(z.size()));
    float inv = 1.0f / 7;
    float* row_loss = keep(poisoned<float>(size_t(rows)));
    cross_entropy(keep(to_device(z)), targets, dz, row_loss, loss, rows, V, inv, true, nullptr);
    double want_loss = 0;
    std::vector<float> want_dz(z.size(), 0.0f);
    for (int r = 0; r < rows; ++r) {
        if (t[size_t(r)] < 0) continue;
        double m = -1e30, sum = 0;
        for (int j = 0; j < V; ++j) m = std::max(m, double(z[size_t(r * V + j)]));
        for (int j = 0; j < V; ++j) sum += std::exp(z[size_t(r * V + j)] - m);
        double lse = m + std::log(sum);
        want_loss += lse - z[size_t(r * V + t[size_t(r)])];
        for (int j = 0; j < V; ++j)
            want_dz[size_t(r * V + j)] = float((std::exp(z[size_t(r * V + j)] - lse) - (j == t[size_t(r)])) * inv);
    }
    CHECK(from_device(loss, 1)[0] == doctest::Approx(want_loss).epsilon(1e-5));
    CHECK(rel_error(from_device_bf16(dz, z.size()), want_dz) < 1e-2);
}

TEST_CASE("gpu: causal GQA attention forward and backward") {
    if (!need_gpu()) return;
    Rng rng(fresh_seed());
    struct Shape { int B, T, H, KVH, Dh; int64_t budget; };
    for (Shape sh : {Shape{2, 37, 4, 1, 64, 1}, Shape{2, 37, 2, 2, 128, 1 << 30}, Shape{1, 130, 8, 2, 64, 1 << 30}}) {
        int B = sh.B, T = sh.T, H = sh.H, KVH = sh.KVH, Dh = sh.Dh, group = H / KVH;
        AttentionShape a(B, T, H, KVH, Dh, sh.budget);
        float scale = 1.0f / std::sqrt(float(Dh));
        std::vector<float> q = bf16_round(random_vector(size_t(B * H * T * Dh), rng)), k = bf16_round(random_vector(size_t(B * KVH * T * Dh), rng)),
                           v = bf16_round(random_vector(k.size(), rng)), dO = bf16_round(random_vector(q.size(), rng));  // dO as [B,T,H,Dh]
        std::vector<float> O(q.size()), lse(size_t(B * H * T)), dq(q.size(), 0.0f), dk(k.size(), 0.0f), dv(v.size(), 0.0f), Ob(q.size());
        auto qi = [&](int b, int h, int t) { return size_t(((b * H + h) * T + t) * Dh); };
        auto ki = [&](int b, int g, int t) { return size_t(((b * KVH + g) * T + t) * Dh); };
        auto bi = [&](int b, int t, int h) { return size_t(((b * T + t) * H + h) * Dh); };
        for (int b = 0; b < B; ++b)
            for (int h = 0; h < H; ++h) {
                int g = h / group;
                for (int t = 0; t < T; ++t) {
                    std::vector<double> s(size_t(t + 1));
                    double m = -1e30, sum = 0, dsum = 0;
                    for (int j = 0; j <= t; ++j) {
                        double acc = 0;
                        for (int d = 0; d < Dh; ++d) acc += double(q[qi(b, h, t) + size_t(d)]) * k[ki(b, g, j) + size_t(d)];
                        s[size_t(j)] = acc * scale, m = std::max(m, s[size_t(j)]);
                    }
                    for (int j = 0; j <= t; ++j) sum += std::exp(s[size_t(j)] - m);
                    lse[size_t((b * H + h) * T + t)] = float(m + std::log(sum));
                    std::vector<double> p(size_t(t + 1)), dp(size_t(t + 1));
                    for (int j = 0; j <= t; ++j) p[size_t(j)] = std::exp(s[size_t(j)] - m) / sum;
                    for (int d = 0; d < Dh; ++d) {
                        double acc = 0;
                        for (int j = 0; j <= t; ++j) acc += p[size_t(j)] * v[ki(b, g, j) + size_t(d)];
                        O[qi(b, h, t) + size_t(d)] = float(acc), Ob[bi(b, t, h) + size_t(d)] = float(acc);
                    }
                    for (int d = 0; d < Dh; ++d) dsum += double(dO[bi(b, t, h) + size_t(d)]) * O[qi(b, h, t) + size_t(d)];
                    for (int j = 0; j <= t; ++j) {
                        double acc = 0;
                        for (int d = 0; d < Dh; ++d) {
                            acc += double(dO[bi(b, t, h) + size_t(d)]) * v[ki(b, g, j) + size_t(d)];
                            dv[ki(b, g, j) + size_t(d)] += float(p[size_t(j)] * dO[bi(b, t, h) + size_t(d)]);
                        }
                        dp[size_t(j)] = p[size_t(j)] * (acc - dsum) * scale;
                    }
                    for (int j = 0; j <= t; ++j)
                        for (int d = 0; d < Dh; ++d) {
                            dq[qi(b, h, t) + size_t(d)] += float(dp[size_t(j)] * k[ki(b, g, j) + size_t(d)]);
                            dk[ki(b, g, j) + size_t(d)] += float(dp[size_t(j)] * q[qi(b, h, t) + size_t(d)]);
                        }
                }
            }
        std::vector<float> dOt(dO.size());  // dO as [B,H,T,Dh]
        for (int b = 0; b < B; ++b)
            for (int t = 0; t < T; ++t)
                for (int h = 0; h < H; ++h)
                    for (int d = 0; d < Dh; ++d) dOt[qi(b, h, t) + size_t(d)] = dO[bi(b, t, h) + size_t(d)];
        DeviceFree keep;
        cudaStream_t s = nullptr;
        Gemm gm = gemm_create(s);
        bf16 *dqt = keep(to_device_bf16(q)), *dkt = keep(to_device_bf16(k)), *dvt = keep(to_device_bf16(v));
        bf16* ot = keep(poisoned<bf16>(q.size()));
        float* dlse = keep(poisoned<float>(lse.size()));
        float* scores = keep(poisoned<float>(size_t(a.scratch_elems())));
        bf16* probs = keep(poisoned<bf16>(size_t(a.scratch_elems())));
        attention_forward(gm, a, dqt, dkt, dvt, ot, dlse, scores, probs);
        CAPTURE(T);
        CAPTURE(H);
        CAPTURE(KVH);
        CAPTURE(Dh);
        CAPTURE(a.chunk);
        CHECK(rel_error(from_device_bf16(ot, O.size()), O) < 2e-2);
        CHECK(rel_error(from_device(dlse, lse.size()), lse) < 1e-3);
        bf16 *gq = keep(poisoned<bf16>(q.size())), *gk = keep(poisoned<bf16>(k.size())), *gv = keep(poisoned<bf16>(v.size()));
        float* rowdot = keep(poisoned<float>(lse.size()));
        attention_backward(gm, a, dqt, dkt, dvt, keep(to_device_bf16(Ob)), keep(to_device_bf16(dO)), keep(to_device_bf16(dOt)),
                           keep(to_device(lse)), gq, gk, gv, rowdot, scores, probs);
        CHECK(rel_error(from_device_bf16(gq, dq.size()), dq) < 2e-2);
        CHECK(rel_error(from_device_bf16(gk, dk.size()), dk) < 2e-2);
        CHECK(rel_error(from_device_bf16(gv, dv.size()), dv) < 2e-2);
        gemm_destroy(gm);
    }
}

TEST_CASE("gpu: AdamW on the GPU equals the CPU version, with clipping") {
    if (!need_gpu()) return;
    Rng rng(fresh_seed());
    size_t n = 100003;
    std::vector<float> p = random_vector(n, rng), g = random_vector(n, rng, 0.1f), m(n, 0.0f), v(n, 0.0f);
    std::vector<float> p2 = p, m2 = m, v2 = v;
    DeviceFree keep;
    float *dp = keep(to_device(p)), *dg = keep(to_device(g)), *dm = keep(to_device(m)), *dv = keep(to_device(v));
    float *sumsq = keep(to_device(std::vector<float>{0.0f})), *scale = keep(poisoned<float>(1));
    bf16* p16 = keep(poisoned<bf16>(n));
    AdamWConfig c;
    c.weight_decay = 0.01f;
    grad_sum_squares(dg, int64_t(n), sumsq, nullptr);
    clip_coefficient(sumsq, 1.0f, scale, nullptr);
    double norm = 0;
    for (float x : g) norm += double(x) * x;
    norm = std::sqrt(norm);
    float want_scale = float(std::min(1.0, 1.0 / (norm + 1e-6)));
    float gpu_scale = from_device(scale, 1)[0];
    CHECK(gpu_scale == doctest::Approx(want_scale).epsilon(1e-4));
    for (int step = 1; step <= 3; ++step) {  // the CPU gets the GPU's clip scale, as offload does
        adamw_step_gpu(dp, dg, dm, dv, p16, int64_t(n), c, 1e-3f, c.weight_decay, step, scale, nullptr);
        adamw_step_cpu(p2.data(), g.data(), m2.data(), v2.data(), nullptr, int64_t(n), c, 1e-3f, c.weight_decay, step, gpu_scale, 4);
    }
    CHECK(from_device(dp, n) == p2);  // bitwise: offload trains exactly like the GPU
    CHECK(from_device(dm, n) == m2);
    CHECK(from_device(dv, n) == v2);
    CHECK(rel_error(from_device_bf16(p16, n), p2) < 1e-2);
}
