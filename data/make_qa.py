#!/usr/bin/env python3
"""Builds the default QA set from WordNet's glosses: one row per common single-word lemma, asking for
the meaning of its most frequent sense, e.g.
    {"question": "What is the meaning of the noun \"harbor\"?", "answer": "a sheltered port where ..."}
A lemma counts as common when WordNet's sense-tagged corpus saw it (tagsense_cnt > 0 in index.POS).
The split is fixed: a lemma goes to eval when a hash of it falls in 1/20 of the range.

It also writes the same knowledge as pretraining text, data/dictionary/dict_NNN.txt: one line per
(word, phrasing) for EVERY word, train and eval alike, e.g.
    harbor (noun): a sheltered port where ships can take on or discharge cargo
    The noun "harbor" means a sheltered port where ships can take on or discharge cargo.
Each word gets 2 or 3 of five phrasings (picked by crc32, so the output is the same on every machine):
knowledge seen in several phrasings during pretraining is what a later question can extract (Allen-Zhu
& Li, "Physics of Language Models: Part 3.1, Knowledge Storage and Extraction", 2023). The lines are
shuffled by crc32 (a word's phrasings land far apart) and cut into files of about 1 MB, each one
document to the trainer; `.complete` marks a finished directory.

    python3 data/make_qa.py WORDNET_DIR OUT_DIR   # writes OUT_DIR/qa_train.jsonl, qa_eval.jsonl, dictionary/
"""
import json
import os
import shutil
import sys
import zlib

POS = {"noun": "noun", "verb": "verb", "adj": "adjective", "adv": "adverb"}
ABBREVIATION = {"noun": "n.", "verb": "v.", "adjective": "adj.", "adverb": "adv."}
PHRASINGS = (  # {w} word, {p} part of speech, {a} its abbreviation, {an} its article, {g} the gloss
    "{w} ({p}): {g}",
    'The {p} "{w}" means {g}.',
    "{w}, {a} — {g}",
    '"{w}" is {an} {p} meaning {g}.',
    "Definition of the {p} {w}: {g}.",
)
DICTIONARY_FILE_BYTES = 1 << 20  # a file is closed once it reaches this size

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
            yield name, lemma, definition

def dictionary_lines(name, lemma, definition):
    """2 or 3 phrasings of one entry, chosen by crc32 of "pos:lemma"."""
    h = zlib.crc32(("%s:%s" % (name, lemma)).encode())
    fields = {"w": lemma, "p": name, "a": ABBREVIATION[name], "an": "an" if name[0] in "aeiou" else "a", "g": definition}
    count, first = 2 + h % 2, (h // 2) % len(PHRASINGS)
    lines = []
    for i in range(count):
        phrasing = PHRASINGS[(first + i) % len(PHRASINGS)]
        if phrasing.endswith("{g}.") and definition[-1] in ".!?":
            phrasing = phrasing[:-1]  # the gloss already ends a sentence
        lines.append(phrasing.format(**fields))
    return lines

def write_dictionary(entries, out):
    """Every entry's phrasings, shuffled by crc32, in files of ~1 MB under out/dictionary (atomically)."""
    lines = [line for entry in entries for line in dictionary_lines(*entry)]
    lines.sort(key=lambda line: (zlib.crc32(line.encode()), line))
    part, final = os.path.join(out, "dictionary.part"), os.path.join(out, "dictionary")
    shutil.rmtree(part, ignore_errors=True)
    os.makedirs(part)
    files, chunk, size = 0, [], 0
    for i, line in enumerate(lines):
        chunk.append(line + "\n")
        size += len(chunk[-1].encode())
        if size >= DICTIONARY_FILE_BYTES or i + 1 == len(lines):
            with open(os.path.join(part, "dict_%03d.txt" % files), "w", encoding="utf-8") as f:
                f.write("".join(chunk))
            files, chunk, size = files + 1, [], 0
    open(os.path.join(part, ".complete"), "w").close()
    shutil.rmtree(final, ignore_errors=True)
    os.rename(part, final)
    return len(lines), files

def main():
    wn, out = sys.argv[1], sys.argv[2]
    train, evalset, entries = [], [], []
    for name, lemma, definition in rows(wn):
        entries.append((name, lemma, definition))
        row = {"question": 'What is the meaning of the %s "%s"?' % (name, lemma), "answer": definition}
        (evalset if zlib.crc32(row["question"].encode()) % 20 == 0 else train).append(row)
    for name, data in (("qa_train.jsonl", train), ("qa_eval.jsonl", evalset)):
        with open(os.path.join(out, name + ".part"), "w", encoding="utf-8") as f:
            for row in data:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        os.replace(os.path.join(out, name + ".part"), os.path.join(out, name))
    lines, files = write_dictionary(entries, out)
    print("data: dictionary: %d words, %d lines in %d files" % (len(entries), lines, files))

if __name__ == "__main__":
    main()
