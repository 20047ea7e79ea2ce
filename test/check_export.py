#!/usr/bin/env python3
"""Checks our exports with Hugging Face (run on a GPU machine after the GPU tests wrote LLAMA_EXPORT_DIR):
PEFT loads our adapter onto the golden base model and reproduces our logits; transformers loads our merged
model and reproduces them too. Bound: max |hf - ours| / max |ours| < 2e-2 (bf16).

    LLAMA_EXPORT_DIR=/tmp/export build/run_tests -tc='*HF*' && python3 test/check_export.py /tmp/export
"""
import os
import sys

import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM
import json

def rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()

def main():
    root, failed = sys.argv[1], 0
    for name in sorted(os.listdir(root)):
        d = os.path.join(root, name)
        golden = os.path.join("test/golden", name)
        rows = json.load(open(os.path.join(golden, "rows.json")))
        ids = torch.tensor(rows["input_ids"]).cuda()
        ours = load_file(os.path.join(d, "our_logits.safetensors"))["logits"].cuda()
        base = AutoModelForCausalLM.from_pretrained(golden, torch_dtype=torch.bfloat16).cuda()
        peft = PeftModel.from_pretrained(base, os.path.join(d, "adapter")).cuda()
        e1 = rel(peft(input_ids=ids).logits.float(), ours)
        merged = AutoModelForCausalLM.from_pretrained(os.path.join(d, "merged"), torch_dtype=torch.bfloat16).cuda()
        e2 = rel(merged(input_ids=ids).logits.float(), ours)
        ok = e1 < 2e-2 and e2 < 2e-2
        failed += not ok
        print("%s: PEFT loading our adapter: %.2e, transformers loading our merged model: %.2e  %s"
              % (name, e1, e2, "ok" if ok else "FAILED"))
    print("%d passed, %d failed" % (len(os.listdir(root)) - failed, failed))
    sys.exit(1 if failed else 0)

if __name__ == "__main__":
    main()
