#!/usr/bin/env python3
"""Makes test/golden/tokenizer_ids.json with Hugging Face `tokenizers` (run where it is installed, e.g. a
GPU machine): the ids HF gives for a varied set of texts, and for every file of the default corpus and QA
set a count and FNV-1a hash of its ids. test/test_tokenizer.cpp checks ours against them id for id.

    python3 test/make_golden_tokenizer.py data/tokenizer.json data test/golden/tokenizer_ids.json
"""
import json
import os
import sys
from tokenizers import Tokenizer

CASES = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog. It's a well-known pangram; isn't it?",
    " leading space", "trailing space ", "   three leading", "many     inner      spaces",
    "tabs\tand\t\tmore\ttabs\t", "\tindented\n\t\tcode", "line\nbreak", "windows\r\nline\r\nends\r\n",
    "blank lines\n\n\nbetween\n \n  \nthem", "\r\r\n\n\r", "   ", "\n", " ", "",
    "trailing newline\n", "space before newline \n next", "x  \n\n  y",
    "numbers: 1 12 123 1234 12345 123456 1234567 12345678 123456789 1234567890",
    "pi=3.14159265358979 e=2.71828 -42 +7 1,000,000 1e-10 0x1F 0b1010 007",
    "phone 555-0100, year 2026, 10:45pm, 50% off, $19.99, #1, v2.0.1",
    "contractions: don't won't I'm you're they've we'll he'd it's",
    "SHOUTING: DON'T I'M YOU'RE THEY'VE WE'LL HE'D IT'S 'S 'T",
    "mixed case: Don'T I'M you'Re 'rE 'Ll", "quote 'tis 'twas rock 'n' roll", "the long s: 'ſ and 'ſ", "'ſ", "x'ſ", "'ST'RE'Ve'LL", "'K 'Ꮪ",
    "def f(x):\n    return x ** 2  # square\n\nprint(f(3))\n",
    "int main(void) {\n\tfor (int i = 0; i < 10; ++i) printf(\"%d\\n\", i);\n\treturn 0;\n}\n",
    "<html><body class=\"a-b\">&nbsp;&amp;</body></html>", "a==b && c!=d || e<=f >>= 2 ... ?!",
    "café naïve façade résumé Ångström Zürich São Paulo", "decomposed: cafe\u0301 nai\u0308ve",
    "中文分词测试，这是一个句子。", "日本語のテキストです。カタカナとひらがな", "한국어 문장입니다.",
    "Русский текст, и ещё немного.", "Ελληνικά κείμενα", "עברית מימין לשמאל", "العربية نص",
    "ภาษาไทยไม่มีช่องว่าง", "हिन्दी में लिखा पाठ",
    "emoji 😀 👍🏽 👨‍👩‍👧‍👦 🏳️‍🌈 ❤️ 🇺🇸🇫🇷", "keycap 1️⃣ #️⃣ and zero\u200dwidth\u200bspace",
    "digits: ٠١٢٣٤٥٦٧٨٩ ۱۲۳ १२३४ ১২৩ ０１２３４５ ²³¹ ½ ¾ Ⅻ ⅻ 〇 一二三",
    "quotes “double” ‘single’ «guillemets» „low“ and dashes — – ‒ ― - … ·",
    "unicode spaces:\u00a0nbsp\u2009thin\u3000ideographic\u2028line\u2029para\u0085nel\u000bvt\u000cff",
    "controls \u0001\u0002\u001f\u007f end", "bom \ufeff inside", "private \ue000\uf8ff use",
    "specials: <|begin_of_text|>hi<|eot_id|>", "<|start_header_id|>user<|end_header_id|>\n\nWhat?<|eot_id|>",
    "not special: <|begin_of_text |> <| eot_id|>", "<|reserved_special_token_5|><|end_of_text|>",
    "Question: What is the meaning of the noun \"harbor\"?\nAnswer: a sheltered port",
    "URL https://example.com/path?q=1&r=two#frag and email a.b@c.org",
    "a" * 300, "ab " * 50, "🙂" * 20, "1" * 31, " " * 17 + "x", "\n" * 9 + "x",
]

# Byte strings that are not valid UTF-8: text is decoded as Python does with errors="replace".
INVALID_UTF8 = [b"ab\xffcd", b"\xc3(", b"\xe2\x82", b"x\xf0\x9f\x98", b"\xed\xa0\x80 surrogate", b"\xc0\xaf overlong",
                b"\xf4\x90\x80\x80 too big", b"ok \x80\x80\x80 cont"]

def fnv1a(ids):
    h = 0xcbf29ce484222325
    for i in ids:
        for k in range(4):
            h ^= (i >> (8 * k)) & 0xff
            h = (h * 0x100000001b3) & 0xffffffffffffffff
    return "%016x" % h

def data_file_ids(enc, data_dir):
    """For every default data file (the corpus files, the QA sets): its size, and the count and FNV-1a hash
    of the ids `enc` gives its text."""
    files = []
    corpus = os.path.join(data_dir, "corpus")
    for name in sorted(os.listdir(corpus)) + ["../qa_train.jsonl", "../qa_eval.jsonl"]:
        if not name.endswith((".txt", ".jsonl")):
            continue
        text = open(os.path.join(corpus, name), "rb").read().decode("utf-8")
        ids = enc(text)
        files.append({"file": os.path.normpath(os.path.join("corpus", name)), "bytes": len(text.encode()),
                      "count": len(ids), "fnv1a": fnv1a(ids)})
    return files


def main():
    tok = Tokenizer.from_file(sys.argv[1])
    data_dir, out = sys.argv[2], sys.argv[3]
    enc = lambda s: tok.encode(s, add_special_tokens=False).ids
    cases = [{"text": s, "ids": enc(s)} for s in CASES]
    invalid = [{"bytes_hex": b.hex(), "ids": enc(b.decode("utf-8", errors="replace"))} for b in INVALID_UTF8]
    files = data_file_ids(enc, data_dir)
    json.dump({"cases": cases, "invalid_utf8": invalid, "files": files}, open(out, "w"), ensure_ascii=True, indent=0)
    print("wrote %s: %d cases, %d invalid-UTF-8 cases, %d files" % (out, len(cases), len(invalid), len(files)))

if __name__ == "__main__":
    main()
