// test/gpu.h — helpers for GPU tests: random host data, device copies, poisoning, error measures.
#pragma once
#include <unistd.h>

#include <cmath>
#include <vector>

#include "data.h"
#include "llama.h"
#include "support/safetensors.h"
#include "test.h"
#include "zero3.h"

inline std::vector<float> random_vector(size_t n, Rng& rng, float scale = 1.0f) {
    std::vector<float> v(n);
    for (float& x : v) x = (2 * rng.uniform() - 1) * scale;
    return v;
}
// Rounds to bf16 values, so CPU references see exactly what the GPU sees.
inline std::vector<float> bf16_round(std::vector<float> v) {
    for (float& x : v) x = bf16_to_float(float_to_bf16(x));
    return v;
}
inline bf16* to_device_bf16(const std::vector<float>& v) {
    std::vector<uint16_t> h(v.size());
    for (size_t i = 0; i < v.size(); ++i) h[i] = float_to_bf16(v[i]);
    bf16* d = device_alloc<bf16>(v.size() ? v.size() : 1, "test");
    check_cuda(cudaMemcpy(d, h.data(), h.size() * 2, cudaMemcpyHostToDevice), "to device");
    return d;
}
template <typename T>
T* to_device(const std::vector<T>& v) {
    T* d = device_alloc<T>(v.size() ? v.size() : 1, "test");
    check_cuda(cudaMemcpy(d, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice), "to device");
    return d;
}
// Output buffers start as NaN (0xFF bytes) so a kernel that skips an element is caught.
template <typename T>
T* poisoned(size_t n) {
    T* d = device_alloc<T>(n ? n : 1, "test");
    check_cuda(cudaMemset(d, 0xFF, n * sizeof(T)), "poison");
    return d;
}
inline std::vector<float> from_device_bf16(const bf16* d, size_t n) {
    std::vector<uint16_t> h(n);
    check_cuda(cudaMemcpy(h.data(), d, n * 2, cudaMemcpyDeviceToHost), "from device");
    std::vector<float> v(n);
    for (size_t i = 0; i < n; ++i) v[i] = bf16_to_float(h[i]);
    return v;
}
inline std::vector<float> from_device(const float* d, size_t n) {
    std::vector<float> v(n);
    check_cuda(cudaMemcpy(v.data(), d, n * 4, cudaMemcpyDeviceToHost), "from device");
    return v;
}
// max |got - want| / max |want|: the error relative to the tensor's scale (NaN counts as infinite).
inline double rel_error(const std::vector<float>& got, const std::vector<float>& want) {
    REQUIRE(got.size() == want.size());
    double num = 0, den = 1e-30;
    for (size_t i = 0; i < got.size(); ++i) {
        double d = std::fabs(double(got[i]) - double(want[i]));
        if (std::isnan(got[i]) || std::isinf(got[i])) return INFINITY;
        num = std::max(num, d), den = std::max(den, std::fabs(double(want[i])));
    }
    return num / den;
}
struct DeviceFree {
    std::vector<void*> ptrs;
    template <typename T> T* operator()(T* p) { ptrs.push_back((void*)p); return p; }
    ~DeviceFree() { for (void* p : ptrs) device_free(p); }
};

// One rank, this process's GPU (tests run without mpirun).
inline const World& test_world() {
    static World w = [] {
        World x = world_init(nullptr, nullptr);
        world_start_gpu(x, Transport::automatic);
        return x;
    }();
    return w;
}

// A golden case of test/make_golden_model.py: the model directory, its rows, and HF's results.
struct Golden {
    std::string dir;
    LlamaConfig config;
    std::vector<int32_t> ids, labels;
    int B = 0, T = 0;
    int64_t targets = 0;  // positions that take loss (after HF's shift)
    Json meta;
};
inline bool load_golden(const std::string& name, Golden& g) {
    g.dir = "test/golden/" + name;
    if (access((g.dir + "/golden.json").c_str(), R_OK) != 0) return false;
    g.config = load_config(g.dir + "/config.json");
    Json rows = read_json_file(g.dir + "/rows.json");
    for (const Json& r : rows.find("input_ids")->array) {
        for (const Json& x : r.array) g.ids.push_back(int32_t(x.integer));
        g.T = int(r.array.size()), g.B++;
    }
    for (const Json& r : rows.find("labels")->array)
        for (const Json& x : r.array) g.labels.push_back(int32_t(x.integer));
    for (int b = 0; b < g.B; ++b)
        for (int t = 1; t < g.T; ++t) g.targets += g.labels[size_t(b * g.T + t)] != -100;
    g.meta = read_json_file(g.dir + "/golden.json");
    return true;
}
