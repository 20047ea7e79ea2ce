#!/usr/bin/env python3
"""A Llama-2-shaped model directory from a seeded random init, made on the GPU machine (no download):
LlamaForCausalLM(config) built on the GPU in bf16, saved with save_pretrained (bf16 safetensors shards,
config.json, generation_config.json), with the Llama-2-family tokenizer (data/llama2_tokenizer.json) beside
it. About 30 s and 13.5 GB for the 7B shape.

    python3 bench/make_big_model.py DIR [llama-2-7b|llama-2-13b]
"""
import os
import shutil
import sys
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

SHAPES = {  # meta-llama/Llama-2-7b-hf's and -13b-hf's config.json
    "llama-2-7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32),
    "llama-2-13b": dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40),
}


def main():
    out = sys.argv[1]
    shape = sys.argv[2] if len(sys.argv) > 2 else "llama-2-7b"
    s = SHAPES[shape]
    cfg = LlamaConfig(vocab_size=32000, num_key_value_heads=s["num_attention_heads"], head_dim=128, max_position_embeddings=4096,
                      rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, **s)
    start = time.time()
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg)
    model.save_pretrained(out)
    here = os.path.dirname(os.path.abspath(__file__))
    shutil.copy(os.path.join(here, "..", "data", "llama2_tokenizer.json"), os.path.join(out, "tokenizer.json"))
    with open(os.path.join(out, "made.txt"), "w") as f:  # written last: the directory is whole
        f.write("%s, torch.manual_seed(0)\n" % shape)
    print("made %s (%s, %.2fB parameters) in %.0f s" % (out, shape, sum(p.numel() for p in model.parameters()) / 1e9, time.time() - start))


if __name__ == "__main__":
    main()
