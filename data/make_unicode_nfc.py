#!/usr/bin/env python3
"""Writes support/unicode_nfc.h, the tables of Unicode canonical composition (NFC) that support/nfc.cpp
implements, and test/nfc_cases.txt, NFC test vectors for test/test_tokenizer_qwen3.cpp. Run once; the outputs
are committed.

Which Unicode: Hugging Face `tokenizers` (0.23) normalizes with the Rust crate unicode-normalization-alignments
0.1.12, whose tables are Unicode 9.0.0. Python's unicodedata here is newer (14.0.0, as support/unicode_table.h).
Unicode's stability policy keeps the decompositions and combining classes of assigned characters unchanged
across versions and adds no composition of existing characters, so Unicode 9.0's NFC is Python's restricted to
the characters assigned in 9.0: a later character has combining class 0, no decomposition and composes with
nothing. The set assigned in 9.0 comes from the npm package @unicode/unicode-9.0.0 (its General_Category
Unassigned ranges, read with node):

    npm pack @unicode/unicode-9.0.0@2.0.7 && tar xzf unicode-unicode-9.0.0-2.0.7.tgz
    python3 data/make_unicode_nfc.py package support/unicode_nfc.h test/nfc_cases.txt
"""
import os
import subprocess
import sys
import unicodedata

S_BASE, L_BASE, V_BASE, T_BASE = 0xAC00, 0x1100, 0x1161, 0x11A7
L_COUNT, V_COUNT, T_COUNT = 19, 21, 28
S_COUNT = L_COUNT * V_COUNT * T_COUNT


def unassigned_in_9(package):
    """[(first, last)] of the code points General_Category Unassigned (Cn) in Unicode 9.0."""
    module = os.path.abspath(os.path.join(package, "General_Category", "Unassigned", "ranges.mjs"))
    script = "import r from '%s'; for (const x of r) console.log(x.begin, x.end - 1);" % module
    out = subprocess.run(["node", "--input-type=module", "-e", script], check=True, capture_output=True, text=True)
    ranges = [tuple(int(v) for v in line.split()) for line in out.stdout.splitlines()]
    if len(ranges) < 100:
        sys.exit("error: %s: expected Unicode 9.0's unassigned ranges, got %d" % (module, len(ranges)))
    return ranges


def main():
    package, header_path, cases_path = sys.argv[1:4]
    unassigned = bytearray(0x110000)  # 1: not assigned in Unicode 9.0
    for first, last in unassigned_in_9(package):
        unassigned[first:last + 1] = b"\x01" * (last + 1 - first)
    known = lambda c: not unassigned[c] and not 0xD800 <= c <= 0xDFFF
    assert known(0x1F923) and not known(0x1F97A)  # U+1F923 (9.0) yes, U+1F97A (11.0) no

    ccc, decomposition, composition = {}, {}, {}
    for c in range(0x110000):
        if not known(c) or S_BASE <= c < S_BASE + S_COUNT:  # Hangul syllables are algorithmic
            continue
        ch = chr(c)
        if unicodedata.combining(ch):
            ccc[c] = unicodedata.combining(ch)
        nfd = unicodedata.normalize("NFD", ch)
        if nfd != ch:
            decomposition[c] = [ord(x) for x in nfd]
        mapping = unicodedata.decomposition(ch)
        if mapping and not mapping.startswith("<"):
            pair = [int(x, 16) for x in mapping.split()]
            # a primary composite: its two-character mapping composes back to it (not excluded, not a
            # non-starter decomposition)
            if len(pair) == 2 and unicodedata.normalize("NFC", chr(pair[0]) + chr(pair[1])) == ch:
                composition[(pair[0], pair[1])] = c
    seconds = {b for (_, b) in composition} | set(range(V_BASE, V_BASE + V_COUNT)) | set(range(T_BASE + 1, T_BASE + T_COUNT))

    # Unstable: a code point with a combining class, one NFC changes, or one that composes with the one
    # before it. Text without any is already NFC.
    unstable = sorted(c for c in range(0x110000) if known(c) and
                      (c in ccc or c in seconds or unicodedata.normalize("NFC", chr(c)) != chr(c)))
    assert unstable[0] >= 0x300  # nfc.cpp: every code point below U+0300 is stable
    # nfc.cpp splits the text before each stable code point: its decomposition starts with a starter that
    # composes with nothing before it
    stable = set(range(0x110000)) - set(unstable)
    assert all(decomposition[c][0] not in ccc and decomposition[c][0] not in seconds for c in decomposition if c in stable)
    assert all(len(d) <= 18 for d in decomposition.values())

    def ranges(points, value=lambda c: 0):
        out = []
        for c in points:
            if out and out[-1][1] == c - 1 and out[-1][2] == value(c):
                out[-1][1] = c
            else:
                out.append([c, c, value(c)])
        return out

    pool, entries = [], []
    for c in sorted(decomposition):
        entries.append((c, len(pool), len(decomposition[c])))
        pool += decomposition[c]
    write_header(header_path, ranges(sorted(ccc), ccc.get), ranges(unstable), entries, pool, composition)
    write_cases(cases_path, known, ccc, decomposition, composition)
    print("wrote %s: %d combining classes, %d decompositions, %d compositions, %d unstable code points"
          % (header_path, len(ccc), len(decomposition), len(composition), len(unstable)))


def rows(items, per_line):
    return "".join("    " + " ".join(items[i:i + per_line]) + "\n" for i in range(0, len(items), per_line))


def write_header(path, ccc_ranges, unstable_ranges, entries, pool, composition):
    with open(path, "w") as out:
        out.write("// Generated by data/make_unicode_nfc.py from Python's unicodedata (Unicode %s) restricted to the\n"
                  "// characters assigned in Unicode 9.0.0 (what HF tokenizers' NFC knows). Do not edit.\n"
                  % unicodedata.unidata_version)
        out.write("#pragma once\n#include <cstdint>\n\n")
        out.write("struct NfcRange { uint32_t first, last; uint8_t value; };\n")
        out.write("struct NfcDecomposition { uint32_t cp; uint16_t offset; uint8_t length; };\n")
        out.write("struct NfcComposition { uint64_t pair; uint32_t composite; };\n\n")
        out.write("// Canonical combining classes other than 0: code point ranges sharing one class, sorted.\n")
        out.write("static constexpr NfcRange kNfcCombiningClass[] = {\n")
        out.write(rows(["{0x%X, 0x%X, %d}," % tuple(r) for r in ccc_ranges], 4) + "};\n\n")
        out.write("// Code points that NFC may change or combine with the one before (value unused), sorted ranges.\n")
        out.write("static constexpr NfcRange kNfcUnstable[] = {\n")
        out.write(rows(["{0x%X, 0x%X, 0}," % tuple(r[:2]) for r in unstable_ranges], 4) + "};\n\n")
        out.write("// Full canonical decompositions (Hangul syllables excepted: algorithmic), sorted by code point;\n"
                  "// each is kNfcPool[offset .. offset + length).\n")
        out.write("static constexpr NfcDecomposition kNfcDecomposition[] = {\n")
        out.write(rows(["{0x%X, %d, %d}," % e for e in entries], 4) + "};\n\n")
        out.write("static constexpr uint32_t kNfcPool[] = {\n")
        out.write(rows(["0x%X," % c for c in pool], 10) + "};\n\n")
        out.write("// Primary composites: (first << 32 | second) -> composite, sorted by pair.\n")
        out.write("static constexpr NfcComposition kNfcComposition[] = {\n")
        out.write(rows(["{0x%XULL, 0x%X}," % ((a << 32) | b, c) for (a, b), c in sorted(composition.items())], 3))
        out.write("};\n")


def write_cases(path, known, ccc, decomposition, composition):
    """One case a line: input code points ; expected NFC, in hex. The expected text is Python's NFC, which is
    Unicode 9.0's wherever every character is assigned in 9.0; the characters assigned later are left as they
    are (the last group)."""
    nfc = lambda cps: [ord(x) for x in unicodedata.normalize("NFC", "".join(map(chr, cps)))]
    cases = []
    for c in sorted(decomposition):  # each decomposable character, and its decomposition
        cases += [[c], decomposition[c]]
    for (a, b) in sorted(composition):  # each pair: adjacent, past a lower class, blocked by a higher one
        cases.append([a, b])
        cases.append([a, 0x0334, b] if ccc.get(b, 0) > 1 else [a, 0x0301, b])
        cases.append([a, 0x0345, b])
    for m in sorted(ccc):  # reordering: each combining class between the highest (240) and the lowest (1)
        cases.append([0x78, 0x0345, m, 0x0334])
    cases += [[L_BASE, V_BASE], [L_BASE + 18, V_BASE + 20, T_BASE + 27], [S_BASE, T_BASE], [S_BASE, T_BASE + 1],
              [S_BASE + 1, T_BASE + 1], [L_BASE, V_BASE, 0x0301, T_BASE + 1], [0xD55C, 0xAE00], [L_BASE, L_BASE, V_BASE]]
    assert all(known(c) for case in cases for c in case)
    lines = ["%s ; %s" % (" ".join("%X" % c for c in case), " ".join("%X" % c for c in nfc(case))) for case in cases]
    later = []  # Unicode 10.0+ characters that Python composes or reorders: unchanged in 9.0
    for c in range(0x110000):
        if known(c) or 0xD800 <= c <= 0xDFFF:
            continue
        if unicodedata.combining(chr(c)):
            later.append([0x78, 0x0345, c, 0x0334])
        elif unicodedata.normalize("NFD", chr(c)) != chr(c):
            later.append([ord(x) for x in unicodedata.normalize("NFD", chr(c))])
    for case in later:
        assert nfc(case) != case
        lines.append("%s ; %s" % (" ".join("%X" % c for c in case), " ".join("%X" % c for c in case)))
    with open(path, "w") as out:
        out.write("# Generated by data/make_unicode_nfc.py (Python unicodedata %s, as Unicode 9.0.0). Do not edit.\n"
                  "# input code points ; their NFC, in hex\n" % unicodedata.unidata_version)
        out.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
