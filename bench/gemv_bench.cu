// bench/gemv_bench.cu — generation's products y = x W^T at 1 to 8 rows of x, on the weight shapes of
// Llama-2-7b and -13b (and the 1B's), through cuBLASLt and through gemv.cu: microseconds per product and
// the weight bytes read per second. The weights rotate through 1 GiB of copies, so no product finds its W
// in the 50 MB L2. Timed with CUDA events over 200 products.
//   make build/gemv_bench && ./build/gemv_bench
#include <cstdio>
#include <vector>

#include "kernels/gemm.h"
#include "support/cuda_calls.h"

namespace {

struct Shape {
    const char* name;
    int N, K;
};

// Microseconds per y = x W^T with M rows, W walking through `pool` (each product a different copy).
double time_product(Gemm& g, int M, int N, int K, const bf16* x, const bf16* pool, size_t pool_elems, bf16* y) {
    const size_t stride = size_t(N) * K, copies = pool_elems / stride;
    auto product = [&](int i) { matmul_nt(g, y, x, pool + (size_t(i) % copies) * stride, M, N, K); };
    for (int i = 0; i < 20; ++i) product(i);
    cudaEvent_t start, stop;
    check_cuda(cudaEventCreate(&start), "event");
    check_cuda(cudaEventCreate(&stop), "event");
    const int reps = 200;
    check_cuda(cudaEventRecord(start, g.stream), "record");
    for (int i = 0; i < reps; ++i) product(i);
    check_cuda(cudaEventRecord(stop, g.stream), "record");
    check_cuda(cudaEventSynchronize(stop), "sync");
    float ms = 0;
    check_cuda(cudaEventElapsedTime(&ms, start, stop), "elapsed");
    cudaEventDestroy(start);
    cudaEventDestroy(stop);
    return 1000.0 * ms / reps;
}

}  // namespace

int main() {
    const Shape shapes[] = {{"7b q_proj (4096x4096)", 4096, 4096},    {"7b gate_proj (11008x4096)", 11008, 4096},
                            {"7b down_proj (4096x11008)", 4096, 11008}, {"7b lm_head (32000x4096)", 32000, 4096},
                            {"13b q_proj (5120x5120)", 5120, 5120},    {"13b gate_proj (13824x5120)", 13824, 5120},
                            {"1b q_proj (2048x2048)", 2048, 2048},     {"1b k_proj (512x2048)", 512, 2048}};
    cudaStream_t stream;
    check_cuda(cudaStreamCreate(&stream), "stream");
    Gemm g = gemm_create(stream);
    const size_t pool_elems = size_t(1) << 29;  // 1 GiB of bf16 weights
    bf16* pool = device_alloc<bf16>(pool_elems, "weights");
    check_cuda(cudaMemset(pool, 0, pool_elems * 2), "memset");
    bf16* x = device_alloc<bf16>(size_t(8) * 16384, "x");
    bf16* y = device_alloc<bf16>(size_t(8) * 32000, "y");
    check_cuda(cudaMemset(x, 0, size_t(8) * 16384 * 2), "memset");
    int device = 0;
    cudaDeviceProp prop;
    check_cuda(cudaGetDevice(&device), "device");
    check_cuda(cudaGetDeviceProperties(&prop, device), "properties");
    std::printf("%s; GB/s = weight bytes read per second\n", prop.name);
    std::printf("%-28s %4s %12s %10s %12s %10s %8s\n", "product", "rows", "cuBLASLt us", "GB/s", "gemv us", "GB/s", "speedup");
    for (const Shape& s : shapes)
        for (int M : {1, 2, 4, 8}) {
            double gb = 2.0 * s.N * s.K / 1e9;
            g.gemv_rows = 0;
            double lt = time_product(g, M, s.N, s.K, x, pool, pool_elems, y);
            g.gemv_rows = kGemvMaxRows;
            if (M > kGemvMaxRows) {
                std::printf("%-28s %4d %12.2f %10.0f %12s %10s %8s\n", s.name, M, lt, gb / lt * 1e6, "-", "-", "-");
                continue;
            }
            double gv = time_product(g, M, s.N, s.K, x, pool, pool_elems, y);
            std::printf("%-28s %4d %12.2f %10.0f %12.2f %10.0f %7.2fx\n", s.name, M, lt, gb / lt * 1e6, gv, gb / gv * 1e6, lt / gv);
        }
    device_free(pool);
    device_free(x);
    device_free(y);
    gemm_destroy(g);
    return 0;
}
