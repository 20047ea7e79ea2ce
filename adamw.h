// adamw.h — the optimizer (Loshchilov & Hutter 2019) over flat fp32 shards, on the GPU or the CPU
// (ZeRO-Offload, on a persistent thread pool), the global gradient norm with clipping, and learning-rate
// schedules.
#pragma once
#include <cstdint>
#include <string>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

struct AdamWConfig {
    float lr = 2e-4f, beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f, weight_decay = 0.0f;
};

// One AdamW step over n elements (PyTorch's torch.optim.AdamW):
//   g = grad * grad_scale;  p -= lr * wd * p;  m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2
//   p -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps);  p16 = bf16(p)   (t = step, from 1)
// grad_scale points to a device scalar (the clipping coefficient) so no host sync is needed.
void adamw_step_gpu(float* p, const float* grad, float* m, float* v, __nv_bfloat16* p16, int64_t n,
                    const AdamWConfig& c, float lr, float weight_decay, int step, const float* grad_scale,
                    cudaStream_t stream);
// The same update on the host, split over the pool's threads (the same bits however it is split);
// grad_scale is a host value.
class ThreadPool;
void adamw_step_cpu(float* p, const float* grad, float* m, float* v, __nv_bfloat16* p16, int64_t n,
                    const AdamWConfig& c, float lr, float weight_decay, int step, float grad_scale, ThreadPool& pool);
// A shard is updated in runs of whole tensors that share the weight-decay rule: matrices decay, norm
// weights never do.
struct UpdateRun {
    int64_t offset, count;  // elements [offset, offset + count) of the shard
    bool decays;            // weight_decay applies
};

// sum_sq += sum of grad^2 (device scalar), in a fixed order; calls must share one stream.
void grad_sum_squares(const float* grad, int64_t n, float* sum_sq, cudaStream_t stream);
// scale = min(1, max_norm / (sqrt(sum_sq) + 1e-6)) (PyTorch's clip_grad_norm_); max_norm <= 0: scale = 1.
void clip_coefficient(const float* sum_sq, float max_norm, float* scale, cudaStream_t stream);

// Learning rate at `step` (0-based optimizer step). Two families of schedules:
//
// This trainer's own (--lr-schedule), the warmup reaching lr at step warmup_steps - 1:
//   constant       lr
//   warmup         linear from warmup_min_lr to lr over warmup steps, then lr
//   warmup-linear  warmup, then linear decay to 0 at total steps
//   warmup-cosine  warmup, then cosine decay to lr * min_ratio at total steps
//
// DeepSpeed's schedulers as deepspeed/runtime/lr_schedules.py computes them (a config's "scheduler").
// DeepSpeed sets the lr when it builds the scheduler (iteration -1) and steps the scheduler after each
// optimizer step, so optimizer step s (0-based) runs with the schedule at iteration i = s - 1.
// W = max(2, warmup_steps), T = total_steps, and the warmup fraction
//   w(i) = log(i + 1) / log(W)   (warmup_type "log", DeepSpeed's default)   or   i / W   ("linear")
//   WarmupLR        i < 0: warmup_min_lr;  i < W: min + (lr - min) w(i);  then lr           (min = warmup_min_lr)
//   WarmupDecayLR   the same warmup;  then min + (lr - min) max(0, (T - i) / max(1, T - W))
//   WarmupCosineLR  i < 0: 0;  i < W: lr (r + (1 - r) w(i)) with r = warmup_min_ratio;
//                   then lr max(0, c + (1 - c) (1 + cos(pi min(1, (i - W + 1) / max(1, T - W)))) / 2)
//                   with c = min_ratio (cos_min_ratio)
struct Schedule {
    std::string kind = "constant";
    float lr = 2e-4f;              // the peak: warmup_max_lr (WarmupLR, WarmupDecayLR) or the optimizer's lr
    int warmup_steps = 0;
    int total_steps = 1;
    float warmup_min_lr = 0.0f;
    float min_ratio = 0.0001f;     // warmup-cosine, WarmupCosineLR: cos_min_ratio
    float warmup_min_ratio = 0.0f; // WarmupCosineLR
    std::string warmup_type = "log";  // DeepSpeed's kinds: "log" or "linear"
    float lr_at(int step) const;
    bool deepspeed() const;        // one of DeepSpeed's kinds (WarmupLR, WarmupDecayLR, WarmupCosineLR)
};
// Fails naming `flag` on an unknown kind or warmup type.
void check_schedule(const Schedule& s, const std::string& flag);
