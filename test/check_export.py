#!/usr/bin/env python3
"""Checks our exports with Hugging Face (run on a GPU machine after the GPU tests wrote LLAMA_EXPORT_DIR):
PEFT loads our adapter onto the golden base model and transformers loads our merged model (as the class the
golden model is: LlamaForCausalLM, or Qwen3ForCausalLM for qwen3_tied, from our config.json); each must
reproduce our logits. The truth is HF in fp32 (the same weights, our adapter); ours (bf16) must be as
close to it as HF's own bf16 run is, within a factor of 2 or within 2e-2, whichever is larger:
    err(x) = max |x - hf_fp32| / max |hf_fp32|;   pass when err(ours) <= max(2e-2, 2 err(hf_bf16))
and PEFT's bf16 logits and the merged model's must be within 2e-2 of ours (the loading check).

    LLAMA_EXPORT_DIR=/tmp/export build/run_tests -tc='*HF*,*Llama-2*' && python3 test/check_export.py /tmp/export
"""
import json
import os
import sys

import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM


def rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def logits(model_dir, adapter, ids, dtype):
    """The model's logits and the class transformers built for it."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).cuda()
    built = type(model).__name__
    if adapter:
        model = PeftModel.from_pretrained(model, adapter).cuda()
    with torch.no_grad():
        return model(input_ids=ids).logits.float(), built


def main():
    root, failed, names = sys.argv[1], 0, sorted(os.listdir(sys.argv[1]))
    for name in names:
        d, golden = os.path.join(root, name), os.path.join("test/golden", name)
        ids = torch.tensor(json.load(open(os.path.join(golden, "rows.json")))["input_ids"]).cuda()
        ours = load_file(os.path.join(d, "our_logits.safetensors"))["logits"].cuda()
        adapter = os.path.join(d, "adapter")
        truth, golden_class = logits(golden, adapter, ids, torch.float32)
        peft_bf16, _ = logits(golden, adapter, ids, torch.bfloat16)
        merged, merged_class = logits(os.path.join(d, "merged"), None, ids, torch.bfloat16)
        e_ours, e_hf = rel(ours, truth), rel(peft_bf16, truth)
        e_peft, e_merged = rel(peft_bf16, ours), rel(merged, ours)
        bound = max(2e-2, 2 * e_hf)
        ok = e_ours <= bound and e_peft <= max(2e-2, bound + e_hf) and e_merged <= max(2e-2, bound + e_hf)
        ok = ok and merged_class == golden_class
        failed += not ok
        print("%s: vs HF fp32: ours %.2e, HF bf16 %.2e (bound %.2e); PEFT loading our adapter %.2e, transformers loading our "
              "merged model %.2e as %s (golden: %s)  %s" % (name, e_ours, e_hf, bound, e_peft, e_merged, merged_class, golden_class,
                                                           "ok" if ok else "FAILED"))
    print("%d passed, %d failed" % (len(names) - failed, failed))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
