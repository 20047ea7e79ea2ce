#!/usr/bin/env python3
"""Makes the generation golden files with Hugging Face transformers + PEFT (run on a GPU machine): for
each golden model (with its PEFT adapter when it has one), greedy continuations by `model.generate`
(bf16, do_sample=False) of prompts whose every step's choice is clear: the top logit leads the second by
at least 3% of the largest |logit|, far above bf16's rounding, so any correct implementation picks the same
token. Prompts are random ids, tried until three such prompts of different lengths are found.

  test/golden/NAME/generate.json   {"prompts": [[...]], "continuations": [[...]], "eos": [..], "max_new_tokens": N,
                                    "adapter": bool, "min_margin": [...]}

    python3 test/make_golden_generate.py test/golden [NAME ...]
"""
import json
import os
import sys

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

NEW = 16
LENGTHS = [5, 9, 14]
MARGIN = 0.03


def clear_continuation(model, prompt, eos):
    out = model.generate(input_ids=torch.tensor([prompt]).cuda(), max_new_tokens=NEW, do_sample=False, eos_token_id=eos,
                         pad_token_id=eos[0], output_scores=True, return_dict_in_generate=True)
    margins = []
    for s in out.scores:
        top = torch.topk(s[0].float(), 2).values
        margins.append(((top[0] - top[1]) / s[0].float().abs().max()).item())
    return out.sequences[0][len(prompt):].tolist(), min(margins)


def main():
    root = sys.argv[1]
    for name in sys.argv[2:] or ["llama_tied_gqa4", "llama_untied_mha", "qwen3_tied"]:
        d = os.path.join(root, name)
        if not os.path.exists(os.path.join(d, "config.json")):
            print("skipping", name, "(no model)")
            continue
        cfg = json.load(open(os.path.join(d, "config.json")))
        eos = cfg["eos_token_id"] if isinstance(cfg["eos_token_id"], list) else [cfg["eos_token_id"]]
        model = AutoModelForCausalLM.from_pretrained(d, torch_dtype=torch.bfloat16).cuda().eval()
        adapter = os.path.exists(os.path.join(d, "adapter", "adapter_config.json"))
        if adapter:
            model = PeftModel.from_pretrained(model, os.path.join(d, "adapter")).cuda().eval()
        gen = torch.Generator().manual_seed(7)
        prompts, continuations, margins = [], [], []
        for length in LENGTHS:
            for _ in range(500):
                prompt = torch.randint(3, cfg["vocab_size"], (length,), generator=gen).tolist()
                with torch.no_grad():
                    cont, m = clear_continuation(model, prompt, eos)
                if m >= MARGIN:
                    prompts.append(prompt), continuations.append(cont), margins.append(m)
                    break
            else:
                sys.exit("%s: no prompt of length %d with a clear greedy continuation" % (name, length))
        json.dump({"prompts": prompts, "continuations": continuations, "eos": eos, "max_new_tokens": NEW, "adapter": adapter,
                   "min_margin": margins}, open(os.path.join(d, "generate.json"), "w"))
        print("%s: %d prompts, continuation lengths %s, min margins %s" % (name, len(prompts), [len(c) for c in continuations],
                                                                          ["%.3f" % m for m in margins]))


if __name__ == "__main__":
    main()
