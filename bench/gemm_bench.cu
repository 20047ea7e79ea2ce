// bench/gemm_bench.cu — the training step's products on the 7B and 1B shapes, through gemm.h. Three
// questions: what the epilogue's addend costs (matmul_nt_add, which adds LoRA's B term or the residual while
// writing y, against matmul_nt); what one product per projection group would save (q, k, v and gate, up over
// concatenated weights, against one product each), in TFLOP/s; and where LoRA's products of one layer (r = 16,
// as llama.cu issues them) stand against the memory they must move, in GB/s. Operands hold random values
// (zeros draw less power and run faster than training does). The two sides of a question alternate, 10
// rounds of 10 products each, and each side keeps its median round: a sustained run slows as the GPU heats,
// and alternating gives both sides the same clocks. A fourth: the lm_head's two products (logits = x E^T, dx =
// dlogits E) over a whole step's tokens, chunk by chunk, at the rows of a 256 MiB chunk (what llama.cu took
// before 2026-12-07: 1,046 at the 1B's vocabulary) against multiples of 128 (llama.cu now: 2,048 there).
// A fifth: LoRA's two products that read one member's dy (dB += s dy^T u, du = s dy B) over all tokens, as
// two products, against a chunk of rows at a time, both products per chunk (so the second reads the chunk
// from L2, where a whole dy larger than L2 comes from memory twice).
// A sixth: LoRA's B term folded into the base product by concatenating along K (y = [x | s u] [W | B]^T,
// and in the backward [dx | d(s u)] = dy [W | B]), against the products llama.cu issues today (y = s u B^T
// written, then y = x W^T + y read in the epilogue; du = s dy B beside dx = dy W), a layer of each model.
//   make build/gemm_bench && ./build/gemm_bench [head|dy|concat]   (only the fourth, the fifth, the sixth question)
#include <algorithm>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

#include "kernels/gemm.h"
#include "kernels/ops.h"
#include "support/cuda_calls.h"

namespace {

bf16* random_matrix(size_t n, uint64_t seed) {  // N(0, 1) values (the model's own initializer)
    bf16* x = device_alloc<bf16>(n, "operand");
    init_normal(x, nullptr, int64_t(n), seed, 0, 1.0f, 0.0f, nullptr);
    return x;
}

// Milliseconds per call of a and of b (each issues its products on g.stream), alternating rounds.
template <class A, class B>
void time_pair(const Gemm& g, A&& a, B&& b, double& ms_a, double& ms_b) {
    cudaEvent_t e[3];
    for (cudaEvent_t& x : e) check_cuda(cudaEventCreate(&x), "event");
    for (int i = 0; i < 3; ++i) a(), b();
    std::vector<float> ra, rb;
    for (int round = 0; round < 10; ++round) {
        check_cuda(cudaEventRecord(e[0], g.stream), "record");
        for (int i = 0; i < 10; ++i) a();
        check_cuda(cudaEventRecord(e[1], g.stream), "record");
        for (int i = 0; i < 10; ++i) b();
        check_cuda(cudaEventRecord(e[2], g.stream), "record");
        check_cuda(cudaEventSynchronize(e[2]), "sync");
        float t = 0;
        check_cuda(cudaEventElapsedTime(&t, e[0], e[1]), "elapsed"), ra.push_back(t / 10);
        check_cuda(cudaEventElapsedTime(&t, e[1], e[2]), "elapsed"), rb.push_back(t / 10);
    }
    for (cudaEvent_t& x : e) cudaEventDestroy(x);
    std::sort(ra.begin(), ra.end()), std::sort(rb.begin(), rb.end());
    ms_a = ra[ra.size() / 2], ms_b = rb[rb.size() / 2];
}

double tflops(double M, double N, double K, double ms) { return 2.0 * M * N * K / (ms * 1e-3) / 1e12; }

// One LoRA product of a layer as llama.cu's group_forward / group_backward issue it (r = 16, each group's u in
// columns of width 16 of a [tokens, 16 x members] matrix).
struct LoraProduct {
    std::string what;
    char form;  // 'f' y = s u B^T or u = x A^T (nt), 'a' the same + residual (nt_add), 'b' dB or dA (tn, fp32 += ), 'd' du or dx (nn)
    int M, N, K;
    Ld ld;
    double bytes() const {  // operands read once, the result written once (and read, where it accumulates or adds)
        double out = form == 'b' ? 8.0 : form == 'a' ? 4.0 : 2.0;
        return 2.0 * (double(M) * K + double(N) * K) + out * M * N;
    }
};

// The LoRA products of one layer: groups (input width, member widths) q,k,v | o | gate,up | down.
std::vector<LoraProduct> lora_products(int tokens, int D, int q, int kv, int F) {
    const int r = 16;
    struct Group {
        const char* name;
        int in;
        std::vector<std::pair<const char*, int>> members;
        bool residual;
    };
    const Group groups[] = {{"qkv", D, {{"q", q}, {"k", kv}, {"v", kv}}, false},
                            {"o", q, {{"o", D}}, true},
                            {"gate,up", D, {{"gate", F}, {"up", F}}, false},
                            {"down", F, {{"down", D}}, true}};
    std::vector<LoraProduct> list;
    for (const Group& g : groups) {
        int n = int(g.members.size()), ld = n * r;
        list.push_back({std::string("u = x A^T, ") + g.name, 'f', tokens, ld, g.in, {0, 0, ld}});
        for (auto& [name, out] : g.members) list.push_back({std::string("y = s u B^T, ") + name, g.residual ? 'a' : 'f', tokens, out, r, {ld, 0, 0}});
        for (auto& [name, out] : g.members) {
            list.push_back({std::string("dB += s dy^T u, ") + name, 'b', out, r, tokens, {0, ld, 0}});
            list.push_back({std::string("du = s dy B, ") + name, 'd', tokens, r, out, {0, 0, ld}});
        }
        list.push_back({std::string("dA += du^T x, ") + g.name, 'b', ld, g.in, tokens, {ld, 0, 0}});
        list.push_back({std::string("dx = du A, ") + g.name, 'd', tokens, g.in, ld, {ld, 0, 0}});
    }
    return list;
}

}  // namespace

int main(int argc, char** argv) {
    const std::string only = argc > 1 ? argv[1] : "";
    const bool head_only = only == "head" || only == "dy" || only == "concat";
    cudaStream_t stream;
    check_cuda(cudaStreamCreate(&stream), "stream");
    Gemm g = gemm_create(stream);
    const size_t most = size_t(8192) * 22016;  // the largest operand: 8192 rows of gate and up together
    bf16 *x = random_matrix(most, 1), *w = random_matrix(most, 2), *y = random_matrix(most, 3), *c = random_matrix(most, 4);
    int device = 0;
    cudaDeviceProp prop;
    check_cuda(cudaGetDevice(&device), "device");
    check_cuda(cudaGetDeviceProperties(&prop, device), "properties");
    std::printf("%s; TFLOP/s, the median of 10 alternating rounds\n\n", prop.name);

    struct Shape {
        const char* name;
        int M, N, K;  // y[M, N] = x[M, K] W[N, K]^T
    };
    const Shape shapes[] = {{"7b q/k/v/o_proj, 4096 tokens", 4096, 4096, 4096}, {"7b gate/up_proj, 4096 tokens", 4096, 11008, 4096},
                            {"7b down_proj, 4096 tokens", 4096, 4096, 11008},   {"1b q/o_proj, 8192 tokens", 8192, 2048, 2048},
                            {"1b k/v_proj, 8192 tokens", 8192, 512, 2048},      {"1b gate/up_proj, 8192 tokens", 8192, 8192, 2048},
                            {"1b down_proj, 8192 tokens", 8192, 2048, 8192}};
    std::printf("%-32s %10s %14s\n", "y = x W^T", "alone", "+ C (epilogue)");
    for (const Shape& s : shapes) {
        if (head_only) break;
        double plain = 0, added = 0;
        time_pair(g, [&] { matmul_nt(g, y, x, w, s.M, s.N, s.K); }, [&] { matmul_nt_add(g, y, c, x, w, s.M, s.N, s.K); }, plain, added);
        std::printf("%-32s %10.1f %14.1f\n", s.name, tflops(s.M, s.N, s.K, plain), tflops(s.M, s.N, s.K, added));
    }

    struct Group {
        const char* name;
        int M, K, n, widths[3];
    };
    const Group groups[] = {{"7b q,k,v, 4096 tokens", 4096, 4096, 3, {4096, 4096, 4096}},
                            {"7b gate,up, 4096 tokens", 4096, 4096, 2, {11008, 11008, 0}},
                            {"1b q,k,v, 8192 tokens", 8192, 2048, 3, {2048, 512, 512}},
                            {"1b gate,up, 8192 tokens", 8192, 2048, 2, {8192, 8192, 0}}};
    std::printf("\n%-32s %10s %14s\n", "projection group", "separate", "one product");
    for (const Group& gr : groups) {
        if (head_only) break;
        int total = 0;
        for (int i = 0; i < gr.n; ++i) total += gr.widths[i];
        auto separate = [&] {
            size_t at = 0;
            for (int i = 0; i < gr.n; ++i) {
                matmul_nt(g, y + at * size_t(gr.M), x, w + at * size_t(gr.K), gr.M, gr.widths[i], gr.K);
                at += size_t(gr.widths[i]);
            }
        };
        double apart = 0, one = 0;
        time_pair(g, separate, [&] { matmul_nt(g, y, x, w, gr.M, total, gr.K); }, apart, one);
        std::printf("%-32s %10.1f %14.1f\n", gr.name, tflops(gr.M, total, gr.K, apart), tflops(gr.M, total, gr.K, one));
    }

    // LoRA: each product timed against itself (both sides of time_pair run it), GB/s of the bytes it must move.
    float* f32 = device_alloc<float>(size_t(64) * 22016, "fp32 gradient");
    struct Model {
        const char* name;
        int tokens, D, q, kv, F, layers;
    };
    const Model models[] = {{"1b, 8192 tokens", 8192, 2048, 2048, 512, 8192, 16}, {"7b, 4096 tokens", 4096, 4096, 4096, 4096, 11008, 32}};
    for (const Model& m : models) {
        if (head_only) break;
        std::printf("\nLoRA r=16, one layer of %-18s %9s %9s %9s\n", m.name, "us", "GB/s", "TFLOP/s");
        double total_ms = 0, total_bytes = 0;
        for (const LoraProduct& p : lora_products(m.tokens, m.D, m.q, m.kv, m.F)) {
            auto run = [&] {
                switch (p.form) {
                    case 'f': matmul_nt(g, y, x, w, p.M, p.N, p.K, 1.0f, 0.0f, {}, p.ld); break;
                    case 'a': matmul_nt_add(g, y, c, x, w, p.M, p.N, p.K, 1.0f, p.ld); break;
                    case 'b': matmul_tn(g, f32, x, w, p.M, p.N, p.K, 1.0f, 1.0f, {}, p.ld); break;
                    default: matmul_nn(g, y, x, w, p.M, p.N, p.K, 1.0f, 0.0f, {}, p.ld); break;
                }
            };
            double ms = 0, again = 0;
            time_pair(g, run, run, ms, again);
            ms = std::min(ms, again);
            total_ms += ms, total_bytes += p.bytes();
            std::printf("  %-40s %9.1f %9.0f %9.1f\n", p.what.c_str(), ms * 1e3, p.bytes() / (ms * 1e-3) / 1e9, tflops(p.M, p.N, p.K, ms));
        }
        std::printf("  %-40s %9.1f %9.0f   x %d layers: %.2f ms (at 3.35 TB/s: %.2f)\n", "all", total_ms * 1e3, total_bytes / (total_ms * 1e-3) / 1e9,
                    m.layers, total_ms * m.layers, total_bytes / 3.35e12 * 1e3 * m.layers);
    }
    device_free(f32);

    // LoRA's B term inside the base product (K-concatenation) against apart, a layer's members: forward and backward.
    // A member of a group whose u has P = 16 x members columns: x' = [x | s u] is [tokens, in + P]; W' = [W | 0 .. B .. 0]
    // is [out, in + P] (B in the member's slot); dx' = [dx | d(s u)] is [tokens, in + P], the members adding into it.
    struct ConcatModel {
        const char* name;
        int tokens, D, q, kv, F, layers;
    };
    const ConcatModel concat_models[] = {{"1b, 8192 tokens", 8192, 2048, 2048, 512, 8192, 16}, {"7b, 4096 tokens", 4096, 4096, 4096, 4096, 11008, 32}};
    for (const ConcatModel& m : concat_models) {
        if (only != "" && only != "concat") break;
        struct Group {
            const char* name;
            int in;
            std::vector<int> outs;
            bool residual;
        };
        const Group groups[] = {{"q,k,v", m.D, {m.q, m.kv, m.kv}, false}, {"o", m.q, {m.D}, true}, {"gate,up", m.D, {m.F, m.F}, false},
                                {"down", m.F, {m.D}, true}};
        std::printf("\nLoRA's B term, a layer of %-18s  us apart / in the base product (forward; backward)\n", m.name);
        double apart_ms = 0, folded_ms = 0;
        for (const Group& gr : groups) {
            const int r = 16, P = r * int(gr.outs.size()), wide = gr.in + P;
            double fa = 0, ff = 0, ba = 0, bf = 0;
            auto forward_apart = [&] {
                for (int out : gr.outs) {
                    if (gr.residual) matmul_nt_add(g, y, c, x + gr.in, w, m.tokens, out, r, 1.0f, {wide, 0, 0});  // y = s u B^T + residual
                    else matmul_nt(g, y, x + gr.in, w, m.tokens, out, r, 1.0f, 0.0f, {}, {wide, 0, 0});           // y = s u B^T
                    matmul_nt_add(g, y, y, x, w, m.tokens, out, gr.in, 1.0f, {wide, wide, 0});                     // y = x W^T + y
                }
            };
            auto forward_folded = [&] {
                for (int out : gr.outs) {
                    if (gr.residual) matmul_nt_add(g, y, c, x, w, m.tokens, out, wide, 1.0f, {wide, wide, 0});  // y = x' W'^T + residual
                    else matmul_nt(g, y, x, w, m.tokens, out, wide, 1.0f, 0.0f, {}, {wide, wide, 0});            // y = x' W'^T
                }
            };
            auto backward_apart = [&] {
                for (int out : gr.outs) {
                    matmul_nn(g, c + gr.in, y, w, m.tokens, r, out, 1.0f, 0.0f, {}, {0, 0, wide});  // du = s dy B (B [out, r] of its own)
                    matmul_nn(g, c, y, w, m.tokens, gr.in, out, 1.0f, 1.0f, {}, {0, wide, wide});   // dx = dy W + dx
                }
            };
            auto backward_folded = [&] {
                for (int out : gr.outs) matmul_nn(g, c, y, w, m.tokens, wide, out, 1.0f, 1.0f, {}, {0, wide, wide});  // dx' = dy W' + dx'
            };
            time_pair(g, forward_apart, forward_folded, fa, ff);
            time_pair(g, backward_apart, backward_folded, ba, bf);
            apart_ms += fa + ba, folded_ms += ff + bf;
            std::printf("  %-8s in %5d + %2d: %8.1f / %8.1f ; %8.1f / %8.1f\n", gr.name, gr.in, P, fa * 1e3, ff * 1e3, ba * 1e3, bf * 1e3);
        }
        std::printf("  a layer: %.1f / %.1f us;  x %d layers: %.2f / %.2f ms (saved %.2f ms a step)\n", apart_ms * 1e3, folded_ms * 1e3, m.layers,
                    apart_ms * m.layers, folded_ms * m.layers, (apart_ms - folded_ms) * m.layers);
    }
    if (only == "concat") {
        gemm_destroy(g);
        return 0;
    }

    // dy's two LoRA products, whole against row chunks (u: [tokens, 16] columns of a 48-wide matrix, as q's)
    struct Member {
        const char* name;
        int tokens, out;
    };
    const Member members[] = {{"1b gate, 8192 tokens", 8192, 8192}, {"1b q, 8192 tokens", 8192, 2048},
                              {"7b gate, 4096 tokens", 4096, 11008}, {"7b q, 4096 tokens", 4096, 4096}};
    float* dB = device_alloc<float>(size_t(16) * 11008, "dB");
    for (const Member& m : members) {
        if (only == "head") break;
        const int r = 16, ld = 48;
        auto products = [&](int rows) {
            for (int r0 = 0; r0 < m.tokens; r0 += rows) {
                const int n = std::min(rows, m.tokens - r0);
                const bf16* dy = y + size_t(r0) * m.out;
                matmul_tn(g, dB, dy, x + size_t(r0) * ld, m.out, r, n, 1.0f, 1.0f, {}, {0, ld, 0});         // dB += s dy^T u
                matmul_nn(g, c + size_t(r0) * ld, dy, w, n, r, m.out, 1.0f, 0.0f, {}, {0, 0, ld});          // du = s dy B
            }
        };
        const double dy_mb = 2.0 * m.tokens * m.out / 1e6;
        std::printf("\ndB and du of %-22s (dy %.0f MB)  us, whole against row chunks\n", m.name, dy_mb);
        for (int rows : {512, 1024, 2048}) {
            double whole = 0, chunked = 0;
            time_pair(g, [&] { products(m.tokens); }, [&] { products(rows); }, whole, chunked);
            std::printf("  %5d rows: %8.1f %8.1f  (%.2f x)\n", rows, whole * 1e3, chunked * 1e3, whole / chunked);
        }
    }
    device_free(dB);
    if (only == "dy") {
        gemm_destroy(g);
        return 0;
    }

    // The head: both products over all tokens, a chunk of rows at a time: a 256 MiB chunk of bf16 logits (1,046
    // rows at the 1B's vocabulary) against multiples of 128.
    struct Head {
        const char* name;
        int tokens, D, V;
        std::vector<int> rows;
    };
    const Head heads[] = {{"1b, 8192 tokens, vocab 128256", 8192, 2048, 128256, {1024, 2048, 4096, 8192}},
                          {"7b, 4096 tokens, vocab 32000", 4096, 4096, 32000, {1024, 2048}}};
    bf16* emb = random_matrix(size_t(128256) * 2048, 5);
    bf16* logits = random_matrix(size_t(8192) * 128256, 6);
    for (const Head& hd : heads) {
        const int mib256 = int(std::min<int64_t>(hd.tokens, (256ll << 20) / (int64_t(hd.V) * 2)));
        auto head = [&](int rows) {
            for (int r0 = 0; r0 < hd.tokens; r0 += rows) {
                int n = std::min(rows, hd.tokens - r0);
                matmul_nt(g, logits, x + size_t(r0) * hd.D, emb, n, hd.V, hd.D);
                matmul_nn(g, y + size_t(r0) * hd.D, logits, emb, n, hd.D, hd.V);
            }
        };
        const double flop = 4.0 * hd.tokens * double(hd.V) * hd.D;
        std::printf("\nlm_head, %-30s %12s %12s   (ms, TFLOP/s of both products)\n", hd.name, "256 MiB", "rows");
        for (int rows : hd.rows) {
            double a = 0, b = 0;
            time_pair(g, [&] { head(mib256); }, [&] { head(rows); }, a, b);
            std::printf("  %5d rows against %5d       %6.2f (%4.0f) %6.2f (%4.0f)\n", mib256, rows, a, flop / (a * 1e9), b, flop / (b * 1e9));
        }
    }
    device_free(emb), device_free(logits);
    gemm_destroy(g);
    return 0;
}
