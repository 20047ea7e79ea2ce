// test/test.h — what the tests share: doctest, temporary files, random text, the GPU skip.
#pragma once
#include <doctest/doctest.h>

#include <cstdint>
#include <string>
#include <vector>

#include "support/common.h"

// A shell command's exit status (-1 when it did not exit) and its stdout and stderr together; its stdin is
// /dev/null unless the command redirects it.
struct Shell {
    int status;
    std::string output;
};
Shell shell(const std::string& command);

// Writes `content` to a fresh file under a per-run temporary directory and returns its path.
std::string temp_file(const std::string& name, const std::string& content);
std::string temp_dir(const std::string& name);  // a fresh empty directory

// Random valid UTF-8 text mixing ASCII, whitespace, Latin, CJK, emoji and other scripts.
std::string random_text(uint64_t seed, size_t code_points);

// Whether `output` holds a warning other than offload's warning about the CPUs a rank may use, which depends
// on the machine the tests run on (threads.h: few_cpus_warning).
bool has_warning(const std::string& output);

// Marks the current test as skipped (counted in the closing line) and says why.
void skip_test(const std::string& why);

// True when a GPU is present; otherwise marks the test skipped. Use: if (!need_gpu()) return;
bool need_gpu();

// The tokenizers data/fetch.sh prepares, each loaded once: data/tokenizer.json (Llama-3, the default),
// data/llama2_tokenizer.json (Llama-2 family), data/qwen3_tokenizer.json (Qwen).
class Tokenizer;
const Tokenizer& default_tokenizer();
const Tokenizer& llama2_tokenizer();
const Tokenizer& qwen3_tokenizer();

// Token-id golden files (test/make_golden_tokenizer*.py): an id list from a JSON array, the FNV-1a hash of
// ids as the scripts write it (each id's 4 little-endian bytes), and the check of every default data
// file's ids against the golden {"file", "count", "fnv1a"} entries; check_golden_texts: a golden file's
// "cases" (encode, encode_ordinary and decode of each text; at least min_cases of them), "decode" (ids to
// text) and "invalid_utf8" (bytes given in hex to ids).
struct Json;
std::vector<int32_t> ids_of(const Json& array);
std::string ids_fnv1a(const std::vector<int32_t>& ids);
void check_golden_files(const Tokenizer& tok, const Json& files);
void check_golden_texts(const Tokenizer& tok, const Json& golden, int min_cases);
