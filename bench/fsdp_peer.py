#!/usr/bin/env python3
"""The multi-GPU Python peer for bench/zero.sh: PyTorch FSDP2 (fully_shard on every decoder layer and the
root) + PEFT LoRA r=16 alpha=32 (or full fine-tuning) on the Llama-3.2-1B shape, random init, seq 1024,
micro-batch 8 per GPU, AdamW. Prints one line on rank 0: GPUs, tokens/s per GPU, peak GiB per GPU.

    torchrun --nproc_per_node N bench/fsdp_peer.py [steps] [lora|full]
"""
import os
import sys

import torch
import torch.distributed as dist
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from transformers import LlamaForCausalLM

from peer_common import B, T, llama_1b_config, timed, with_lora


def main():
    steps = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    mode = sys.argv[2] if len(sys.argv) > 2 else "lora"
    dist.init_process_group("nccl")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    cfg = llama_1b_config()
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).to(torch.bfloat16 if mode == "lora" else torch.float32).cuda()
    model.config.use_cache = False
    layers = model.model.layers
    if mode == "lora":
        model = with_lora(model)
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for layer in layers:
        fully_shard(layer, mp_policy=mp)
    fully_shard(model, mp_policy=mp)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    ids = torch.randint(0, cfg.vocab_size, (B, T), device="cuda")

    def step():
        opt.zero_grad(set_to_none=True)
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()

    tps, peak = timed(step, steps)
    if rank == 0:
        print("peer FSDP2 %s %d GPUs %9.0f tok/s/GPU  peak %.1f GiB" % (mode, world, tps, peak))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
