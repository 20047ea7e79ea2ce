#!/usr/bin/env python3
"""Makes test/golden/tokenizer_qwen3_ids.json with Hugging Face `tokenizers` (run where it is installed, e.g. a
GPU machine; needs only `tokenizers` and the standard library): for Qwen3's tokenizer data/qwen3_tokenizer.json
(from data/fetch.sh), the ids HF gives for the Llama-3 golden texts plus the cases where Qwen's tokenizer differs
(NFC, one digit a piece, CJK, the added tokens, special or not), the same texts with special tokens encoded as
text, their decodes, decodes of chosen id lists, HF's NFC of every input of test/nfc_cases.txt where it differs
from that file's expected form, and for every file of the default corpus and QA set a count and FNV-1a hash of
its ids. test/test_tokenizer_qwen3.cpp checks ours against them.

    python3 test/make_golden_tokenizer_qwen3.py data/qwen3_tokenizer.json data test/golden/tokenizer_qwen3_ids.json
"""
import json
import os
import sys

import tokenizers
from tokenizers import Tokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from make_golden_tokenizer import CASES, INVALID_UTF8, data_file_ids  # noqa: E402  (the Llama-3 golden texts)

QWEN3_CASES = [
    # digits: one piece each (\p{N}), in every script
    "1234567890", "x" + "9" * 40, "3.14159 2026-12-06 10:45 1,000,000 0x1F", "v1.2.3-rc4", "a1b22c333d4444",
    "٠١٢٣٤٥٦٧٨٩ ۱۲۳ १२३४ ０１２３ ²³¹ ½ ¾ Ⅻ ⅻ 〇", "2026年12月6日", " 12", "  123 ", "12\n34", "-5", "$100.00",
    # CJK and other scripts
    "中文分词测试，这是一个句子。我们今天学习大语言模型的微调。", "日本語のテキストです。カタカナとひらがな、漢字。",
    "한국어 문장입니다. 안녕하세요!", "混合 English 和中文 text 以及 123 数字", "Ｆｕｌｌｗｉｄｔｈ ＡＢＣ", "ﾊﾝｶｸ ｶﾀｶﾅ",
    # NFC: decomposed letters compose, marks reorder by class, singletons and exclusions decompose
    "e\u0301", "cafe\u0301 nai\u0308ve", "A\u030a \u212b \u00c5", "\u2126 \u03a9", "a\u0323\u0302 a\u0302\u0323 \u1ea1\u0302",
    "Vie\u0323\u0302t Nam", "A\u0308\u0304", "\u0344", "\u0958 \u0915\u093c", "\u2000\u2001", "\uf900\uf901 \U0002f800",
    "\u1f71 \u03ac", "o\u031b\u0303 \u01a1\u0303", "\u0301e", "\u0301\u0301", "x\u0345\u0307\u0334", "s\u0323\u0307",
    "\u0b47\u0b3e \u0b4b", "\u1100\u1161\u11a8 \u1112\u1161\u11ab\u1100\u1173\u11af", "\uac00\u11a8", "\uac01\u11a8",
    "\u1100\u1100\u1161", "\u11a8\u1161", "\u3131\u314f", "\U0001d15e \U0001d157\U0001d165",
    # characters later than Unicode 9.0 (HF's NFC tables): left as they are
    "\U00011935\U00011930", "x\u0345\u1dfa\u0334", "a\u1ac1\u0301", "\u08d3\u0654", "x\u0345\U00010f46\u0334",
    # the added tokens: special ones (split out; text under encode_special_tokens) and non-special ones
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nWhat is a harbor?<|im_end|>\n"
    "<|im_start|>assistant\n<think>\n\n</think>\n\nA sheltered port.<|im_end|>\n",
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>", "<think></think>", "a<think>b</think>c",
    "< think>", "<think >", "<|im_start |>", "<|im_start|><|im_start|>", "<|im_end|>\n", " <|im_end|> ",
    "<tool_call>\n{\"name\": \"f\", \"arguments\": {}}\n</tool_call>", "<tool_response>\nok\n</tool_response>",
    "<|fim_prefix|>def f():<|fim_suffix|>\n    return 1<|fim_middle|>", "<|vision_start|><|image_pad|><|vision_end|>",
    "<|repo_name|>x<|file_sep|>y", "e\u0301<think>e\u0301", "<|im_end|>\u0301", "e<think>\u0301", "<|endoftext|>e\u0301",
    "<|ENDOFTEXT|>", "<|endoftext|", "|endoftext|>",
    # white space
    "\r\n", "a\r\nb\r\n", "\r\n\r\n", "x   ", "x \n", "x\t \n ", " \n \n", "trailing  ", "\n\n\n", "\u3000x\u3000",
    # emoji: ZWJ sequences, modifiers, flags, keycaps
    "👨‍👩‍👧‍👦", "🧑🏽‍💻", "🏳️‍⚧️", "👩🏿‍🦱 👍🏻", "🇯🇵🇨🇳🇰🇷", "1️⃣2️⃣", "❤️‍🔥", "😀" * 5,
]

# Id lists to decode: lone bytes of a character (U+FFFD), added tokens, a run of single digits.
DECODE_TEXTS = ["é", "中", "😀", "<|im_start|>user\nhi<|im_end|>", "<think>\n\n</think>\n\n", "1234567890"]


def main():
    path, data_dir, out = sys.argv[1], sys.argv[2], sys.argv[3]
    tok = Tokenizer.from_file(path)
    enc = lambda s: tok.encode(s, add_special_tokens=False).ids
    dec = lambda ids: tok.decode(ids, skip_special_tokens=False)
    texts = list(CASES) + QWEN3_CASES
    cases = [{"text": s, "ids": enc(s)} for s in texts]
    for c in cases:
        c["decoded"] = dec(c["ids"])
    invalid = [{"bytes_hex": b.hex(), "ids": enc(b.decode("utf-8", errors="replace"))} for b in INVALID_UTF8]
    decodes = []
    for s in DECODE_TEXTS:
        ids = enc(s)
        decodes.append({"ids": ids, "text": dec(ids)})
        for k in range(1, len(ids)):  # prefixes: may end inside a character
            decodes.append({"ids": ids[:k], "text": dec(ids[:k])})
    single = [i for s in DECODE_TEXTS for i in enc(s)]
    decodes += [{"ids": [i], "text": dec([i])} for i in single]
    tok.encode_special_tokens = True  # special-token strings are plain text: our encode_ordinary
    for c in cases:
        c["ordinary_ids"] = enc(c["text"])
    tok.encode_special_tokens = False
    added = [{"content": t.content, "id": i, "special": t.special} for i, t in sorted(tok.get_added_tokens_decoder().items())]

    # HF's NFC (the file's normalizer) on every input of test/nfc_cases.txt; only disagreements are kept.
    nfc_lines, nfc_differ = 0, []
    for n, line in enumerate(open(os.path.join(HERE, "nfc_cases.txt"), encoding="utf-8"), 1):
        if line.startswith("#") or not line.strip():
            continue
        given, expected = ("".join(chr(int(h, 16)) for h in part.split()) for part in line.split(";"))
        hf = tok.normalizer.normalize_str(given)
        nfc_lines += 1
        if hf != expected:
            nfc_differ.append({"line": n, "hf": " ".join("%X" % ord(c) for c in hf)})

    files = data_file_ids(enc, data_dir)
    golden = {"tokenizers_version": tokenizers.__version__, "tokenizer": os.path.basename(path),
              "vocab_size": tok.get_vocab_size(with_added_tokens=True), "added": added, "cases": cases,
              "invalid_utf8": invalid, "decode": decodes, "nfc_cases": nfc_lines, "nfc_differ": nfc_differ,
              "files": files}
    json.dump(golden, open(out, "w"), ensure_ascii=True, indent=0)
    print("wrote %s (tokenizers %s): %d cases, %d invalid-UTF-8 cases, %d decodes, %d NFC cases (%d differ from "
          "test/nfc_cases.txt), %d files" % (out, tokenizers.__version__, len(cases), len(invalid), len(decodes),
                                             nfc_lines, len(nfc_differ), len(files)))


if __name__ == "__main__":
    main()
