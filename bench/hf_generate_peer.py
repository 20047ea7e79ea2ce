#!/usr/bin/env python3
"""The generation peer for bench/big.sh: HF transformers `generate`, greedy, on a model directory (bf16, on
the GPU), every sequence made to run the full length (min_new_tokens), after one short warm-up call.
Prints one line: batch, new tokens, tokens/s.

    python3 bench/hf_generate_peer.py DIR [batch] [new tokens]
"""
import sys
import time

import torch
from transformers import LlamaForCausalLM

PROMPT = [1, 450, 7483, 310, 3444, 338]  # BOS "The capital of France is" in the Llama-2 vocabulary


def main():
    path = sys.argv[1]
    batch = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    new = int(sys.argv[3]) if len(sys.argv) > 3 else 128
    model = LlamaForCausalLM.from_pretrained(path, dtype=torch.bfloat16, device_map="cuda")
    ids = torch.tensor([PROMPT] * batch, device="cuda")
    mask = torch.ones_like(ids)
    model.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False)
    torch.cuda.synchronize()
    start = time.time()
    out = model.generate(ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new, do_sample=False)
    torch.cuda.synchronize()
    seconds = time.time() - start
    made = (out.shape[1] - ids.shape[1]) * batch
    print("peer HF generate B=%d: %d tokens in %.1f s, %.1f tok/s" % (batch, made, seconds, made / seconds))


if __name__ == "__main__":
    main()
