#!/usr/bin/env python3
"""The QA-set peer for bench/long.sh: HF transformers + PEFT LoRA (Llama-3.2-1B shape, random init, bf16,
r=16 alpha=32 on all seven projections, AdamW, sdpa attention) on the WordNet QA rows the way HF's Trainer
feeds them: shuffled rows, each batch padded to its longest row (DataCollatorWithPadding), the prompt
masked. Prints real (non-pad) tokens/s.

    python3 bench/hf_qa_peer.py BATCH [steps]
"""
import json
import random
import sys

import torch
from tokenizers import Tokenizer
from transformers import LlamaForCausalLM

from peer_common import llama_1b_config, with_lora


def rows():
    tok = Tokenizer.from_file("data/tokenizer.json")
    out = []
    for line in open("data/qa_train.jsonl", encoding="utf-8"):
        r = json.loads(line)
        prompt = "Question: " + r["question"] + "\nAnswer:"
        ids = [128000] + tok.encode(prompt + " " + r["answer"], add_special_tokens=False).ids + [128001]
        n = 1 + len(tok.encode(prompt, add_special_tokens=False).ids)
        out.append((ids, [-100] * n + ids[n:]))
    return out


def main():
    batch = int(sys.argv[1])
    steps = int(sys.argv[2]) if len(sys.argv) > 2 else 30
    data = rows()
    random.Random(0).shuffle(data)
    cfg = llama_1b_config()
    torch.manual_seed(0)
    model = with_lora(LlamaForCausalLM(cfg).to(torch.bfloat16).cuda())
    model.config.use_cache = False
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)

    def batches():
        i = 0
        while True:
            chunk = [data[(i + k) % len(data)] for k in range(batch)]
            i += batch
            longest = max(len(ids) for ids, _ in chunk)
            ids = torch.tensor([x + [128001] * (longest - len(x)) for x, _ in chunk], device="cuda")
            labels = torch.tensor([y + [-100] * (longest - len(y)) for _, y in chunk], device="cuda")
            mask = torch.tensor([[1] * len(x) + [0] * (longest - len(x)) for x, _ in chunk], device="cuda")
            yield ids, labels, mask, sum(len(x) for x, _ in chunk)

    it = batches()
    for _ in range(3):
        ids, labels, mask, _ = next(it)
        model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
        opt.step(), opt.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    real = 0
    start.record()
    for _ in range(steps):
        ids, labels, mask, n = next(it)
        real += n
        model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
        opt.step(), opt.zero_grad(set_to_none=True)
    end.record()
    torch.cuda.synchronize()
    print("peer eager QA batch %d: %9.0f real tok/s  peak %.1f GiB" % (batch, real / (start.elapsed_time(end) / 1e3),
                                                                     torch.cuda.max_memory_reserved() / 2**30))


if __name__ == "__main__":
    main()
