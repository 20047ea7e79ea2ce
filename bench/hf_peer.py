#!/usr/bin/env python3
"""The Python peer for bench/run.sh and bench/qwen3.sh: HF transformers + PEFT LoRA on the Llama-3.2-1B shape
(or Qwen3-0.6B's; random init, bf16), LoRA r=16 alpha=32 on q,k,v,o,gate,up,down, AdamW, seq 1024, micro-batch
8, no activation checkpointing. Prints one line: mode, tokens/s, peak GiB (torch's max_memory_reserved).

    python3 bench/hf_peer.py eager|compile [steps] [micro-batch seq] [llama-3.2-1b|qwen3-0.6b]
"""
import sys

import torch

from peer_common import B, SHAPES, T, timed, with_lora


def main():
    mode = sys.argv[1]
    steps = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    b, t = (int(sys.argv[3]), int(sys.argv[4])) if len(sys.argv) > 4 else (B, T)
    shape = sys.argv[5] if len(sys.argv) > 5 else "llama-3.2-1b"
    make_config, model_class = SHAPES[shape]
    cfg = make_config()
    torch.manual_seed(0)
    model = model_class(cfg).to(torch.bfloat16).cuda()
    model.config.use_cache = False
    model = with_lora(model)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    fwd = torch.compile(model) if mode == "compile" else model
    ids = torch.randint(0, cfg.vocab_size, (b, t), device="cuda")

    def step():
        opt.zero_grad(set_to_none=True)
        fwd(input_ids=ids, labels=ids).loss.backward()
        opt.step()

    tps, peak = timed(step, steps, b * t)
    print("peer %-8s %s B=%d T=%d %9.0f tok/s  peak %.1f GiB" % (mode, shape, b, t, tps, peak))


if __name__ == "__main__":
    main()
