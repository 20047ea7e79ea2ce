#!/usr/bin/env python3
"""The Python peer for bench/run.sh: HF transformers + PEFT LoRA on the Llama-3.2-1B shape (random init,
bf16), LoRA r=16 alpha=32 on q,k,v,o,gate,up,down, AdamW, seq 1024, micro-batch 8, no activation
checkpointing. Prints one line: mode, tokens/s, peak GiB (torch's max_memory_reserved).

    python3 bench/hf_peer.py eager|compile [steps]
"""
import sys
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

def main():
    mode = sys.argv[1]
    steps = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    B, T = 8, 1024
    cfg = LlamaConfig(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                      num_key_value_heads=8, head_dim=64, vocab_size=128256, max_position_embeddings=131072,
                      rms_norm_eps=1e-5, rope_theta=500000.0, tie_word_embeddings=True,
                      rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                    "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).to(torch.bfloat16).cuda()
    model.config.use_cache = False
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0,
                                             target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    fwd = torch.compile(model) if mode == "compile" else model
    ids = torch.randint(0, cfg.vocab_size, (B, T), device="cuda")
    def step():
        opt.zero_grad(set_to_none=True)
        loss = fwd(input_ids=ids, labels=ids).loss
        loss.backward()
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
    print("peer %-8s %9.0f tok/s  peak %.1f GiB" % (mode, steps * B * T / s, torch.cuda.max_memory_reserved() / 2**30))

if __name__ == "__main__":
    main()
