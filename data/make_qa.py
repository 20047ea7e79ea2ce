#!/usr/bin/env python3
"""Builds the default QA set from WordNet's glosses: one row per common single-word lemma, asking for
the meaning of its most frequent sense, e.g.
    {"question": "What is the meaning of the noun \"harbor\"?", "answer": "a sheltered port where ..."}
A lemma counts as common when WordNet's sense-tagged corpus saw it (tagsense_cnt > 0 in index.POS).
The split is fixed: a lemma goes to eval when a hash of it falls in 1/20 of the range.

    python3 data/make_qa.py WORDNET_DIR OUT_DIR   # writes OUT_DIR/qa_train.jsonl and qa_eval.jsonl
"""
import json
import os
import sys
import zlib

POS = {"noun": "noun", "verb": "verb", "adj": "adjective", "adv": "adverb"}

def gloss_definition(wn, pos, offset):
    """The definition part of a synset's gloss (before the quoted examples)."""
    with open(os.path.join(wn, "data." + pos), "rb") as f:
        f.seek(offset)
        line = f.readline().decode("utf-8")
    gloss = line.split(" | ", 1)[1].strip()
    definition = gloss.split('; "', 1)[0].split('"', 1)[0].strip().rstrip(";").strip()
    return definition

def rows(wn):
    for pos, name in POS.items():
        for line in open(os.path.join(wn, "index." + pos), encoding="utf-8"):
            if line.startswith(" "):
                continue  # licence header
            f = line.split()
            lemma, synset_cnt, p_cnt = f[0], int(f[2]), int(f[3])
            tagsense_cnt = int(f[5 + p_cnt])
            offsets = f[6 + p_cnt:]
            if tagsense_cnt == 0 or not lemma.isalpha() or len(lemma) < 3 or len(offsets) != synset_cnt:
                continue
            definition = gloss_definition(wn, pos, int(offsets[0]))
            if len(definition) < 8:
                continue
            yield {"question": 'What is the meaning of the %s "%s"?' % (name, lemma), "answer": definition}

def main():
    wn, out = sys.argv[1], sys.argv[2]
    train, evalset = [], []
    for row in rows(wn):
        (evalset if zlib.crc32(row["question"].encode()) % 20 == 0 else train).append(row)
    for name, data in (("qa_train.jsonl", train), ("qa_eval.jsonl", evalset)):
        with open(os.path.join(out, name + ".part"), "w", encoding="utf-8") as f:
            for row in data:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        os.replace(os.path.join(out, name + ".part"), os.path.join(out, name))

if __name__ == "__main__":
    main()
