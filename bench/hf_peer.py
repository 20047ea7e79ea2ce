#!/usr/bin/env python3
"""The Python peer for bench/run.sh, bench/long.sh, bench/qwen3.sh and bench/big.sh: HF transformers + PEFT
LoRA, r=16 alpha=32 on q,k,v,o,gate,up,down, AdamW, no activation checkpointing. The model is a named shape
from a random init (bf16: the Llama-3.2-1B shape by default, or Qwen3-0.6B's), or a model directory (loaded
in bf16: bench/big.sh's 7B). Prints one line: mode, model, tokens/s, peak GiB (torch's
max_memory_reserved); running out of GPU memory is that line too.

    python3 bench/hf_peer.py eager|compile [steps] [micro-batch seq] [llama-3.2-1b|qwen3-0.6b|MODEL_DIR]
"""
import os
import sys

import torch
from transformers import AutoModelForCausalLM

from peer_common import B, SHAPES, T, timed, with_lora


def main():
    mode = sys.argv[1]
    steps = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    b, t = (int(sys.argv[3]), int(sys.argv[4])) if len(sys.argv) > 4 else (B, T)
    name = sys.argv[5] if len(sys.argv) > 5 else "llama-3.2-1b"
    torch.manual_seed(0)
    if os.path.isdir(name):
        model = AutoModelForCausalLM.from_pretrained(name, dtype=torch.bfloat16, device_map="cuda")
    else:
        make_config, model_class = SHAPES[name]
        model = model_class(make_config()).to(torch.bfloat16).cuda()
    model.config.use_cache = False
    vocab = model.config.vocab_size
    model = with_lora(model)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    fwd = torch.compile(model) if mode == "compile" else model
    ids = torch.randint(0, vocab, (b, t), device="cuda")

    def step():
        opt.zero_grad(set_to_none=True)
        fwd(input_ids=ids, labels=ids).loss.backward()
        opt.step()

    shown = os.path.basename(os.path.normpath(name))
    try:
        tps, peak = timed(step, steps, b * t)
    except torch.OutOfMemoryError:
        print("peer %-8s %s B=%d T=%d out of GPU memory (%.1f GiB reserved)" % (mode, shown, b, t, torch.cuda.max_memory_reserved() / 2**30))
        return
    print("peer %-8s %s B=%d T=%d %9.0f tok/s  peak %.1f GiB" % (mode, shown, b, t, tps, peak))


if __name__ == "__main__":
    main()
