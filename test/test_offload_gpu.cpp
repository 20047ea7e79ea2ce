// test/test_offload_gpu.cpp — ZeRO-Offload's CPU optimizer (distributed/offload.h) on its own, driven at its
// named points as the store drives it: after O1 (gradient_ready) and O2 (start_step), O4 (before_read)
// hands out the upload event once per step, and the weights behind it are the GPU update's bits in every
// run while the gaps between runs keep what they held; after O6 (finish) master, m and v are the GPU's,
// bitwise; upload_master sends bf16(master) over the whole shard. With more shards than transit buffers,
// every shard's gradient travels through the ring (the worker takes each one down into the slot the shard
// before it used), a new gradient written after O5 each step, and every update is still the GPU's, bitwise;
// the host holds 12 bytes per element and the ring. The whole store with offload, against the GPU
// optimizer, is test_zero_gpu.cpp's.
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
        CHECK(cpu.host_bytes() == 12.0 * double(n) + kTransitSlots * 6.0 * double(n));  // the state, and the ring
        CpuOptimizer::HostState h = cpu.state(k);
        std::fill(h.master, h.master + n, 5.0f);
        cpu.start();
        bool zeroed = true;
        for (int64_t i = 0; i < n; ++i) zeroed &= h.master[i] == 0 && h.m[i] == 0 && h.v[i] == 0;
        CHECK(zeroed);
        std::copy(master.begin(), master.end(), h.master), std::copy(m.begin(), m.end(), h.m), std::copy(v.begin(), v.end(), h.v);
        CHECK(cpu.before_read(k) == nullptr);  // before the first step there is nothing to wait for
        CHECK(!cpu.pending(k));
        for (int step = 1; step <= 3; ++step) {
            CAPTURE(step);
            cpu.before_zeroing(k);                  // O5 (the last step's copy down has read the gradient)
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

TEST_CASE("gpu: offload with more shards than transit buffers: every gradient through the ring, every update the GPU's bits") {
    if (!need_gpu()) return;
    uint64_t seed = fresh_seed();
    CAPTURE(seed);
    Rng rng(seed);
    const std::vector<int64_t> sizes = {517, 0, 1200, 33, 901, 777};  // an empty shard too: every rank takes part
    const int K = int(sizes.size());
    REQUIRE(K > kTransitSlots + 1);
    AdamWConfig c;
    c.weight_decay = 0.05f;
    float lr = 2e-3f;
    cudaStream_t compute, comm;
    check_cuda(cudaStreamCreate(&compute), "stream");
    check_cuda(cudaStreamCreate(&comm), "stream");
    DeviceFree keep;
    float* clip = keep(to_device(std::vector<float>{0.75f}));
    struct Part {  // one shard: its runs, the store's buffers, and the GPU reference's
        std::vector<UpdateRun> runs;
        float *grad, *gp, *gm, *gv;
        bf16 *weights, *g16;
    };
    std::vector<Part> parts(static_cast<size_t>(K));
    std::vector<int64_t> expected_sizes;
    {
        CpuOptimizer cpu(test_world(), 2, true, compute, comm);
        for (int k = 0; k < K; ++k) {
            int64_t n = sizes[size_t(k)];
            Part& s = parts[size_t(k)];
            if (n > 0) s.runs = {{0, n / 2, true}, {n / 2, n - n / 2, false}};
            s.grad = keep(poisoned<float>(size_t(n)));
            s.weights = keep(poisoned<bf16>(size_t(n))), s.g16 = keep(poisoned<bf16>(size_t(n)));
            std::vector<float> master = random_vector(size_t(n), rng);
            s.gp = keep(to_device(master)), s.gm = keep(to_device(std::vector<float>(size_t(n), 0.0f)));
            s.gv = keep(to_device(std::vector<float>(size_t(n), 0.0f)));
            CHECK(cpu.add(k, n, s.runs, s.grad, s.weights) == k);
            expected_sizes.push_back(n);
        }
        cpu.start();
        CHECK(cpu.host_bytes() == offload_host_bytes(expected_sizes));
        CHECK(offload_host_bytes(expected_sizes) == doctest::Approx(12.0 * (517 + 1 + 1200 + 33 + 901 + 777) + kTransitSlots * 6.0 * 1200));
        for (int k = 0; k < K; ++k) {
            CpuOptimizer::HostState h = cpu.state(k);
            std::vector<float> master = from_device(parts[size_t(k)].gp, size_t(sizes[size_t(k)]));
            std::copy(master.begin(), master.end(), h.master);
        }
        for (int step = 1; step <= 3; ++step) {
            CAPTURE(step);
            for (int k = 0; k < K; ++k) {  // the next backward: each gradient zeroed after O5, then written anew
                cpu.before_zeroing(k);
                std::vector<float> g = random_vector(size_t(sizes[size_t(k)]), rng, 0.1f);
                check_cuda(cudaMemsetAsync(parts[size_t(k)].grad, 0, g.size() * 4, compute), "zero");
                check_cuda(cudaMemcpyAsync(parts[size_t(k)].grad, g.data(), g.size() * 4, cudaMemcpyHostToDevice, compute), "grad");
                check_cuda(cudaStreamSynchronize(compute), "sync");  // (pageable source)
            }
            for (int k = K - 1; k >= 0; --k) cpu.gradient_ready(k);  // O1, in backward order
            cpu.start_step(c, lr, step, clip);                       // O2
            for (int k = 0; k < K; ++k) {
                Part& s = parts[size_t(k)];
                for (const UpdateRun& r : s.runs)
                    adamw_step_gpu(s.gp + r.offset, s.grad + r.offset, s.gm + r.offset, s.gv + r.offset, s.g16 + r.offset, r.count, c, lr,
                                   r.decays ? c.weight_decay : 0.0f, step, clip, compute);
            }
            for (int k = 0; k < K; ++k) {  // O4, the next forward
                cudaEvent_t uploaded = cpu.before_read(k);
                REQUIRE(uploaded != nullptr);
                check_cuda(cudaStreamWaitEvent(compute, uploaded, 0), "wait");
            }
            check_cuda(cudaStreamSynchronize(compute), "sync");
            for (int k = 0; k < K; ++k) {
                CAPTURE(k);
                size_t n = size_t(sizes[size_t(k)]);
                CHECK(raw_bf16(parts[size_t(k)].weights, n) == raw_bf16(parts[size_t(k)].g16, n));
            }
        }
        cpu.finish();  // O6
        for (int k = 0; k < K; ++k) {
            CpuOptimizer::HostState h = cpu.state(k);
            size_t n = size_t(sizes[size_t(k)]);
            CHECK(std::vector<float>(h.master, h.master + n) == from_device(parts[size_t(k)].gp, n));
            CHECK(std::vector<float>(h.v, h.v + n) == from_device(parts[size_t(k)].gv, n));
        }
    }
    check_cuda(cudaStreamDestroy(compute), "stream");
    check_cuda(cudaStreamDestroy(comm), "stream");
}
