// tokenizer.h — text to token ids and back, exactly as Hugging Face `tokenizers` does it, for the
// tokenizer.json files of Llama-3 (byte-level BPE). Knows nothing of datasets, CUDA or the model.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

// Llama-3 tokenizer: pre-tokenizer split by the Llama-3 pattern, byte-level mapping, BPE by merge rank
// (ignore_merges: a piece that is a whole vocabulary entry is one token), added/special tokens matched
// in the text first (leftmost-longest).
class Tokenizer {
  public:
    static Tokenizer load(const std::string& path);

    // Ids for `text` (no BOS added). Special-token strings in the text become their ids.
    std::vector<int32_t> encode(std::string_view text) const;
    // The same, but special-token strings are ordinary text (for user content inside templates).
    std::vector<int32_t> encode_ordinary(std::string_view text) const;
    // Text for ids; byte sequences that are not UTF-8 become U+FFFD. Fails on an unknown id.
    std::string decode(const std::vector<int32_t>& ids) const;

    int32_t special_id(const std::string& content) const;  // fails if the file has no such token
    int32_t vocab_size() const { return int32_t(id_to_bytes_.size()); }  // all ids, specials included
    const std::string& path() const { return path_; }

    // The pre-tokenizer alone: the pieces `text` splits into (exposed for tests).
    std::vector<std::string_view> split(std::string_view text) const;

  private:
    void bpe(std::string_view piece, std::vector<int32_t>& out) const;
    void encode_text(std::string_view text, std::vector<int32_t>& out) const;

    std::string path_;
    std::unordered_map<std::string, int32_t> bytes_to_id_;         // BPE vocabulary, keys in raw bytes
    std::vector<std::string> id_to_bytes_;                          // every id (specials: their content)
    std::unordered_map<uint64_t, std::pair<int32_t, int32_t>> merges_;  // (left<<32|right) -> (rank, merged)
    int32_t byte_id_[256] = {};                                    // id of each single byte
    std::vector<std::pair<std::string, int32_t>> added_;           // added tokens, longest first
    bool added_first_[256] = {};                                   // bytes an added token starts with
    bool ignore_merges_ = false;
    mutable std::unordered_map<std::string, std::vector<int32_t>> cache_;
};
