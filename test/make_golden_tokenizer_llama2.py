#!/usr/bin/env python3
"""Makes test/golden/tokenizer_llama2_ids.json with Hugging Face `tokenizers` (run where it is installed, e.g. a
GPU machine; needs only `tokenizers` and the standard library): for the Llama-2-family fixture
data/llama2_tokenizer.json (from data/fetch.sh), the ids HF gives for the Llama-3 golden texts plus the cases
where SentencePiece-style BPE differs (leading, trailing and repeated spaces, newlines first, characters only
byte fallback can encode, literal <s> and </s>), the same texts with special tokens encoded as text, decodes
of chosen id lists, and for every file of the default corpus and QA set a count and FNV-1a hash of its ids.
test/test_tokenizer_llama2.cpp checks ours against them id for id.

    python3 test/make_golden_tokenizer_llama2.py data/llama2_tokenizer.json data test/golden/tokenizer_llama2_ids.json
"""
import json
import os
import sys

import tokenizers
from tokenizers import Tokenizer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_golden_tokenizer import CASES, INVALID_UTF8, data_file_ids, fnv1a  # noqa: E402  (the Llama-3 golden texts)

LLAMA2_CASES = [
    # spaces: the normalizer prepends "▁" to every segment and turns each space into "▁"
    " ", "  ", "   ", " x", "  x", "x ", "x  ", " x ", "a b", "a  b", "a   b", "a \tb", "\u00a0x", " \u3000 x",
    # newlines and tabs first (no token: byte fallback)
    "\n", "\nx", "\n\nx", "\r\nx", "\tx", "\n x", " \nx", "x\n", "x\n\n", "\t\t\n \n",
    # characters that only byte fallback encodes: emoji, rare CJK, control characters, unassigned planes
    "🫠", "🦀🦀", "a🫠b", " 🫠", "𠀋", "龘", "𪚥𠀋龘", "\x00", "\x02\x03", "\x1b[0m", "\x7f", "\u2028", "\ufffd",
    "\U000e0001", "\U0010fffd",
    # literal special tokens in the text: split out first, each remaining segment normalized on its own
    "<s>", "</s>", "<unk>", "<s></s>", "<s>x", "x<s>", "a<s>b", "a <s> b", "a<s> b", "a <s>b", " <s>", "<s> ",
    "<s>\n", "x</s>", "x </s>", "</s><s>", "<s><s><s>", "<<s>>", "<s<s>>", "</s >", "< s>", "<S>",
    "Hello</s>", "[INST] hi [/INST]", "<s>[INST] What is a harbor? [/INST] a sheltered port </s>",
    "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST] Hello </s><s>[INST] Again [/INST]",
    # the visible-space and byte-token spellings as plain text
    "▁", "▁x", "x▁", "a▁b", "▁▁", "<0x41>", "<0xFF>x", "<0x0A>",
    # long runs (merges over many symbols)
    " " * 40, "▁" * 20, "\n" * 5 + "x", "ab" * 100, "🫠" * 8, "a " * 60,
]

# Id lists to decode (spellings, turned into ids with the fixture's vocabulary): the decoder chain's edges.
DECODE_TOKENS = [
    ["▁Hello"], ["▁"], ["▁", "▁"], ["▁▁"], ["▁", "▁Hello"], ["<s>", "▁Hello"], ["▁Hello", "</s>"],
    ["<s>"], ["</s>", "▁x"], ["<unk>"], ["<0x41>"], ["<0xE2>", "<0x82>"], ["<0xE2>", "<0x82>", "<0xAC>"],
    ["<0x41>", "<0xFF>"], ["<0xFF>", "▁x"], ["▁x", "<0xF0>", "<0x9F>"], ["<0x0A>", "▁x"], ["▁", "<0x0A>"],
    ["<0x20>", "x"], ["x", "▁▁", "x"], [],
]


def main():
    path, data_dir, out = sys.argv[1], sys.argv[2], sys.argv[3]
    tok = Tokenizer.from_file(path)
    enc = lambda s: tok.encode(s, add_special_tokens=False).ids
    dec = lambda ids: tok.decode(ids, skip_special_tokens=False)
    texts = list(CASES) + LLAMA2_CASES
    cases = [{"text": s, "ids": enc(s)} for s in texts]
    for c in cases:
        c["decoded"] = dec(c["ids"])
    invalid = [{"bytes_hex": b.hex(), "ids": enc(b.decode("utf-8", errors="replace"))} for b in INVALID_UTF8]
    decodes = []
    for spellings in DECODE_TOKENS:
        ids = [tok.token_to_id(t) for t in spellings]
        if None in ids:
            sys.exit("error: %s has no token %r" % (path, spellings[ids.index(None)]))
        decodes.append({"ids": ids, "text": dec(ids)})
    tok.encode_special_tokens = True  # special-token strings are plain text: our encode_ordinary
    for c in cases:
        c["ordinary_ids"] = enc(c["text"])
    tok.encode_special_tokens = False
    files = data_file_ids(enc, data_dir)
    golden = {"tokenizers_version": tokenizers.__version__, "tokenizer": os.path.basename(path), "cases": cases,
              "invalid_utf8": invalid, "decode": decodes, "files": files}
    json.dump(golden, open(out, "w"), ensure_ascii=True, indent=0)
    print("wrote %s (tokenizers %s): %d cases, %d invalid-UTF-8 cases, %d decodes, %d files"
          % (out, tokenizers.__version__, len(cases), len(invalid), len(decodes), len(files)))


if __name__ == "__main__":
    main()
