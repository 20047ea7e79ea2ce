#!/usr/bin/env python3
"""PyTorch's scaled_dot_product_attention (causal, GQA, bf16) forward + backward timed like dev/attention:
B*T = 16384 tokens, T = 1024..16384, head_dim 64 (32 heads, 8 KV heads) and 128 (16 heads, 8 KV heads),
FLOPs counted as FlashAttention does (forward 2*B*H*T*T*Dh causal, backward 2.5x). Prints one line a shape.

    python3 bench/sdpa_peer.py
"""
import torch
import torch.nn.functional as F


def bench(T, H, KVH, Dh, reps=10):
    B = max(1, 16384 // T)
    q = torch.randn(B, H, T, Dh, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(B, KVH, T, Dh, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn(B, KVH, T, Dh, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    do = torch.randn(B, H, T, Dh, device="cuda", dtype=torch.bfloat16)

    def run():
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        o.backward(do)

    for _ in range(3):
        run()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        run()
        e.record()
        torch.cuda.synchronize()
        times.append(s.elapsed_time(e))
    ms = sorted(times)[len(times) // 2]
    flops = 2 * B * H * T * T * Dh * 3.5  # causal: half of 4*B*H*T*T*Dh forward, backward 2.5x
    print("sdpa T=%5d Dh=%3d H=%2d KVH=%d  fwd+bwd %7.2f ms  %6.1f TFLOP/s" % (T, Dh, H, KVH, ms, flops / ms / 1e9))


def main():
    for Dh, H in ((64, 32), (128, 16)):
        for T in (1024, 2048, 4096, 8192, 16384):
            bench(T, H, 8, Dh)


if __name__ == "__main__":
    main()
