// adamw.cu — AdamW on flat fp32 shards (GPU and CPU), gradient norm and clipping, LR schedules (adamw.h).
#include "adamw.h"

#include <algorithm>
#include <cmath>

#include "support/cuda_calls.h"
#include "distributed/threads.h"

namespace {

// One element's update. Every operation is rounded on its own, so the GPU and the CPU (offload) produce
// the same bits: on the GPU by the explicit _rn intrinsics, on the CPU because the build turns off the
// contraction of a * b + c into fused multiply-adds (-ffp-contract=off in the Makefile) and x86-64's SSE
// arithmetic, division and square root round each result to float.
__host__ __device__ inline float adamw_element(float x, float grad, float& m, float& v, float lr, float lr_wd, float b1,
                                                float b2, float eps, float bc1, float bc2, float scale) {
#ifdef __CUDA_ARCH__
    float g = __fmul_rn(grad, scale);
    x = __fsub_rn(x, __fmul_rn(lr_wd, x));
    m = __fadd_rn(__fmul_rn(b1, m), __fmul_rn(1.0f - b1, g));
    v = __fadd_rn(__fmul_rn(b2, v), __fmul_rn(__fmul_rn(1.0f - b2, g), g));
    float denom = __fadd_rn(__fsqrt_rn(__fdiv_rn(v, bc2)), eps);
    return __fsub_rn(x, __fdiv_rn(__fmul_rn(lr, __fdiv_rn(m, bc1)), denom));
#else
    float g = grad * scale;
    x = x - lr_wd * x;
    m = b1 * m + (1.0f - b1) * g;
    v = b2 * v + (1.0f - b2) * g * g;
    float denom = std::sqrt(v / bc2) + eps;
    return x - lr * (m / bc1) / denom;
#endif
}

// p = adamw(p, grad * scale); p16 = bf16(p)   (the update above; W = 4 elements per thread and step, with
// 16-byte loads and stores, when the arrays allow it; the elements' math is the same either way)
template <int W>
__global__ void adamw_kernel(float* p, const float* grad, float* m, float* v, __nv_bfloat16* p16, int64_t n, float lr,
                             float lr_wd, float b1, float b2, float eps, float bc1, float bc2, const float* grad_scale) {
    float s = grad_scale ? *grad_scale : 1.0f;
    for (int64_t i = W * (blockIdx.x * int64_t(blockDim.x) + threadIdx.x); i < n; i += W * int64_t(gridDim.x) * blockDim.x) {
        if (W == 4 && i + 4 <= n) {
            float4 x = *reinterpret_cast<const float4*>(p + i), g = *reinterpret_cast<const float4*>(grad + i);
            float4 mm = *reinterpret_cast<const float4*>(m + i), vv = *reinterpret_cast<const float4*>(v + i);
            float *xs = &x.x, *gs = &g.x, *ms = &mm.x, *vs = &vv.x;
            for (int k = 0; k < 4; ++k) xs[k] = adamw_element(xs[k], gs[k], ms[k], vs[k], lr, lr_wd, b1, b2, eps, bc1, bc2, s);
            *reinterpret_cast<float4*>(p + i) = x, *reinterpret_cast<float4*>(m + i) = mm, *reinterpret_cast<float4*>(v + i) = vv;
            if (p16) {
                __nv_bfloat162 pair[2] = {__floats2bfloat162_rn(x.x, x.y), __floats2bfloat162_rn(x.z, x.w)};
                *reinterpret_cast<uint2*>(p16 + i) = *reinterpret_cast<const uint2*>(pair);
            }
            continue;
        }
        for (int64_t j = i; j < i + W && j < n; ++j) {
            float mi = m[j], vi = v[j];
            float x = adamw_element(p[j], grad[j], mi, vi, lr, lr_wd, b1, b2, eps, bc1, bc2, s);
            m[j] = mi, v[j] = vi, p[j] = x;
            if (p16) p16[j] = __float2bfloat16(x);
        }
    }
}

// partial[block] = sum of grad^2 over the block's grid-stride elements
__global__ void sum_squares_kernel(const float* g, int64_t n, float* partial) {
    float acc = 0;
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) acc += g[i] * g[i];
    for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffff, acc, o);
    __shared__ float warp_sums[32];
    if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = acc;
    __syncthreads();
    if (threadIdx.x == 0) {
        float total = 0;
        for (int w = 0; w < int(blockDim.x / 32); ++w) total += warp_sums[w];
        partial[blockIdx.x] = total;
    }
}

// sum += partial[0] + ... + partial[n-1], in order (deterministic)
__global__ void add_partials_kernel(const float* partial, int n, float* sum) {
    float total = 0;
    for (int i = 0; i < n; ++i) total += partial[i];
    *sum += total;
}

// scale = min(1, max_norm / (sqrt(sum_sq) + 1e-6))
__global__ void clip_kernel(const float* sum_sq, float max_norm, float* scale) {
    *scale = max_norm > 0 ? fminf(1.0f, max_norm / (sqrtf(*sum_sq) + 1e-6f)) : 1.0f;
}

}  // namespace

void adamw_step_gpu(float* p, const float* grad, float* m, float* v, __nv_bfloat16* p16, int64_t n, const AdamWConfig& c,
                    float lr, float weight_decay, int step, const float* grad_scale, cudaStream_t stream) {
    if (n == 0) return;
    float bc1 = 1 - std::pow(c.beta1, float(step)), bc2 = 1 - std::pow(c.beta2, float(step));
    auto aligned = [](const void* q, uintptr_t bytes) { return reinterpret_cast<uintptr_t>(q) % bytes == 0; };
    bool vec = aligned(p, 16) && aligned(grad, 16) && aligned(m, 16) && aligned(v, 16) && aligned(p16, 8);
    int per_thread = vec ? 4 : 1;
    int blocks = int(std::min<int64_t>((n + 256 * per_thread - 1) / (256 * per_thread), 132 * 16));
    if (vec) adamw_kernel<4><<<blocks, 256, 0, stream>>>(p, grad, m, v, p16, n, lr, lr * weight_decay, c.beta1, c.beta2, c.eps, bc1, bc2, grad_scale);
    else adamw_kernel<1><<<blocks, 256, 0, stream>>>(p, grad, m, v, p16, n, lr, lr * weight_decay, c.beta1, c.beta2, c.eps, bc1, bc2, grad_scale);
    check_launch("adamw_kernel");
}

void adamw_step_cpu(float* p, const float* grad, float* m, float* v, __nv_bfloat16* p16, int64_t n, const AdamWConfig& c,
                    float lr, float weight_decay, int step, float grad_scale, ThreadPool& pool) {
    float bc1 = 1 - std::pow(c.beta1, float(step)), bc2 = 1 - std::pow(c.beta2, float(step));
    float lr_wd = lr * weight_decay;
    int chunks = int(std::min<int64_t>(pool.size(), std::max<int64_t>(1, n)));  // one per thread
    int64_t chunk = (n + chunks - 1) / chunks;
    uint16_t* bits16 = reinterpret_cast<uint16_t*>(p16);  // float_to_bf16: the GPU's bits (CUDA's host conversion is 5x slower)
    pool.run(chunks, [&](int t) {
        for (int64_t i = t * chunk, end = std::min(n, (t + 1) * chunk); i < end; ++i) {
            p[i] = adamw_element(p[i], grad[i], m[i], v[i], lr, lr_wd, c.beta1, c.beta2, c.eps, bc1, bc2, grad_scale);
            if (bits16) bits16[i] = float_to_bf16(p[i]);
        }
    });
}

void grad_sum_squares(const float* grad, int64_t n, float* sum_sq, cudaStream_t stream) {
    if (n == 0) return;
    constexpr int kBlocks = 264;  // fixed, so the sum's order (and value) is the same every run
    static float* p = device_alloc<float>(kBlocks, "grad-norm partials");  // stream order keeps calls apart
    sum_squares_kernel<<<kBlocks, 256, 0, stream>>>(grad, n, p);
    check_launch("sum_squares_kernel");
    add_partials_kernel<<<1, 1, 0, stream>>>(p, kBlocks, sum_sq);
    check_launch("add_partials_kernel");
}

void clip_coefficient(const float* sum_sq, float max_norm, float* scale, cudaStream_t stream) {
    clip_kernel<<<1, 1, 0, stream>>>(sum_sq, max_norm, scale);
    check_launch("clip_kernel");
}

bool Schedule::deepspeed() const { return kind == "WarmupLR" || kind == "WarmupDecayLR" || kind == "WarmupCosineLR"; }

void check_schedule(const Schedule& s, const std::string& flag) {
    if (s.kind != "constant" && s.kind != "warmup" && s.kind != "warmup-linear" && s.kind != "warmup-cosine" && !s.deepspeed())
        fail(flag + ": unknown schedule \"" + s.kind + "\" (constant, warmup, warmup-linear, warmup-cosine; DeepSpeed's WarmupLR, "
             "WarmupDecayLR, WarmupCosineLR)");
    if (s.warmup_steps < 0) fail(flag + ": warmup steps must be >= 0");
    if (!(s.lr > 0)) fail(flag + ": the learning rate must be positive");
    if (s.deepspeed() && s.warmup_type != "log" && s.warmup_type != "linear")
        fail(flag + ": warmup_type must be \"log\" or \"linear\", not \"" + s.warmup_type + "\"");
}

namespace {
// DeepSpeed's schedulers at iteration i (the adamw.h comment has the formulas), in double as Python does.
double deepspeed_lr(const Schedule& s, int i) {
    const double lr = s.lr, min_lr = s.warmup_min_lr;
    const bool cosine = s.kind == "WarmupCosineLR";
    if (i < 0) return cosine ? 0.0 : min_lr;
    const int W = std::max(2, s.warmup_steps), T = s.total_steps;
    if (i < W) {
        double w = s.warmup_type == "log" ? std::log(double(i) + 1) / std::log(double(W)) : double(i) / double(W);
        if (cosine) return lr * (s.warmup_min_ratio + (1.0 - s.warmup_min_ratio) * w);
        return min_lr + (lr - min_lr) * w;
    }
    if (s.kind == "WarmupLR") return lr;
    if (s.kind == "WarmupDecayLR") return min_lr + (lr - min_lr) * std::max(0.0, double(T - i) / std::max(1.0, double(T - W)));
    double progress = std::min(1.0, double(i - W + 1) / std::max(1.0, double(T - W)));
    return lr * std::max(0.0, s.min_ratio + (1.0 - s.min_ratio) * (1 + std::cos(M_PI * progress)) / 2);
}
}  // namespace

float Schedule::lr_at(int step) const {
    if (deepspeed()) return float(deepspeed_lr(*this, step - 1));
    if (kind == "constant") return lr;
    if (step < warmup_steps) return warmup_min_lr + (lr - warmup_min_lr) * float(step + 1) / float(warmup_steps);
    if (kind == "warmup") return lr;
    float span = float(std::max(1, total_steps - warmup_steps));
    float progress = std::min(1.0f, float(step - warmup_steps) / span);
    if (kind == "warmup-linear") return lr * (1.0f - progress);
    return lr * (min_ratio + (1 - min_ratio) * 0.5f * (1 + std::cos(float(M_PI) * progress)));
}
