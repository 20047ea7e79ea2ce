#!/usr/bin/env python3
"""Checks `./train --merge` with Hugging Face on a GPU machine: a short LoRA run on a golden base model
(random pre-tokenized rows) writes OUT/adapter and OUT/model; transformers loads OUT/model with
AutoModelForCausalLM, and its logits must match PEFT's (the base with OUT/adapter through PeftModel):
    err = max |merged - peft| / max |peft|   (both in fp32 on the GPU, on fresh random ids)
passes when err <= 2e-2 (the merged weights are rounded to bf16 once), while the adapter itself moved the
logits: max |base - peft| / max |peft| > 1e-3 (else the check could not fail).

    python3 test/check_merge.py [BASE_DIR ...] [--out DIR]     (default: the golden models in test/golden)
"""
import json
import os
import random
import subprocess
import sys

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM


def rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def logits(model_dir, ids, adapter=None):
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).cuda()
    if adapter:
        model = PeftModel.from_pretrained(model, adapter).cuda()
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def check(base, out):
    config = json.load(open(os.path.join(base, "config.json")))
    vocab, rng = config["vocab_size"], random.Random()
    os.makedirs(out, exist_ok=True)
    rows = os.path.join(out, "rows.jsonl")
    with open(rows, "w") as f:
        for _ in range(64):
            f.write(json.dumps({"input_ids": [rng.randrange(vocab) for _ in range(rng.randrange(8, 60))]}) + "\n")
    run = ["./train", "--model", base, "--data", rows, "--seq", "64", "--micro-batch", "4", "--steps", "20", "--lr", "5e-3",
           "--lora-rank", "8", "--merge", "--sample", "0", "--out", out]
    subprocess.run(run, check=True)
    for name in ("adapter/adapter_config.json", "adapter/adapter_model.safetensors", "model/config.json", "model/model.safetensors"):
        if not os.path.exists(os.path.join(out, name)):
            raise SystemExit(f"error: {out}/{name} was not written")
    ids = torch.tensor([[rng.randrange(vocab) for _ in range(48)] for _ in range(2)]).cuda()
    peft = logits(base, ids, adapter=os.path.join(out, "adapter"))
    merged = logits(os.path.join(out, "model"), ids)
    plain = logits(base, ids)
    e_merged, e_moved = rel(merged, peft), rel(plain, peft)
    ok = e_merged <= 2e-2 and e_moved > 1e-3
    print("%s: transformers loading OUT/model vs PeftModel(base, OUT/adapter): %.2e (bound 2e-2); the adapter moved the "
          "logits by %.2e  %s" % (os.path.basename(base.rstrip("/")), e_merged, e_moved, "ok" if ok else "FAILED"))
    return ok


def main():
    args = sys.argv[1:]
    out = "/tmp/check_merge"
    if "--out" in args:
        i = args.index("--out")
        out = args[i + 1]
        del args[i:i + 2]
    bases = args or [os.path.join("test/golden", n) for n in ("llama_tied_gqa4", "llama_untied_mha", "qwen3_tied")]
    failed = sum(not check(b, os.path.join(out, os.path.basename(b.rstrip("/")))) for b in bases)
    print("%d passed, %d failed" % (len(bases) - failed, failed))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
