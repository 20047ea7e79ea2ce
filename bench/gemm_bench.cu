// bench/gemm_bench.cu — the training step's base products on the 7B and 1B shapes, through gemm.h, two
// questions at a time: what the epilogue's addend costs (matmul_nt_add, which adds LoRA's B term or the
// residual while writing y, against matmul_nt), and what one product per projection group would save (q, k,
// v and gate, up over concatenated weights, against one product each). TFLOP/s. Operands hold random values
// (zeros draw less power and run faster than training does). The two sides of a question alternate, 10
// rounds of 10 products each, and each side keeps its median round: a sustained run slows as the GPU heats,
// and alternating gives both sides the same clocks.
//   make build/gemm_bench && ./build/gemm_bench
#include <algorithm>
#include <cstdio>
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

}  // namespace

int main() {
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
    gemm_destroy(g);
    return 0;
}
