// support/profile.h — where one training step's GPU time goes, by kernel family (`./train --profile`).
// Each family's launches are bracketed by CUDA events on the compute stream; a profiled step ends with a
// synchronisation, and its events' elapsed times are summed per family. What lies between the regions
// (launch gaps, waits for the collectives' stream, the host) is reported as "gaps and waits". Beside
// each family, its floor on this GPU:  max(FLOPs / peak tensor rate, bytes / memory bandwidth).
// Profiling costs a synchronisation per profiled step, so the step time it reports is a little above the
// unprofiled one.
#pragma once
#include <cstdio>
#include <vector>

#include <cuda_runtime.h>

#include "support/llama_config.h"

enum class Family { base_gemm, lora, attention, norm, rope, swiglu, copies, head, embedding, optimizer, count };
const char* family_name(Family f);

// The work of one family in one training step: its floor's ingredients.
struct FamilyWork {
    double flops = 0, bytes = 0;
};
// Every family's FLOPs and minimum bytes for one step of N = B*T tokens (rows of T), LoRA rank r (0: full
// fine-tuning) on `lora_targets` of the 7 projections, `trainable` parameters.
std::vector<FamilyWork> step_work(const LlamaConfig& c, int64_t N, int T, int r, int lora_targets, int64_t trainable, bool recompute);

class Profiler {
  public:
    Profiler() = default;
    ~Profiler();
    Profiler(const Profiler&) = delete;
    Profiler& operator=(const Profiler&) = delete;

    void begin_step(cudaStream_t stream);  // the step's first event; regions follow, on the same stream
    void end_step();    // synchronises and adds this step's times
    void begin(Family f);
    void end();
    bool active() const { return in_step_; }
    int steps() const { return steps_; }
    // The table: ms per step for each family beside its floor, then gaps and the whole step.
    void print(FILE* f, const std::vector<FamilyWork>& work, double peak_flops, double bandwidth) const;

  private:
    cudaEvent_t event();  // from the pool (events are made once and reused every step)
    cudaStream_t stream_ = nullptr;
    std::vector<cudaEvent_t> pool_;
    size_t used_ = 0;
    std::vector<Family> open_;        // the family of each begun region, in order
    bool in_step_ = false;
    double ms_[int(Family::count)] = {};
    double step_ms_ = 0;
    int steps_ = 0;
};

// A region: begins in its constructor, ends in its destructor; nothing when p is null or not in a step.
class Region {
  public:
    Region(Profiler* p, Family f) : p_(p && p->active() ? p : nullptr) {
        if (p_) p_->begin(f);
    }
    ~Region() {
        if (p_) p_->end();
    }
    Region(const Region&) = delete;
    Region& operator=(const Region&) = delete;

  private:
    Profiler* p_;
};

// Dense bf16 tensor-core peak (FLOP/s) and memory bandwidth (bytes/s) of a GPU by name; 0 if unknown.
double gpu_peak_flops(int device);
double gpu_bandwidth(int device);
