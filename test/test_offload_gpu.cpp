// test/test_offload_gpu.cpp — ZeRO-Offload's CPU optimizer (distributed/offload.h) on its own, driven at its
// named points as the store drives it: after O1 (gradient_ready) and O2 (start_step), O4 (before_read)
// hands out the upload event once per step, and the weights behind it are the GPU update's bits in every
// run while the gaps between runs keep what they held; after O6 (finish) master, m and v are the GPU's,
// bitwise; upload_master sends bf16(master) over the whole shard. The whole store with offload, against the
// GPU optimizer, is test_zero_gpu.cpp's.
#include "gpu.h"

#include <algorithm>
#include <ctime>

#include "adamw.h"
#include "distributed/offload.h"

namespace {
uint64_t fresh_seed() { return uint64_t(time(nullptr)) * 2654435761ull; }

std::vector<uint16_t> raw_bf16(const bf16* d, size_t n) {
    std::vector<uint16_t> h(n);
    check_cuda(cudaMemcpy(h.data(), d, n * 2, cudaMemcpyDeviceToHost), "from device");
    return h;
}
}  // namespace

TEST_CASE("gpu: offload's CPU optimizer at its named points gives the GPU update's bits, once per step, gaps untouched") {
    if (!need_gpu()) return;
    uint64_t seed = fresh_seed();
    CAPTURE(seed);
    Rng rng(seed);
    const int64_t n = 1003;
    // Matrices, a norm weight, a gap nobody optimizes (padding), matrices again.
    const std::vector<UpdateRun> runs = {{0, 300, true}, {300, 7, false}, {400, 603, true}};
    std::vector<float> grad = random_vector(size_t(n), rng, 0.1f), master = random_vector(size_t(n), rng);
    std::vector<float> m = random_vector(size_t(n), rng, 0.01f), v = random_vector(size_t(n), rng, 1e-4f);
    for (float& x : v) x = std::fabs(x);
    AdamWConfig c;
    c.weight_decay = 0.1f;
    float lr = 1e-3f;
    cudaStream_t compute, comm;
    check_cuda(cudaStreamCreate(&compute), "stream");
    check_cuda(cudaStreamCreate(&comm), "stream");
    DeviceFree keep;
    float* d_grad = keep(to_device(grad));
    float* clip = keep(to_device(std::vector<float>{0.625f}));
    bf16* weights = keep(poisoned<bf16>(size_t(n)));  // the store's bf16 weights, as O3 writes them
    // The reference: the GPU optimizer over the same runs.
    float *gp = keep(to_device(master)), *gm = keep(to_device(m)), *gv = keep(to_device(v));
    bf16* g16 = keep(poisoned<bf16>(size_t(n)));
    {
        CpuOptimizer cpu(test_world(), 3, true, compute, comm);
        int k = cpu.add(7, n, runs, d_grad, weights);
        CHECK(k == 0);
        CHECK(cpu.host_bytes() == 18.0 * double(n));
        CpuOptimizer::HostState h = cpu.state(k);
        bool zeroed = true;
        for (int64_t i = 0; i < n; ++i) zeroed &= h.master[i] == 0 && h.m[i] == 0 && h.v[i] == 0;
        CHECK(zeroed);
        std::copy(master.begin(), master.end(), h.master), std::copy(m.begin(), m.end(), h.m), std::copy(v.begin(), v.end(), h.v);
        cpu.start();
        CHECK(cpu.before_read(k) == nullptr);  // before the first step there is nothing to wait for
        CHECK(!cpu.pending(k));
        for (int step = 1; step <= 3; ++step) {
            CAPTURE(step);
            cpu.before_zeroing();                   // O5 (nothing copies down yet: no wait)
            cpu.gradient_ready(k);                  // O1
            cpu.start_step(c, lr, step, clip);      // O2, then the worker's O3
            for (const UpdateRun& r : runs)
                adamw_step_gpu(gp + r.offset, d_grad + r.offset, gm + r.offset, gv + r.offset, g16 + r.offset, r.count, c, lr,
                               r.decays ? c.weight_decay : 0.0f, step, clip, compute);
            cudaEvent_t uploaded = cpu.before_read(k);  // O4
            REQUIRE(uploaded != nullptr);
            CHECK(!cpu.pending(k));
            CHECK(cpu.before_read(k) == nullptr);  // once per step
            check_cuda(cudaStreamWaitEvent(compute, uploaded, 0), "wait");
            check_cuda(cudaStreamSynchronize(compute), "sync");
            std::vector<uint16_t> got = raw_bf16(weights, size_t(n)), want = raw_bf16(g16, size_t(n));
            CHECK(got == want);  // bitwise, the gap included (still poison in both)
            CHECK(got[350] == 0xFFFF);
            CHECK(got[0] != 0xFFFF);
        }
        cpu.finish();  // O6
        CHECK(std::vector<float>(h.master, h.master + n) == from_device(gp, size_t(n)));
        CHECK(std::vector<float>(h.m, h.m + n) == from_device(gm, size_t(n)));
        CHECK(std::vector<float>(h.v, h.v + n) == from_device(gv, size_t(n)));
        // Weights written on the host (a checkpoint): every element goes up, and O4 has nothing to wait for.
        std::vector<float> loaded = random_vector(size_t(n), rng);
        std::copy(loaded.begin(), loaded.end(), h.master);
        cpu.upload_master(k);
        CHECK(cpu.before_read(k) == nullptr);
        std::vector<uint16_t> got = raw_bf16(weights, size_t(n));
        bool same = true;
        for (int64_t i = 0; i < n; ++i) same &= got[size_t(i)] == float_to_bf16(loaded[size_t(i)]);
        CHECK(same);
    }
    check_cuda(cudaStreamDestroy(compute), "stream");
    check_cuda(cudaStreamDestroy(comm), "stream");
}
