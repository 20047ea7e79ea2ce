#!/usr/bin/env python3
"""PyTorch's scaled_dot_product_attention (causal, GQA, bf16) timed like dev/attention: B*T = 16384 tokens,
T = 1024..16384, head_dim 64 (32 heads, 8 KV heads) and 128 (16 heads, 8 KV heads), FLOPs counted as
FlashAttention does (forward 2*B*H*T*T*Dh causal, backward 2.5x). One line a shape: the forward alone, the
forward + backward, and the backward as their difference (the rates beside dev/attention's fwd ms and bwd ms
columns). Then, once per head dim, the GPU kernels one fwd+bwd runs (torch.profiler): the backend SDPA picked.

    python3 bench/sdpa_peer.py
"""
import torch
import torch.nn.functional as F


def median_ms(fn, reps):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        torch.cuda.synchronize()
        times.append(s.elapsed_time(e))
    return sorted(times)[len(times) // 2]


def tensors(T, H, KVH, Dh):
    B = max(1, 16384 // T)
    q = torch.randn(B, H, T, Dh, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(B, KVH, T, Dh, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn(B, KVH, T, Dh, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    do = torch.randn(B, H, T, Dh, device="cuda", dtype=torch.bfloat16)
    return B, q, k, v, do


def bench(T, H, KVH, Dh, reps=10):
    B, q, k, v, do = tensors(T, H, KVH, Dh)

    def forward():  # the training forward (grad enabled: it keeps what the backward needs, as ours writes lse)
        F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)

    def run():
        q.grad = k.grad = v.grad = None  # the gradients written, not added to the last repetition's
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        o.backward(do)

    fwd, both = median_ms(forward, reps), median_ms(run, reps)
    flops = 2 * B * H * T * T * Dh  # causal forward: half of 4*B*H*T*T*Dh
    print("sdpa T=%5d Dh=%3d H=%2d KVH=%d  fwd %6.3f ms %6.1f TFLOP/s | bwd %6.3f ms %6.1f | fwd+bwd %7.2f ms  %6.1f TFLOP/s" %
          (T, Dh, H, KVH, fwd, flops / fwd / 1e9, both - fwd, 2.5 * flops / (both - fwd) / 1e9, both, 3.5 * flops / both / 1e9))


def kernels(T, H, KVH, Dh):
    B, q, k, v, do = tensors(T, H, KVH, Dh)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        o.backward(do)
        torch.cuda.synchronize()
    names = sorted({e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA})
    print("sdpa kernels, T=%d Dh=%d: %s" % (T, Dh, "; ".join(n[:100] for n in names)))


def main():
    for Dh, H in ((64, 32), (128, 16)):
        for T in (1024, 2048, 4096, 8192, 16384):
            bench(T, H, 8, Dh)
    for Dh, H in ((64, 32), (128, 16)):  # after every timing line: a profiler that fails here cuts none of them short
        try:
            kernels(8192, H, 8, Dh)
        except Exception as e:
            print("sdpa kernels, Dh=%d: not listed (%s: %s)" % (Dh, type(e).__name__, e))


if __name__ == "__main__":
    main()
