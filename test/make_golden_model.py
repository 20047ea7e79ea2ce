#!/usr/bin/env python3
"""Makes the model golden files with Hugging Face transformers + PEFT (run on a GPU machine):
for small random Llamas (tied/untied embeddings, GQA ratios 4 and 1, head_dim 64 and 128, llama3 RoPE
scaling) and a small random Qwen3 (q_norm/k_norm, head_dim independent of hidden/heads, rope_theta 1e6,
every norm weight perturbed away from 1 so a wrong norm shows), a PEFT LoRA adapter with non-zero B, and
pre-tokenized rows with masked prompts and padding:

  test/golden/NAME/config.json, model.safetensors   the base model (bf16)
  test/golden/NAME/adapter/                         the PEFT adapter (adapter_config.json + safetensors)
  test/golden/NAME/rows.json                        {"input_ids": [[...]], "labels": [[...]]}
  test/golden/NAME/golden.safetensors               logits [B,T,V] (fp32) and every LoRA gradient (PEFT names)
  test/golden/NAME/golden.json                      loss, the 10-step AdamW LoRA loss trajectory,
                                                    the 10-step full fine-tuning trajectory

    python3 test/make_golden_model.py test/golden [NAME ...]     (default: every model)
"""
import json
import os
import sys

import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

CONFIGS = {
    "llama_tied_gqa4": dict(hidden_size=256, intermediate_size=384, num_hidden_layers=2, num_attention_heads=4,
                            num_key_value_heads=1, head_dim=64, vocab_size=1000, tie_word_embeddings=True,
                            rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                          "high_freq_factor": 4.0, "original_max_position_embeddings": 16}),
    "llama_untied_mha": dict(hidden_size=192, intermediate_size=320, num_hidden_layers=2, num_attention_heads=2,
                             num_key_value_heads=2, head_dim=128, vocab_size=777, tie_word_embeddings=False,
                             rope_scaling=None),
    # hidden 192 with 4 heads of 64: head_dim is not hidden / heads, as in Qwen3-0.6B (1024, 16 x 128)
    "qwen3_tied": dict(hidden_size=192, intermediate_size=320, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, head_dim=64, vocab_size=1000, tie_word_embeddings=True,
                       rope_theta=1000000.0),
}
FAMILY = {"qwen3_tied": (Qwen3Config, Qwen3ForCausalLM)}  # the rest are Llamas
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
B, T, STEPS, LR = 3, 45, 10, 1e-3


def rows(vocab, gen):
    ids = torch.randint(0, vocab, (B, T), generator=gen)
    labels = ids.clone()
    labels[0, :12] = -100          # a masked prompt
    labels[1, :5] = -100
    labels[2, 30:] = -100          # padding at the end of a short row
    ids[2, 30:] = 0
    return ids, labels


def main():
    out = sys.argv[1]
    names = sys.argv[2:] or list(CONFIGS)
    for name in names:
        kw = dict(CONFIGS[name])
        config_class, model_class = FAMILY.get(name, (LlamaConfig, LlamaForCausalLM))
        torch.manual_seed(1234)
        gen = torch.Generator().manual_seed(99)
        d = os.path.join(out, name)
        os.makedirs(d, exist_ok=True)
        kw.setdefault("rope_theta", 10000.0)
        cfg = config_class(max_position_embeddings=256, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, **kw)
        model = model_class(cfg).to(torch.bfloat16)
        if name in FAMILY:  # norm weights (input, post-attention, q_norm, k_norm, final) around 1, not all 1
            with torch.no_grad():
                for n, p in model.named_parameters():
                    if n.endswith("norm.weight"):
                        p.copy_(1 + 0.2 * torch.randn(p.shape, generator=gen))
        model.save_pretrained(d, safe_serialization=True)
        ids, labels = rows(cfg.vocab_size, gen)
        json.dump({"input_ids": ids.tolist(), "labels": labels.tolist()}, open(os.path.join(d, "rows.json"), "w"))
        ids, labels = ids.cuda(), labels.cuda()

        # LoRA: PEFT's init, then B made non-zero so the adapter changes the outputs.
        base = model_class.from_pretrained(d, torch_dtype=torch.bfloat16).cuda()
        peft = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS, lora_dropout=0.0))
        with torch.no_grad():
            for n, p in peft.named_parameters():
                if "lora_B" in n:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
        peft.save_pretrained(os.path.join(d, "adapter"))
        out_ = peft(input_ids=ids, labels=labels)
        out_.loss.backward()
        tensors = {"logits": out_.logits.float().contiguous().cpu()}
        for n, p in peft.named_parameters():
            if p.requires_grad:
                key = n.replace(".default", "")
                tensors["grad." + key] = p.grad.float().contiguous().cpu()
        save_file(tensors, os.path.join(d, "golden.safetensors"))
        loss0 = out_.loss.item()

        opt = torch.optim.AdamW([p for p in peft.parameters() if p.requires_grad], lr=LR, betas=(0.9, 0.999),
                                eps=1e-8, weight_decay=0.0)
        lora_losses = []
        for _ in range(STEPS):
            opt.zero_grad()
            loss = peft(input_ids=ids, labels=labels).loss
            loss.backward()
            lora_losses.append(loss.item())
            opt.step()

        # Full fine-tuning: fp32 master weights, bf16 compute (autocast), AdamW on all parameters.
        full = model_class.from_pretrained(d, torch_dtype=torch.float32).cuda()
        opt = torch.optim.AdamW(full.parameters(), lr=LR, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
        full_losses = []
        for _ in range(STEPS):
            opt.zero_grad()
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = full(input_ids=ids, labels=labels).loss
            loss.backward()
            full_losses.append(loss.item())
            opt.step()
        json.dump({"loss": loss0, "lr": LR, "lora_losses": lora_losses, "full_losses": full_losses,
                   "lora_r": 8, "lora_alpha": 16}, open(os.path.join(d, "golden.json"), "w"), indent=1)
        print(name, "loss", loss0, "lora", lora_losses[-1], "full", full_losses[-1])


if __name__ == "__main__":
    main()
