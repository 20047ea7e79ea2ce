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

// Learning rate at `step` (0-based optimizer step), DeepSpeed's schedulers:
//   constant       lr
//   warmup         WarmupLR: linear from 0 to lr over warmup steps, then lr
//   warmup-linear  WarmupDecayLR: warmup, then linear decay to 0 at total steps
//   warmup-cosine  WarmupCosineLR: warmup, then cosine decay to lr * min_ratio at total steps
struct Schedule {
    std::string kind = "constant";
    float lr = 2e-4f;
    int warmup_steps = 0;
    int total_steps = 1;
    float warmup_min_lr = 0.0f;
    float min_ratio = 0.0001f;
    float lr_at(int step) const;
};
// Fails naming `flag` on an unknown kind.
void check_schedule(const Schedule& s, const std::string& flag);
