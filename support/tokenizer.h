// support/tokenizer.h — text to token ids and back, exactly as Hugging Face `tokenizers` does it, for the three
// BPE families that Llama and Qwen models ship in their tokenizer.json:
//   llama3  byte-level BPE (tiktoken-style; Llama 3): a regex pre-tokenizer splits the text into pieces,
//           each piece's UTF-8 bytes start as one token per byte and are merged by rank;
//   qwen3   the same byte-level BPE after NFC normalization, with Qwen's pattern (Qwen2, Qwen2.5, Qwen3): it
//           differs from Llama 3's only in splitting every digit on its own;
//   llama2  SentencePiece-style BPE (Llama 2, TinyLlama, Mistral 7B v0.1): spaces become "▁" and a "▁"
//           is prepended (a Prepend + Replace normalizer, or a Metaspace pre-tokenizer in newer files),
//           each character starts as its vocabulary token, or as one <0xNN> token per UTF-8 byte when it
//           has none (byte fallback), and is merged by rank.
// In all, added (special) tokens are matched in the raw text first, leftmost-longest, and never split;
// the text between them is normalized and encoded segment by segment. The family is recognised from the
// file's structure; anything else is one error naming the file and what is unsupported.
// Knows nothing of datasets, CUDA or the model.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

struct Json;

// byte-level BPE (tiktoken-style) / SentencePiece-style BPE / NFC + byte-level BPE with single digits
enum class TokenizerFamily { llama3, llama2, qwen3 };

class Tokenizer {
  public:
    static Tokenizer load(const std::string& path);

    // Ids for `text` (no BOS added), as HF's encode(text, add_special_tokens=False). Added-token strings in
    // the text become their ids.
    std::vector<int32_t> encode(std::string_view text) const;
    // The same, but special-token strings are ordinary text (for user content inside templates), as HF
    // encodes with encode_special_tokens=True.
    std::vector<int32_t> encode_ordinary(std::string_view text) const;
    // Text for ids, as HF's decode(ids, skip_special_tokens=False). Bytes that do not form UTF-8 become
    // U+FFFD. Fails on an id outside the vocabulary (HF drops such ids silently).
    std::string decode(const std::vector<int32_t>& ids) const;

    int32_t special_id(const std::string& content) const;  // an added token's id; fails if the file has none
    int32_t token_id(std::string_view token) const;        // an added token or vocabulary entry as the file
                                                           // spells it ("<s>", "▁the", "Ġthe"); -1 if none
    int32_t vocab_size() const { return int32_t(token_.size()); }  // all ids, added tokens included
    TokenizerFamily family() const { return family_; }
    const std::string& path() const { return path_; }

    // The byte-level families' pre-tokenizer pattern alone (Llama 3's or Qwen's): the pieces `text` splits
    // into, without normalization (exposed for tests).
    std::vector<std::string_view> split(std::string_view text) const;

  private:
    struct AddedToken {
        std::string content;  // as matched: the file's content, or its normalized form when `normalized`
        int32_t id = 0;
        bool special = false, normalized = false, lstrip = false, rstrip = false;
    };
    struct AddedSet {
        std::vector<AddedToken> tokens;  // longest first
        bool first[256] = {};            // the bytes a token starts with
    };
    struct Span {
        size_t begin, end;
        int32_t id;  // an added token, or -1 for text
    };
    // One step of the llama2 normalizer or decoder chain (HF's names). prepend: a + s (s not empty);
    // replace: every a becomes b; byte_fallback: runs of <0xNN> tokens become their bytes; fuse: join all
    // tokens; strip: drop up to `start` leading and `stop` trailing a's; metaspace: a becomes " ", or
    // nothing in the first token when `start` (a prepend scheme other than "never").
    struct Step {
        enum Kind { prepend, replace, byte_fallback, fuse, strip, metaspace } kind;
        std::string a, b;
        int start = 0, stop = 0;
    };
    enum class Prepend { never, first, always };  // the Metaspace pre-tokenizer's prepend_scheme

    void load_byte_level(const std::string& path, const Json& file);
    void load_llama2(const std::string& path, const Json& file);
    void index_symbols(const std::string& path, const Json& model);
    void load_merges(const std::string& path, const Json& model);
    void load_added(const std::string& path, const Json& file, std::vector<bool>& seen);
    std::string key_of(const std::string& spelling) const;
    void assign(int64_t id, std::string key, const std::string& name, std::vector<bool>& seen);

    // The text and added-token spans of `s`, leftmost-longest; special tokens stay text unless `specials`.
    std::vector<Span> find_added(std::string_view s, const AddedSet& set, bool specials) const;
    std::vector<int32_t> encode_with(std::string_view text, bool specials) const;
    void encode_segment(std::string_view segment, size_t offset, bool specials, std::vector<int32_t>& out) const;
    std::string normalize(std::string_view text) const;
    void pre_tokenize_llama2(std::string_view text, size_t offset, std::vector<int32_t>& out) const;
    void bpe_words(std::string_view text, std::vector<int32_t>& out) const;
    void bpe_byte_level(std::string_view piece, std::vector<int32_t>& out) const;
    void bpe_llama2(std::string_view piece, std::vector<int32_t>& out) const;
    void merge(std::vector<int32_t>& symbols) const;  // BPE: merge adjacent pairs by rank until none applies
    std::string decode_llama2(const std::vector<int32_t>& ids) const;

    bool byte_level() const { return family_ != TokenizerFamily::llama2; }  // llama3 and qwen3

    std::string path_;
    TokenizerFamily family_ = TokenizerFamily::llama3;
    size_t digits_ = 3;                               // byte-level: the most digits one piece holds (Qwen: 1)
    std::vector<std::string> token_;                  // every id: byte-level its raw bytes (what decoding
                                                      // gives), llama2 the file's spelling
    std::unordered_map<std::string, int32_t> vocab_;  // the model's vocabulary, keyed like token_
    std::unordered_map<uint64_t, std::pair<int32_t, int32_t>> merges_;  // (left<<32|right) -> (rank, merged)
    AddedSet added_;                                  // matched in the raw text
    AddedSet added_normalized_;                       // matched in each normalized segment
    std::unordered_map<std::string, int32_t> added_ids_;  // content -> id of every added token
    bool ignore_merges_ = false;                      // a piece that is a whole vocabulary entry is one token

    int32_t byte_id_[256] = {};                       // byte-level: the token of each byte; llama2: <0xNN> or -1
    std::unordered_map<uint32_t, int32_t> char_id_;   // llama2: the token of each one-character entry
    int32_t unk_id_ = -1;                             // llama2: for a character with no token at all
    bool fuse_unk_ = false;
    std::vector<Step> normalizer_, decoder_;          // llama2
    bool has_decoder_ = true;
    bool metaspace_ = false, metaspace_split_ = true;  // llama2: a Metaspace pre-tokenizer; split before each "▁"
    Prepend metaspace_prepend_ = Prepend::always;
    std::string metaspace_char_ = "\xE2\x96\x81";  // "▁"

    bool words_ = false;                              // llama2: BPE may run word by word (see bpe_words)

    mutable std::unordered_map<std::string, std::vector<int32_t>> cache_;  // piece -> ids
};
