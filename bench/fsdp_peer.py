#!/usr/bin/env python3
"""The multi-GPU Python peer for bench/zero.sh: PyTorch FSDP2 (fully_shard on every decoder layer and the
root) + PEFT LoRA r=16 alpha=32 on the Llama-3.2-1B shape (random init, bf16), seq 1024, micro-batch 8 per
GPU, AdamW. Prints one line on rank 0: GPUs, tokens/s per GPU, peak GiB per GPU (max_memory_reserved).

    torchrun --nproc_per_node N bench/fsdp_peer.py [steps] [lora|full]
"""
import os
import sys

import torch
import torch.distributed as dist
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

def main():
    steps = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    mode = sys.argv[2] if len(sys.argv) > 2 else "lora"
    dist.init_process_group("nccl")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    B, T = 8, 1024
    cfg = LlamaConfig(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                      num_key_value_heads=8, head_dim=64, vocab_size=128256, max_position_embeddings=131072,
                      rms_norm_eps=1e-5, rope_theta=500000.0, tie_word_embeddings=True,
                      rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                    "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).to(torch.bfloat16 if mode == "lora" else torch.float32).cuda()
    model.config.use_cache = False
    if mode == "lora":
        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=[
            "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for layer in model.get_decoder().layers if mode == "full" else model.base_model.model.model.layers:
        fully_shard(layer, mp_policy=mp)
    fully_shard(model, mp_policy=mp)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    ids = torch.randint(0, cfg.vocab_size, (B, T), device="cuda")
    def step():
        opt.zero_grad(set_to_none=True)
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(steps):
        step()
    end.record()
    torch.cuda.synchronize()
    s = start.elapsed_time(end) / 1e3
    if rank == 0:
        print("peer FSDP2 %s %d GPUs %9.0f tok/s/GPU  peak %.1f GiB" % (mode, world, steps * B * T / s, torch.cuda.max_memory_reserved() / 2**30))
    dist.destroy_process_group()

if __name__ == "__main__":
    main()
