// support/profile.cpp — the step profiler (profile.h): CUDA events around each family's launches, and each
// family's floor from its FLOPs and the bytes it must move.
#include "support/profile.h"

#include <algorithm>
#include <string>

#include "support/cuda_calls.h"

const char* family_name(Family f) {
    static const char* names[] = {"base GEMMs",    "LoRA products", "attention", "RMSNorm", "RoPE",     "SwiGLU",
                                  "copies",        "lm_head + CE",  "embedding", "optimizer"};
    return names[int(f)];
}

// FLOPs count a multiply-add as 2. Bytes are what the family must read and write at least (bf16
// activations, fp32 optimizer state), weights not counted where activations dominate. Attention is
// causal over rows of T (packed documents shorter than T do less). Recompute adds one more forward.
std::vector<FamilyWork> step_work(const LlamaConfig& c, int64_t N, int T, int r, int lora_targets, int64_t trainable, bool recompute) {
    std::vector<FamilyWork> w(size_t(Family::count));
    auto at = [&](Family f) -> FamilyWork& { return w[size_t(f)]; };
    double n = double(N), L = c.num_hidden_layers, D = c.hidden_size, F = c.intermediate_size, V = c.vocab_size;
    double Hd = double(c.num_attention_heads) * c.head_dim, KVd = double(c.num_key_value_heads) * c.head_dim;
    double linear = 0, in_out = 0;  // over one layer's 7 projections: their weights (out * in), and out + in
    for (LayerTensor t : layer_tensors(c)) {
        std::vector<int64_t> s = layer_tensor_shape(c, t);  // a projection [out, in], or a norm [D] or [Dh]
        if (s.size() == 2) linear += double(s[0] * s[1]), in_out += double(s[0] + s[1]);
    }
    double fwd = recompute ? 2 : 1;  // forward passes per step
    bool full = r == 0;
    at(Family::base_gemm).flops = L * 2 * n * linear * (fwd + (full ? 2 : 1));
    if (!full) {  // each adapter: u = x A^T, y += s u B^T (2 N r (in + out) FLOPs); backward dB, du, dA, dx (twice that)
        double share = double(lora_targets) / 7.0;
        at(Family::lora).flops = L * share * 2 * n * r * in_out * (fwd + 2);
        at(Family::lora).bytes = L * share * 2 * n * in_out * (fwd + 1);  // inputs read once per pass, dy once
    }
    double causal = 2 * n * T * Hd;  // QK^T and PV over the lower triangle
    at(Family::attention).flops = L * causal * (fwd + 2.5);
    at(Family::attention).bytes = L * 2 * n * (2 * Hd + 2 * KVd) * (fwd + 2);
    at(Family::norm).bytes = (2 * L + 1) * 2 * n * D * (2 * fwd + 4);
    if (c.qk_norm) at(Family::norm).bytes += L * 2 * n * (Hd + KVd) * (2 * fwd + 4);  // q_norm, k_norm over q and k
    at(Family::rope).bytes = L * 2 * n * (Hd + KVd) * 2 * (fwd + 1);
    at(Family::swiglu).bytes = L * 2 * n * F * (3 * fwd + 5);
    at(Family::head).flops = 2 * n * V * D * (full ? 3 : 2);
    at(Family::embedding).bytes = 2 * n * D * 2 + (full ? n * D * 6 : 0);
    at(Family::optimizer).bytes = double(trainable) * 30;  // p, g, m, v read; p, m, v, bf16 p written
    return w;
}

Profiler::~Profiler() {
    for (cudaEvent_t e : pool_) cudaEventDestroy(e);
}

cudaEvent_t Profiler::event() {
    if (used_ == pool_.size()) {
        cudaEvent_t e;
        check_cuda(cudaEventCreate(&e), "event");
        pool_.push_back(e);
    }
    cudaEvent_t e = pool_[used_++];
    check_cuda(cudaEventRecord(e, stream_), "event");
    return e;
}

void Profiler::begin_step(cudaStream_t stream) {
    stream_ = stream, used_ = 0, open_.clear(), in_step_ = true;
    event();
}

void Profiler::begin(Family f) {
    open_.push_back(f);
    event();
}

void Profiler::end() { event(); }

void Profiler::end_step() {
    event();
    in_step_ = false;
    check_cuda(cudaEventSynchronize(pool_[used_ - 1]), "event");
    auto ms = [&](size_t a, size_t b) {
        float t = 0;
        check_cuda(cudaEventElapsedTime(&t, pool_[a], pool_[b]), "event");
        return double(t);
    };
    for (size_t i = 0; i < open_.size(); ++i) ms_[int(open_[i])] += ms(1 + 2 * i, 2 + 2 * i);
    step_ms_ += ms(0, used_ - 1);
    ++steps_;
}

void Profiler::print(FILE* f, const std::vector<FamilyWork>& work, double peak_flops, double bandwidth) const {
    if (steps_ == 0) return;
    std::fprintf(f, "profile: %d step%s, ms per step by kernel family (floor = max(FLOPs / %.0f TFLOP/s, bytes / %.2f TB/s))\n",
                 steps_, steps_ == 1 ? "" : "s", peak_flops / 1e12, bandwidth / 1e12);
    std::fprintf(f, "  %-16s %9s %7s %9s %10s %10s\n", "family", "ms", "share", "floor ms", "GFLOP", "GB");
    double step = step_ms_ / steps_, regions = 0;
    for (int i = 0; i < int(Family::count); ++i) {
        double t = ms_[i] / steps_;
        regions += t;
        const FamilyWork& w = work[size_t(i)];
        double floor = 1e3 * std::max(peak_flops > 0 ? w.flops / peak_flops : 0.0, bandwidth > 0 ? w.bytes / bandwidth : 0.0);
        std::fprintf(f, "  %-16s %9.2f %6.1f%% %9.2f %10.1f %10.2f\n", family_name(Family(i)), t, 100 * t / step, floor, w.flops / 1e9,
                     w.bytes / 1e9);
    }
    std::fprintf(f, "  %-16s %9.2f %6.1f%%\n", "gaps and waits", step - regions, 100 * (step - regions) / step);
    std::fprintf(f, "  %-16s %9.2f\n", "step", step);
}

double gpu_peak_flops(int device) {
    cudaDeviceProp p;
    check_cuda(cudaGetDeviceProperties(&p, device), "cudaGetDeviceProperties");
    std::string name = p.name;
    if (name.find("H100") != std::string::npos || name.find("H200") != std::string::npos) return 989e12;
    if (name.find("A100") != std::string::npos) return 312e12;
    return 0;
}

double gpu_bandwidth(int device) {  // 2 transfers per memory clock over the bus
    int khz = 0, bits = 0;
    check_cuda(cudaDeviceGetAttribute(&khz, cudaDevAttrMemoryClockRate, device), "cudaDeviceGetAttribute");
    check_cuda(cudaDeviceGetAttribute(&bits, cudaDevAttrGlobalMemoryBusWidth, device), "cudaDeviceGetAttribute");
    return 2.0 * khz * 1e3 * bits / 8;
}
