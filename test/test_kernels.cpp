// test/test_kernels.cpp — every kernel, forward and backward, against the CPU references of
// test/reference.h (Qwen3's per-head q/k norms against the RMSNorm's, by rows of head_dim): fresh random
// inputs, odd sizes, GQA ratios 1, 3 and 4, head_dim 64, 96 and 128, several documents in a row, sequence
// lengths that are no block multiple, outputs poisoned with NaN first. Bound: max |gpu - cpu| / max |cpu|
// (bf16 storage: 2^-8 per rounding, so 1e-2 for single kernels and 2e-2 where bf16 intermediates feed a
// product).
#include "gpu.h"

#include "adamw.h"
#include "kernels/attention.h"
#include "kernels/ops.h"
#include "reference.h"
#include "distributed/threads.h"

namespace {
uint64_t fresh_seed() { return uint64_t(time(nullptr)) * 2654435761ull; }
}

TEST_CASE("gpu: the three matrix-product forms, bf16 and fp32 out, batched") {
    if (!need_gpu()) return;
    Rng rng(fresh_seed());
    cudaStream_t s = nullptr;
    Gemm g = gemm_create(s);
    int M = 37, N = 53, K = 29, batch = 3;
    for (int form = 0; form < 3; ++form)  // nt: A[M,K] B[N,K]^T;  nn: A[M,K] B[K,N];  tn: A[K,M]^T B[K,N]
        for (int c32 = 0; c32 < 2; ++c32) {
            std::vector<float> A = bf16_round(random_vector(size_t(batch * M * K), rng)),
                               B = bf16_round(random_vector(size_t(batch * K * N), rng)),
                               C0 = bf16_round(random_vector(size_t(batch * M * N), rng));
            DeviceFree keep;
            bf16 *dA = keep(to_device_bf16(A)), *dB = keep(to_device_bf16(B));
            float* c_f32 = c32 ? keep(to_device(C0)) : nullptr;
            bf16* c_bf16 = c32 ? nullptr : keep(to_device_bf16(C0));
            Batched strides{batch, int64_t(M) * K, int64_t(K) * N, int64_t(M) * N};
            // C = 0.5 op(A) op(B) + C
            auto run = [&](auto* C) {
                if (form == 0) matmul_nt(g, C, dA, dB, M, N, K, 0.5f, 1.0f, strides);
                if (form == 1) matmul_nn(g, C, dA, dB, M, N, K, 0.5f, 1.0f, strides);
                if (form == 2) matmul_tn(g, C, dA, dB, M, N, K, 0.5f, 1.0f, strides);
            };
            if (c32) run(c_f32);
            else run(c_bf16);
            std::vector<float> got = c32 ? from_device(c_f32, C0.size()) : from_device_bf16(c_bf16, C0.size());
            std::vector<float> want = C0;
            for (int b = 0; b < batch; ++b)
                for (int i = 0; i < M; ++i)
                    for (int j = 0; j < N; ++j) {
                        double acc = 0;
                        for (int k = 0; k < K; ++k) {
                            float a = form == 2 ? A[size_t(b * M * K + k * M + i)] : A[size_t(b * M * K + i * K + k)];
                            float bb = form == 0 ? B[size_t(b * K * N + j * K + k)] : B[size_t(b * K * N + k * N + j)];
                            acc += double(a) * bb;
                        }
                        want[size_t(b * M * N + i * N + j)] += float(0.5 * acc);
                    }
            CAPTURE(form);
            CAPTURE(c32);
            CHECK(rel_error(got, want) < (c32 ? 1e-5 : 1e-2));
        }
    gemm_destroy(g);
}

TEST_CASE("gpu: y = x W^T + C read in the epilogue, and products on column slices (row strides)") {
    if (!need_gpu()) return;
    Rng rng(fresh_seed());
    Gemm g = gemm_create(nullptr);
    int M = 45, N = 24, K = 40, ld = 3 * 8;  // operands and outputs that are 8-column slices of 24-column matrices
    std::vector<float> X = bf16_round(random_vector(size_t(M * K), rng)), W = bf16_round(random_vector(size_t(N * K), rng)),
                       R = bf16_round(random_vector(size_t(M * N), rng)), U = bf16_round(random_vector(size_t(M * ld), rng)),
                       Bm = bf16_round(random_vector(size_t(N * 8), rng));
    DeviceFree keep;
    bf16 *x = keep(to_device_bf16(X)), *w = keep(to_device_bf16(W)), *r = keep(to_device_bf16(R)), *u = keep(to_device_bf16(U)),
         *b = keep(to_device_bf16(Bm));
    bf16* y = keep(poisoned<bf16>(size_t(M * N)));
    matmul_nt_add(g, y, r, x, w, M, N, K);  // y = x W^T + R (R is not written)
    std::vector<float> want(size_t(M * N));
    for (int i = 0; i < M; ++i)
        for (int j = 0; j < N; ++j) {
            double acc = R[size_t(i * N + j)];
            for (int k = 0; k < K; ++k) acc += double(X[size_t(i * K + k)]) * W[size_t(j * K + k)];
            want[size_t(i * N + j)] = float(acc);
        }
    CHECK(rel_error(from_device_bf16(y, want.size()), want) < 1e-2);
    CHECK(from_device_bf16(r, R.size()) == R);
    // z[:, 8:16] = 2 u[:, 8:16] B^T with u's rows 24 apart, written into columns 8..16 of z [M, 24]
    bf16* z = keep(to_device_bf16(std::vector<float>(size_t(M * ld), 7.0f)));
    matmul_nt(g, z + 8, u + 8, b, M, 8, 8, 2.0f, 0.0f, {}, {ld, 0, ld});
    std::vector<float> got = from_device_bf16(z, size_t(M * ld)), want_z(size_t(M * ld), 7.0f);
    for (int i = 0; i < M; ++i)
        for (int j = 0; j < 8; ++j) {
            double acc = 0;
            for (int k = 0; k < 8; ++k) acc += double(U[size_t(i * ld + 8 + k)]) * Bm[size_t(j * 8 + k)];
            want_z[size_t(i * ld + 8 + j)] = float(2 * acc);
        }
    CHECK(rel_error(got, want_z) < 1e-2);  // and the other columns keep their 7s
    for (int i = 0; i < M; ++i) CHECK((got[size_t(i * ld)] == 7.0f && got[size_t(i * ld + 16)] == 7.0f));
    gemm_destroy(g);
}

TEST_CASE("gpu: generation's matrix-vector products (1 and 2 rows): bf16 and fp32 out, beta, C in the epilogue, row strides") {
    if (!need_gpu()) return;
    Rng rng(fresh_seed());
    Gemm g = gemm_create(nullptr);
    // K = 1000: 125 16-byte chunks, so the four-load loop and the one-load remainder both run; N = 77 leaves
    // a block part-empty; x and y are column slices (rows 1016 and 96 apart).
    const int N = 77, K = 1000, ldx = 1016, ldy = 96;
    for (int M = 1; M <= kGemvMaxRows; ++M)
        for (int form = 0; form < 4; ++form) {  // 0: bf16, beta 0;  1: bf16, beta 1;  2: fp32, beta 0.5;  3: + C
            CAPTURE(M);
            CAPTURE(form);
            std::vector<float> X = bf16_round(random_vector(size_t(M * ldx), rng)), W = bf16_round(random_vector(size_t(N * K), rng)),
                               Y0 = bf16_round(random_vector(size_t(M * ldy), rng)), C = bf16_round(random_vector(size_t(M * ldy), rng));
            DeviceFree keep;
            bf16 *x = keep(to_device_bf16(X)), *w = keep(to_device_bf16(W)), *c = keep(to_device_bf16(C));
            const float alpha = 0.75f, beta = form == 1 ? 1.0f : form == 2 ? 0.5f : 0.0f;
            REQUIRE(gemv_applies(M, K, x + 8, ldx, w, K));
            std::vector<float> want = Y0;
            for (int m = 0; m < M; ++m)
                for (int n = 0; n < N; ++n) {
                    double acc = 0;
                    for (int k = 0; k < K; ++k) acc += double(X[size_t(m * ldx + 8 + k)]) * W[size_t(n * K + k)];
                    float& y = want[size_t(m * ldy + n)];
                    y = float(alpha * acc + (form == 3 ? double(C[size_t(m * ldy + n)]) : double(beta) * y));
                }
            // the kernel itself, then matmul_nt / matmul_nt_add through gemm.cu's dispatch, with and without it
            for (int route = 0; route < 3; ++route) {
                CAPTURE(route);
                g.gemv_rows = route == 2 ? 0 : kGemvMaxRows;
                std::vector<float> got;
                if (form == 2) {
                    float* y = keep(to_device(Y0));
                    if (route == 0) gemv_nt(x + 8, ldx, w, K, y, true, ldy, nullptr, M, N, K, alpha, beta, nullptr);
                    else matmul_nt(g, y, x + 8, w, M, N, K, alpha, beta, {}, {ldx, 0, ldy});
                    got = from_device(y, Y0.size());
                } else {
                    std::vector<float> start = Y0;  // forms 0 and 3 must not read y: NaN in its N columns
                    for (int m = 0; m < M && form != 1; ++m)
                        for (int n = 0; n < N; ++n) start[size_t(m * ldy + n)] = NAN;
                    bf16* y = keep(to_device_bf16(start));
                    if (route == 0) gemv_nt(x + 8, ldx, w, K, y, false, ldy, form == 3 ? c : nullptr, M, N, K, alpha, beta, nullptr);
                    else if (form == 3) matmul_nt_add(g, y, c, x + 8, w, M, N, K, alpha, {ldx, 0, ldy});
                    else matmul_nt(g, y, x + 8, w, M, N, K, alpha, beta, {}, {ldx, 0, ldy});
                    got = from_device_bf16(y, Y0.size());
                }
                for (int m = 0; m < M; ++m)  // past column N of each row: untouched
                    for (int n = N; n < ldy; ++n) REQUIRE(got[size_t(m * ldy + n)] == Y0[size_t(m * ldy + n)]);
                CHECK(rel_error(got, want) < (form == 2 ? 1e-5 : 1e-2));
            }
        }
    gemm_destroy(g);
}

TEST_CASE("gpu: the products of one input in one launch (q, k, v; gate, up), with and without C, and one at a time") {
    if (!need_gpu()) return;
    Rng rng(fresh_seed());
    Gemm g = gemm_create(nullptr);
    const int K = 520, Ns[kGemvMaxGroup] = {77, 16, 40};  // 520: 65 chunks; 77: a part-empty last block
    for (int M : {1, 2, 5})                                // 5 rows: one product at a time (cuBLASLt)
        for (int route = 0; route < 2; ++route) {          // 1: gemv_rows 0, every product through cuBLASLt
            CAPTURE(M);
            CAPTURE(route);
            g.gemv_rows = route == 1 ? 0 : kGemvMaxRows;
            std::vector<float> X = bf16_round(random_vector(size_t(M * K), rng));
            DeviceFree keep;
            bf16* x = keep(to_device_bf16(X));
            std::vector<std::vector<float>> W(kGemvMaxGroup), C(kGemvMaxGroup);
            GemvOut out[kGemvMaxGroup];
            for (int i = 0; i < kGemvMaxGroup; ++i) {
                W[size_t(i)] = bf16_round(random_vector(size_t(Ns[i] * K), rng));
                C[size_t(i)] = bf16_round(random_vector(size_t(M * Ns[i]), rng));
                out[i] = {keep(to_device_bf16(W[size_t(i)])), keep(poisoned<bf16>(size_t(M * Ns[i]))),
                          i == 1 ? nullptr : keep(to_device_bf16(C[size_t(i)])), Ns[i]};  // the second adds nothing
            }
            matmul_nt_group(g, x, M, K, out, kGemvMaxGroup);
            for (int i = 0; i < kGemvMaxGroup; ++i) {
                CAPTURE(i);
                std::vector<float> want(size_t(M * Ns[i]));
                for (int m = 0; m < M; ++m)
                    for (int n = 0; n < Ns[i]; ++n) {
                        double acc = i == 1 ? 0.0 : C[size_t(i)][size_t(m * Ns[i] + n)];
                        for (int k = 0; k < K; ++k) acc += double(X[size_t(m * K + k)]) * W[size_t(i)][size_t(n * K + k)];
                        want[size_t(m * Ns[i] + n)] = float(acc);
                    }
                CHECK(rel_error(from_device_bf16(out[i].y, want.size()), want) < 1e-2);
            }
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
    ids[1] = ids[0], ids[7] = ids[0], ids[N - 1] = ids[3];  // repeated ids accumulate, in order
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
        bool with_residual = D != 2048;  // the final norm's backward has none (null)
        rmsnorm_backward(dxin, dwin, rstd, keep(to_device_bf16(dy)), with_residual ? keep(to_device_bf16(res)) : nullptr, dx, dw, partial, N,
                         D, nullptr);
        Vec ref_dx, ref_dw;
        std::vector<float> want_y = to_float(rmsnorm_forward_ref(to_double(x), to_double(w), N, D, eps));
        rmsnorm_backward_ref(to_double(x), to_double(w), to_double(dy), N, D, eps, ref_dx, ref_dw);
        std::vector<float> want_dx = to_float(ref_dx), want_dw = to_float(ref_dw);
        for (size_t k = 0; k < want_dx.size() && with_residual; ++k) want_dx[k] += res[k];  // the kernel adds the residual
        CAPTURE(D);
        CHECK(rel_error(from_device_bf16(y, want_y.size()), want_y) < 1e-2);
        CHECK(rel_error(from_device_bf16(dx, want_dx.size()), want_dx) < 1e-2);
        CHECK(rel_error(from_device(dw, want_dw.size()), want_dw) < 1e-2);
    }
}

TEST_CASE("gpu: per-head rmsnorm (Qwen3's q_norm, k_norm): rows of head_dim, backward in place, one weight for every head") {
    if (!need_gpu()) return;
    Rng rng(fresh_seed());
    struct Shape { int heads, Dh; };
    for (Shape sh : {Shape{16, 128}, Shape{3, 64}, Shape{5, 36}}) {  // Qwen3-0.6B's q; a k; Dh not a multiple of 8
        int N = 29, rows = N * sh.heads, Dh = sh.Dh;
        float eps = 1e-6f;
        std::vector<float> x = bf16_round(random_vector(size_t(rows) * Dh, rng, 3.0f)), w = bf16_round(random_vector(size_t(Dh), rng)),
                           dy = bf16_round(random_vector(size_t(rows) * Dh, rng)), dw0 = random_vector(size_t(Dh), rng);
        DeviceFree keep;
        bf16 *xin = keep(to_device_bf16(x)), *win = keep(to_device_bf16(w)), *y = keep(poisoned<bf16>(x.size()));
        bf16* d = keep(to_device_bf16(dy));  // d y in, d x out
        float *rstd = keep(poisoned<float>(size_t(rows))), *dw = keep(to_device(dw0));
        float* partial = keep(poisoned<float>(size_t(kNormPartials) * sh.heads * Dh));
        rmsnorm_forward(xin, win, y, rstd, rows, Dh, eps, nullptr);  // the forward: rmsnorm on N*heads rows of Dh
        head_rmsnorm_backward(xin, win, rstd, d, dw, partial, N, sh.heads, Dh, nullptr);
        Vec want_rstd, ref_dx, ref_dw;
        std::vector<float> want_y = to_float(rmsnorm_forward_ref(to_double(x), to_double(w), rows, Dh, eps, &want_rstd));
        rmsnorm_backward_ref(to_double(x), to_double(w), to_double(dy), rows, Dh, eps, ref_dx, ref_dw);  // dw: over every row and head
        std::vector<float> want_dx = to_float(ref_dx), want_dw = to_float(ref_dw);
        for (int i = 0; i < Dh; ++i) want_dw[size_t(i)] += dw0[size_t(i)];  // dw accumulates
        CAPTURE(sh.heads);
        CAPTURE(Dh);
        CHECK(rel_error(from_device_bf16(y, want_y.size()), want_y) < 1e-2);
        CHECK(rel_error(from_device(rstd, size_t(rows)), to_float(want_rstd)) < 1e-4);
        CHECK(rel_error(from_device_bf16(d, want_dx.size()), want_dx) < 1e-2);
        CHECK(rel_error(from_device(dw, want_dw.size()), want_dw) < 1e-2);
    }
}

TEST_CASE("gpu: rope in place at each row's position, and back") {
    if (!need_gpu()) return;
    Rng rng(fresh_seed());
    for (int Dh : {64, 128, 96, 36}) {  // 36: one pair per access; the others 8
        int N = 37, nh = 3, half = Dh / 2, P = 50;  // positions < P: rows of documents that restart
        std::vector<float> inv(static_cast<size_t>(half)), cos_t(static_cast<size_t>(P * half)), sin_t(cos_t.size());
        for (int i = 0; i < half; ++i) inv[size_t(i)] = float(std::pow(10000.0, -2.0 * i / Dh));
        for (int p = 0; p < P; ++p)
            for (int i = 0; i < half; ++i) {
                double angle = double(p) * double(inv[size_t(i)]);
                cos_t[size_t(p * half + i)] = float(std::cos(angle)), sin_t[size_t(p * half + i)] = float(std::sin(angle));
            }
        std::vector<int32_t> pos(static_cast<size_t>(N));
        for (int32_t& p : pos) p = int32_t(rng.below(uint64_t(P)));
        std::vector<float> x = bf16_round(random_vector(size_t(N * nh * Dh), rng)), g = bf16_round(random_vector(x.size(), rng));
        DeviceFree keep;
        float *dc = keep(to_device(cos_t)), *ds = keep(to_device(sin_t));
        int32_t* dpos = keep(to_device(pos));
        bf16 *dx = keep(to_device_bf16(x)), *dg = keep(to_device_bf16(g));
        rope(dx, dpos, dc, ds, N, nh, Dh, false, nullptr);
        rope(dg, dpos, dc, ds, N, nh, Dh, true, nullptr);
        Vec want = to_double(x), want_g = to_double(g);
        rope_ref(want, pos, inv, N, nh, Dh);
        rope_ref(want_g, pos, inv, N, nh, Dh, true);
        CAPTURE(Dh);
        CHECK(rel_error(from_device_bf16(dx, x.size()), to_float(want)) < 1e-2);
        CHECK(rel_error(from_device_bf16(dg, x.size()), to_float(want_g)) < 1e-2);
    }
}

TEST_CASE("gpu: LoRA dropout keeps 1 - p of the elements, scaled by 1 / (1 - p), with the host's mask, forward and backward") {
    if (!need_gpu()) return;
    Rng rng(fresh_seed());
    int64_t n = 1 << 20;
    std::vector<float> x = bf16_round(random_vector(size_t(n), rng, 2.0f)), g = bf16_round(random_vector(size_t(n), rng)),
                       dx0 = bf16_round(random_vector(size_t(n), rng));
    for (float p : {0.05f, 0.1f, 0.5f}) {
        uint64_t seed = rng.next();
        DeviceFree keep;
        bf16* xd = keep(poisoned<bf16>(size_t(n)));
        // x and dx in rows of 1,024 elements 1,040 apart (the adapter's input beside its u columns, llama.cu);
        // the 16 columns after each row must stay as they were
        const int cols = 1024, ld = 1040;
        auto spread = [&](const std::vector<float>& v) {
            std::vector<float> out(size_t(n / cols * ld), 7.0f);
            for (int64_t i = 0; i < n; ++i) out[size_t(i / cols * ld + i % cols)] = v[size_t(i)];
            return out;
        };
        auto gather = [&](const std::vector<float>& v, int64_t& pad_changed) {
            std::vector<float> out(static_cast<size_t>(n));
            for (int64_t i = 0; i < int64_t(v.size()); ++i)
                if (i % ld < cols) out[size_t(i / ld * cols + i % ld)] = v[size_t(i)];
                else pad_changed += v[size_t(i)] != 7.0f;
            return out;
        };
        lora_dropout(keep(to_device_bf16(spread(x))), xd, n, cols, ld, seed, 3, kV, 17, p, nullptr);
        bf16* dx = keep(to_device_bf16(spread(dx0)));  // backward: dx += g * keep / (1 - p), the same mask
        lora_dropout_backward(keep(to_device_bf16(g)), dx, n, cols, ld, seed, 3, kV, 17, p, nullptr);
        int64_t pad_changed = 0;
        std::vector<float> got = from_device_bf16(xd, size_t(n)), got_dx = gather(from_device_bf16(dx, size_t(n / cols * ld)), pad_changed);
        CHECK(pad_changed == 0);
        int64_t kept = 0, mismatched = 0, other_step = 0, mismatched_dx = 0;
        for (int64_t i = 0; i < n; ++i) {
            bool k = lora_dropout_keep(seed, 3, kV, 17, i, p);
            kept += k;
            other_step += k != lora_dropout_keep(seed, 3, kV, 18, i, p);
            float want = k ? bf16_to_float(float_to_bf16(x[size_t(i)] / (1 - p))) : 0.0f;
            mismatched += std::fabs(got[size_t(i)] - want) > 1e-2f * std::fabs(want) + 1e-30f;
            float add = k ? g[size_t(i)] / (1 - p) : 0.0f, want_dx = dx0[size_t(i)] + add;  // dropped: dx untouched, exactly
            mismatched_dx += std::fabs(got_dx[size_t(i)] - want_dx) > (k ? 1e-2f * (std::fabs(dx0[size_t(i)]) + std::fabs(add)) : 0.0f);
        }
        double rate = double(n - kept) / double(n), sigma = std::sqrt(p * (1 - p) / double(n));
        CAPTURE(p);
        CHECK(std::fabs(rate - p) < 5 * sigma);                                 // the drop rate is p
        CHECK(mismatched == 0);                                                 // the GPU's mask is the host's
        CHECK(mismatched_dx == 0);                                              // and the backward's
        CHECK(double(other_step) / n == doctest::Approx(2 * p * (1 - p)).epsilon(0.05));  // another step: an independent mask
    }
}

TEST_CASE("gpu: swiglu forward and backward") {
    if (!need_gpu()) return;
    Rng rng(fresh_seed());
    // one element per access, and 8 (16-byte loads); contiguous, and act, dact in rows of cols ld apart
    struct Shape { size_t n; int cols, ld; };
    for (Shape sh : {Shape{1001, 0, 0}, Shape{4096, 0, 0}, Shape{4096, 128, 144}, Shape{1001, 143, 151}}) {
    size_t n = sh.n, rows = sh.cols ? n / size_t(sh.cols) : 1, cols = sh.cols ? size_t(sh.cols) : n, ld = sh.cols ? size_t(sh.ld) : n;
    CAPTURE(n);
    CAPTURE(sh.ld);
    std::vector<float> g = bf16_round(random_vector(n, rng, 4.0f)), u = bf16_round(random_vector(n, rng)),
                       d = bf16_round(random_vector(n, rng)), d_rows(rows * ld, 0.0f);
    for (size_t i = 0; i < n; ++i) d_rows[i / cols * ld + i % cols] = d[i];
    DeviceFree keep;
    bf16 *act = keep(poisoned<bf16>(rows * ld)), *dg = keep(poisoned<bf16>(n)), *du = keep(poisoned<bf16>(n));
    bf16 *dgi = keep(to_device_bf16(g)), *dui = keep(to_device_bf16(u));
    swiglu_forward(dgi, dui, act, int64_t(n), nullptr, sh.cols, sh.ld);
    swiglu_backward(dgi, dui, keep(to_device_bf16(d_rows)), dg, du, int64_t(n), nullptr, sh.cols, sh.ld);
    Vec ref_dg, ref_du;
    std::vector<float> wa = to_float(swiglu_forward_ref(to_double(g), to_double(u)));
    swiglu_backward_ref(to_double(g), to_double(u), to_double(d), ref_dg, ref_du);
    std::vector<float> wg = to_float(ref_dg), wu = to_float(ref_du), act_rows = from_device_bf16(act, rows * ld), got_act(n);
    size_t pads_written = 0;  // the columns after each row are left alone (poisoned stays poisoned)
    for (size_t i = 0; i < rows * ld; ++i)
        if (i % ld < cols) got_act[i / ld * cols + i % ld] = act_rows[i];
        else pads_written += !std::isnan(act_rows[i]);
    CHECK(pads_written == 0);
    CHECK(rel_error(got_act, wa) < 1e-2);
    CHECK(rel_error(from_device_bf16(dg, n), wg) < 1e-2);
    CHECK(rel_error(from_device_bf16(du, n), wu) < 1e-2);
    }
}

TEST_CASE("gpu: cross-entropy with ignored targets and the label shift") {
    if (!need_gpu()) return;
    Rng rng(fresh_seed());
    for (int V : {1001, 4096}) {  // a vocabulary of odd size (element loads) and one of 8k (16-byte loads)
        int B = 2, T = 5, rows = B * T;
        std::vector<float> z = bf16_round(random_vector(size_t(rows * V), rng, 5.0f));  // logits are bf16, as HF's
        std::vector<int32_t> labels(static_cast<size_t>(rows));
        for (int32_t& l : labels) l = int32_t(rng.below(uint64_t(V)));
        labels[2] = -100;
        DeviceFree keep;
        int32_t* targets = keep(poisoned<int32_t>(size_t(rows)));
        shift_labels(keep(to_device(labels)), targets, rows, T, nullptr);
        std::vector<int32_t> t(static_cast<size_t>(rows));
        check_cuda(cudaMemcpy(t.data(), targets, size_t(rows) * 4, cudaMemcpyDeviceToHost), "copy");
        for (int r = 0; r < rows; ++r) CHECK(t[size_t(r)] == (r % T == T - 1 ? -100 : labels[size_t(r + 1)]));
        float inv = 1.0f / 7;
        for (bool backward : {false, true}) {
            float* loss = keep(to_device(std::vector<float>{0.0f}));
            bf16* zd = keep(to_device_bf16(z));  // the logits in, their gradient out (backward)
            float* row_loss = keep(poisoned<float>(size_t(rows)));
            cross_entropy(zd, targets, row_loss, loss, rows, V, inv, backward, nullptr);
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
            std::vector<float> got = from_device_bf16(zd, z.size());
            if (backward) CHECK(rel_error(got, want_dz) < 1e-2);
            else CHECK(got == z);  // forward only leaves the logits alone
        }
    }
}

namespace {

// doc_start for rows of random documents (lengths 1.. with a document of length 1 in each row).
std::vector<int32_t> random_documents(int B, int T, Rng& rng) {
    std::vector<int32_t> start(size_t(B) * size_t(T));
    for (int b = 0; b < B; ++b) {
        int begin = 0, single = int(rng.below(uint64_t(T)));
        for (int t = 0; t < T; ++t) {
            if (t == single || t == single + 1 || (t > 0 && rng.below(uint64_t(std::max(2, T / 4))) == 0)) begin = t;
            start[size_t(b) * T + t] = begin;
        }
    }
    return start;
}

// One attention shape through `run` (forward + backward on device buffers), checked against the reference.
template <typename Run>
void check_attention(const AttentionShape& a, bool documents, Rng& rng, Run run) {
    int64_t nq = int64_t(a.B) * a.T * a.H * a.Dh, nk = int64_t(a.B) * a.T * a.KVH * a.Dh;
    std::vector<float> q = bf16_round(random_vector(size_t(nq), rng)), k = bf16_round(random_vector(size_t(nk), rng)),
                       v = bf16_round(random_vector(size_t(nk), rng)), dO = bf16_round(random_vector(size_t(nq), rng));
    std::vector<int32_t> docs = documents ? random_documents(a.B, a.T, rng) : std::vector<int32_t>();
    AttentionDims dims{a.B, a.T, a.H, a.KVH, a.Dh};
    Vec o, lse, dq, dk, dv;
    attention_forward_ref(dims, to_double(q), to_double(k), to_double(v), docs, o, lse);
    attention_backward_ref(dims, to_double(q), to_double(k), to_double(v), to_double(dO), docs, dq, dk, dv);
    DeviceFree keep;
    bf16 *gq = keep(to_device_bf16(q)), *gk = keep(to_device_bf16(k)), *gv = keep(to_device_bf16(v)), *gdO = keep(to_device_bf16(dO));
    bf16* go = keep(poisoned<bf16>(size_t(nq)));
    float* glse = keep(poisoned<float>(size_t(a.B) * a.H * a.T));
    bf16 *gdq = keep(poisoned<bf16>(size_t(nq))), *gdk = keep(poisoned<bf16>(size_t(nk))), *gdv = keep(poisoned<bf16>(size_t(nk)));
    int32_t* gdocs = documents ? keep(to_device(docs)) : nullptr;
    run(gq, gk, gv, gdocs, go, glse, gdO, gdq, gdk, gdv);
    CAPTURE(a.B);
    CAPTURE(a.T);
    CAPTURE(a.H);
    CAPTURE(a.KVH);
    CAPTURE(a.Dh);
    CAPTURE(documents);
    CHECK(rel_error(from_device_bf16(go, size_t(nq)), to_float(o)) < 2e-2);
    CHECK(rel_error(from_device(glse, lse.size()), to_float(lse)) < 1e-3);
    CHECK(rel_error(from_device_bf16(gdq, size_t(nq)), to_float(dq)) < 2e-2);
    CHECK(rel_error(from_device_bf16(gdk, size_t(nk)), to_float(dk)) < 2e-2);
    CHECK(rel_error(from_device_bf16(gdv, size_t(nk)), to_float(dv)) < 2e-2);
}

const AttentionShape kAttentionShapes[] = {{2, 37, 4, 1, 64}, {2, 37, 2, 2, 128}, {1, 130, 8, 2, 64}, {1, 67, 6, 2, 96},
                                           {2, 33, 3, 1, 64}, {1, 257, 4, 4, 128},
                                           {1, 300, 8, 2, 128},   // GQA 4 at head_dim 128 (Llama-3-8B's and Qwen3's grouping)
                                           {1, 1001, 6, 2, 64},   // many key and query blocks of every kernel
                                           {1, 1001, 4, 2, 128}};

}  // namespace

TEST_CASE("gpu: attention, reference path: causal, documents in a row, GQA 1-4, head_dim 64, 96, 128, small score chunks") {
    if (!need_gpu()) return;
    Rng rng(fresh_seed());
    Gemm g = gemm_create(nullptr);
    for (const AttentionShape& a : kAttentionShapes)
        for (bool documents : {false, true})
            for (int64_t budget : {int64_t(1), int64_t(1) << 30}) {  // one (batch, kv-head) block at a time, or all
                ReferenceAttention ref(a, budget);
                DeviceFree keep;
                void* scratch = keep(device_alloc<char>(ref.scratch_bytes(), "test"));
                check_attention(a, documents, rng, [&](bf16* q, bf16* k, bf16* v, int32_t* docs, bf16* o, float* lse, bf16* dO,
                                                        bf16* dq, bf16* dk, bf16* dv) {
                    ref.forward(g, q, k, v, docs, o, lse, scratch);
                    ref.backward(g, q, k, v, o, dO, lse, docs, dq, dk, dv, scratch);
                });
            }
    gemm_destroy(g);
}

// On an H100/H200 head_dim 64 runs the Hopper kernels, and head_dim 128 the Hopper forward; both kernel families
// are checked there.
TEST_CASE("gpu: attention at its call site (fused where supported), and the decode attention over a cache") {
    if (!need_gpu()) return;
    Rng rng(fresh_seed());
    Gemm g = gemm_create(nullptr);
    for (bool hopper : {true, false}) {
        bool runs = flash_attention_use_hopper(hopper);
        MESSAGE("head_dim 64 and 128: " << std::string(runs ? "the Hopper kernels (wgmma, TMA)" : "the mma.sync kernels"));
        if (hopper && !runs) continue;  // not this GPU or build: the pass below covers what runs
        for (const AttentionShape& a : kAttentionShapes)
            for (bool documents : {false, true}) {
                CAPTURE(hopper);
                Attention attention(a, g);
                check_attention(a, documents, rng, [&](bf16* q, bf16* k, bf16* v, int32_t* docs, bf16* o, float* lse, bf16* dO, bf16* dq,
                                                        bf16* dk, bf16* dv) {
                    attention.forward(q, k, v, docs, o, lse);
                    attention.backward(q, k, v, o, dO, lse, docs, dq, dk, dv);
                });
            }
    }
    flash_attention_use_hopper(true);
    // decode: two sequences of different lengths (one longer than the kernel's 256 threads); each new token's
    // k, v written into its row of the cache, then its query against the row's positions: the last query row
    // of the causal reference; head_dim 64 and 128 (16-byte loads) and 36 (not a multiple of 8: 4-byte loads)
    for (int Dh : {64, 128, 36}) {
        CAPTURE(Dh);
        int H = 6, KVH = 2, max_len = 320, KVd = KVH * Dh, lengths[2] = {300, 30};
        std::vector<float> cache_k(size_t(2 * max_len * KVd), 0.0f), cache_v = cache_k, new_k, new_v, last_q, want;
        std::vector<int32_t> last_pos;
        for (int b = 0; b < 2; ++b) {
            int T = lengths[b];
            std::vector<float> q = bf16_round(random_vector(size_t(T * H * Dh), rng)), k = bf16_round(random_vector(size_t(T * KVd), rng)),
                               v = bf16_round(random_vector(k.size(), rng));
            Vec o, lse;
            attention_forward_ref({1, T, H, KVH, Dh}, to_double(q), to_double(k), to_double(v), {}, o, lse);
            std::copy(k.begin(), k.end() - KVd, cache_k.begin() + b * max_len * KVd);  // positions 0..T-2 cached already
            std::copy(v.begin(), v.end() - KVd, cache_v.begin() + b * max_len * KVd);
            new_k.insert(new_k.end(), k.end() - KVd, k.end()), new_v.insert(new_v.end(), v.end() - KVd, v.end());
            last_q.insert(last_q.end(), q.end() - H * Dh, q.end());
            std::vector<float> of = to_float(o);
            want.insert(want.end(), of.end() - H * Dh, of.end());
            last_pos.push_back(T - 1);
        }
        DeviceFree keep;
        bf16 *kc = keep(to_device_bf16(cache_k)), *vc = keep(to_device_bf16(cache_v)), *out = keep(poisoned<bf16>(size_t(2 * H * Dh)));
        int32_t* dpos = keep(to_device(last_pos));
        kv_cache_write(keep(to_device_bf16(new_k)), keep(to_device_bf16(new_v)), kc, vc, dpos, 2, max_len, KVd, nullptr);
        decode_attention(keep(to_device_bf16(last_q)), kc, vc, dpos, out, keep(poisoned<float>(size_t(2 * H * max_len))), 2, max_len, H,
                         KVH, Dh, nullptr);
        CHECK(rel_error(from_device_bf16(out, size_t(2 * H * Dh)), want) < 2e-2);
    }
    gemm_destroy(g);
}

// Given RoPE's tables, the backward returns dq and dk of q and k before the rotation: the reference's dq, dk
// rotated back at each row's position (positions restart with each document). Every path: the Hopper kernels
// rotate as they write, the mma.sync kernels and the reference path with rope() after.
TEST_CASE("gpu: attention's backward hands dq and dk back through RoPE's rotation, on every path") {
    if (!need_gpu()) return;
    Rng rng(fresh_seed());
    Gemm g = gemm_create(nullptr);
    for (const AttentionShape& a : kAttentionShapes) {
        const int64_t nq = int64_t(a.B) * a.T * a.H * a.Dh, nk = int64_t(a.B) * a.T * a.KVH * a.Dh, N = int64_t(a.B) * a.T;
        const int half = a.Dh / 2;
        std::vector<float> q = bf16_round(random_vector(size_t(nq), rng)), k = bf16_round(random_vector(size_t(nk), rng)),
                           v = bf16_round(random_vector(size_t(nk), rng)), dO = bf16_round(random_vector(size_t(nq), rng));
        std::vector<int32_t> docs = random_documents(a.B, a.T, rng), pos(static_cast<size_t>(N));
        for (int64_t n = 0; n < N; ++n) pos[size_t(n)] = int32_t(n % a.T - docs[size_t(n)]);
        std::vector<float> inv(static_cast<size_t>(half)), cos_t(static_cast<size_t>(a.T * half)), sin_t(cos_t.size());
        for (int i = 0; i < half; ++i) inv[size_t(i)] = float(std::pow(10000.0, -2.0 * i / a.Dh));
        for (int p = 0; p < a.T; ++p)
            for (int i = 0; i < half; ++i)
                cos_t[size_t(p * half + i)] = float(std::cos(double(p) * inv[size_t(i)])), sin_t[size_t(p * half + i)] = float(std::sin(double(p) * inv[size_t(i)]));
        Vec dq, dk, dv;
        AttentionDims dims{a.B, a.T, a.H, a.KVH, a.Dh};
        attention_backward_ref(dims, to_double(q), to_double(k), to_double(v), to_double(dO), docs, dq, dk, dv);
        rope_ref(dq, pos, inv, int(N), a.H, a.Dh, true);
        rope_ref(dk, pos, inv, int(N), a.KVH, a.Dh, true);
        DeviceFree keep;
        bf16 *gq = keep(to_device_bf16(q)), *gk = keep(to_device_bf16(k)), *gv = keep(to_device_bf16(v)), *gdO = keep(to_device_bf16(dO));
        int32_t *gdocs = keep(to_device(docs)), *gpos = keep(to_device(pos));
        const Rotation rope{keep(to_device(cos_t)), keep(to_device(sin_t)), gpos};
        for (int path = 0; path < 3; ++path) {  // the Hopper kernels (where they run), the mma.sync kernels, the reference
            const bool hopper = flash_attention_use_hopper(path == 0);
            if (path == 0 && !hopper) continue;  // not this GPU or build
            Attention attention(a, g, path < 2);
            bf16* go = keep(poisoned<bf16>(size_t(nq)));
            float* glse = keep(poisoned<float>(size_t(a.B) * a.H * a.T));
            bf16 *gdq = keep(poisoned<bf16>(size_t(nq))), *gdk = keep(poisoned<bf16>(size_t(nk))), *gdv = keep(poisoned<bf16>(size_t(nk)));
            attention.forward(gq, gk, gv, gdocs, go, glse);
            attention.backward(gq, gk, gv, go, gdO, glse, gdocs, gdq, gdk, gdv, rope);
            CAPTURE(a.T);
            CAPTURE(a.H);
            CAPTURE(a.KVH);
            CAPTURE(a.Dh);
            CAPTURE(path);
            CHECK(rel_error(from_device_bf16(gdq, size_t(nq)), to_float(dq)) < 2e-2);
            CHECK(rel_error(from_device_bf16(gdk, size_t(nk)), to_float(dk)) < 2e-2);
            CHECK(rel_error(from_device_bf16(gdv, size_t(nk)), to_float(dv)) < 2e-2);
        }
    }
    flash_attention_use_hopper(true);
    gemm_destroy(g);
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
    ThreadPool pool(4);
    for (int step = 1; step <= 3; ++step) {  // the CPU gets the GPU's clip scale, as offload does
        adamw_step_gpu(dp, dg, dm, dv, p16, int64_t(n), c, 1e-3f, c.weight_decay, step, scale, nullptr);
        adamw_step_cpu(p2.data(), g.data(), m2.data(), v2.data(), nullptr, int64_t(n), c, 1e-3f, c.weight_decay, step, gpu_scale, pool);
    }
    CHECK(from_device(dp, n) == p2);  // bitwise: offload trains exactly like the GPU
    CHECK(from_device(dm, n) == m2);
    CHECK(from_device(dv, n) == v2);
    CHECK(rel_error(from_device_bf16(p16, n), p2) < 1e-2);
}
