#!/usr/bin/env python3
"""Makes the Llama-2-family golden files with Hugging Face transformers + tokenizers (run on a GPU machine):
a small random Llama with the 32,000-token SentencePiece-style vocabulary of data/llama2_tokenizer.json
(GQA 2, untied embeddings, plain RoPE, <s> = 1, </s> = 2), {"text"} and {"question","answer"} rows, and
the mean loss HF computes over them. The rows are tokenized by HF `tokenizers` and formatted here, apart
from the trainer, as a PEFT/TRL user would:
    {"text"}               <s> text </s>; every token takes loss
    {"question","answer"}  <s> "Question: q\nAnswer:" + " " + answer </s>; the tokens of the prompt (tokenized
                           alone) take none

  test/golden/llama2_family/config.json, model.safetensors   the model (bf16)
  test/golden/llama2_family/rows.jsonl                       the rows
  test/golden/llama2_family/rows.json                        the same ids and labels, padded with </s> (check_export.py)
  test/golden/llama2_family/golden.json                      {"loss", "targets", "ids", "labels"}

    python3 test/make_golden_llama2.py data/llama2_tokenizer.json test/golden/llama2_family
"""
import json
import os
import sys

import torch
from tokenizers import Tokenizer
from transformers import LlamaConfig, LlamaForCausalLM

ROWS = [
    {"text": "The harbor was quiet at dawn; two boats lay at anchor."},
    {"text": "  Leading spaces, and\nnew lines\n\nin the middle."},
    {"text": "Numbers 1234 and 3.14159, symbols #@!, and ünïcödé — with an emoji 🐳."},
    {"text": "Call me Ishmael. Some years ago - never mind how long precisely - having little or no money in my purse."},
    {"text": "<s> is a literal here, and so is </s>."},
    {"question": "What is the meaning of the noun \"harbor\"?", "answer": "a sheltered port where ships can take on or discharge cargo"},
    {"question": "What is the meaning of the verb \"abandon\"?", "answer": "forsake, leave behind"},
    {"question": "What is the meaning of the adjective \"quick\"?", "answer": "moving fast or able to move fast"},
    {"question": "Who wrote Moby-Dick?", "answer": "Herman Melville"},
]


def encode(tok, row):
    """ids and labels of one row: <s>, the text's ids (special-token strings are tokens, as HF's tokenizer()
    reads them), </s>."""
    bos, eos = 1, 2
    ids = lambda text: tok.encode(text, add_special_tokens=False).ids
    if "text" in row:
        full = [bos] + ids(row["text"]) + [eos]
        return full, list(full)
    prompt = "Question: " + row["question"] + "\nAnswer:"
    full = [bos] + ids(prompt + " " + row["answer"]) + [eos]
    n = 1 + len(ids(prompt))
    return full, [-100] * n + full[n:]


def main():
    tok_path, out = sys.argv[1], sys.argv[2]
    tok = Tokenizer.from_file(tok_path)
    assert tok.get_vocab_size() == 32000, tok.get_vocab_size()
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(2024)
    cfg = LlamaConfig(vocab_size=32000, hidden_size=32, intermediate_size=96, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, head_dim=16, max_position_embeddings=256, rms_norm_eps=1e-5, rope_theta=10000.0,
                      tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, initializer_range=0.2)
    model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)
    with open(os.path.join(out, "rows.jsonl"), "w", encoding="utf-8") as f:
        for row in ROWS:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    model = model.cuda().eval()
    total, count, all_ids, all_labels = 0.0, 0, [], []
    with torch.no_grad():
        for row in ROWS:
            ids, labels = encode(tok, row)
            all_ids.append(ids), all_labels.append(labels)
            logits = model(input_ids=torch.tensor([ids]).cuda()).logits.float()[0]
            target = torch.tensor(labels[1:]).cuda()
            total += torch.nn.functional.cross_entropy(logits[:-1], target, ignore_index=-100, reduction="sum").item()
            count += int((target != -100).sum().item())
    longest = max(len(i) for i in all_ids)
    json.dump({"input_ids": [i + [2] * (longest - len(i)) for i in all_ids],
               "labels": [l + [-100] * (longest - len(l)) for l in all_labels]}, open(os.path.join(out, "rows.json"), "w"))
    json.dump({"loss": total / count, "targets": count, "ids": all_ids, "labels": all_labels},
              open(os.path.join(out, "golden.json"), "w"))
    print("llama2_family: loss %.6f over %d targets; wrote %s" % (total / count, count, out))


if __name__ == "__main__":
    main()
