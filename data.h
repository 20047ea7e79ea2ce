// data.h — text to training batches, exactly as Hugging Face would make them: datasets (plain-text
// corpora and JSONL rows) tokenized by tokenizer.h, label masks (-100 = ignored), packing/padding, a
// deterministic shuffle and per-rank sharding. Knows nothing of CUDA or the model.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "json.h"
#include "tokenizer.h"

// ---------------------------------------------------------------------------------------------- datasets
constexpr int32_t kIgnoreIndex = -100;  // label of a position that takes no loss (HF convention)

// One training row before padding: ids and the labels aligned with them (the loss shifts by one, as
// HF does: position t predicts labels[t+1]).
struct Example {
    std::vector<int32_t> ids, labels;
};

struct DataOptions {
    int seq_len = 1024;            // rows are truncated (counted) to this and padded up to it
    bool train_on_prompt = false;  // loss on every token, not only the answer/completion + EOS
    bool chat_template = false;    // QA/prompt rows in the chat template of `tokens->chat` (Instruct models)
    bool pack = false;             // JSONL rows: fill each sequence with several rows
    const ModelTokens* tokens = nullptr;  // BOS/EOS and the chat template; nullptr: the tokenizer's conventions
};

struct DataStats {
    int64_t documents = 0;         // corpus files or JSONL rows read
    int64_t tokens = 0;            // tokens kept, padding excluded
    int64_t target_tokens = 0;     // tokens that take loss
    int64_t truncated_rows = 0, truncated_tokens = 0;
    int64_t rows_without_targets = 0;  // rows whose answer was cut off entirely by truncation
};

struct Dataset {
    std::string source;
    std::vector<Example> rows;
    DataStats stats;
};

// Loads a dataset: a directory (every non-hidden file, sorted, is a plain-text document), a .jsonl file
// (rows {"text"}, {"question","answer"[,"context"]}, {"prompt","completion"}, {"input_ids"[,"labels"]}),
// a .json file (the same rows as JSON Lines or as one array), or another file (one plain-text document).
// Documents and {"text"} rows are BOS text EOS; QA and prompt rows are BOS prompt answer EOS, or the chat
// template; the ids come from options.tokens. `tok` may be nullptr when every row is {"input_ids"} (text
// then fails, saying to pass a tokenizer); ids are checked against `vocab_size` (the model's; 0: the
// tokenizer's).
Dataset load_dataset(const std::string& path, const Tokenizer* tok, int vocab_size, const DataOptions& options);
Dataset load_dataset(const std::string& path, const Tokenizer& tok, const DataOptions& options);  // the tokenizer's size

// The QA prompt template: "Question: ...\nContext: ...\nAnswer:" (Context line only when present).
std::string qa_prompt(const std::string& question, const std::string& context);

// Moves a deterministic `fraction` of rows (at least one) into the returned eval set.
Dataset split_eval(Dataset& train, double fraction, uint64_t seed);

// ---------------------------------------------------------------------------------------------- batches
// A deterministic random stream (splitmix64), the same on every platform.
struct Rng {
    uint64_t state;
    explicit Rng(uint64_t seed) : state(seed) {}
    uint64_t next();
    uint64_t below(uint64_t n);  // uniform in [0, n)
    float uniform();             // uniform in [0, 1)
};

// The row order of one epoch: a Fisher-Yates shuffle seeded by (seed, epoch), or 0..n-1.
std::vector<int64_t> epoch_order(int64_t n, uint64_t seed, int64_t epoch, bool shuffle);

// B rows of T tokens, padded: pad ids are `pad_id`, pad labels kIgnoreIndex.
struct Batch {
    int B = 0, T = 0;
    std::vector<int32_t> ids, labels;
    int64_t target_tokens = 0;  // labels[b][t] != -100 for t >= 1 (the positions that take loss)
    int real_rows = 0;          // rows that came from the data (the rest are fully masked padding)
};

// Shards an epoch across ranks: rank r takes rows r, r+W, r+2W, ... of the epoch order, so ranks get
// disjoint rows that together cover the data, and every rank gets the same number of micro-batches
// (ceil(ceil(n/W)/B)); missing rows are fully masked, so every rank runs the same collectives.
class Loader {
  public:
    Loader(const Dataset& data, int micro_batch, int seq_len, int rank, int world, uint64_t seed, bool shuffle,
           int32_t pad_id);
    int64_t micro_batches_per_epoch() const { return batches_per_epoch_; }
    // Micro-batch `index` (0-based) of `epoch` for this rank.
    Batch batch(int64_t epoch, int64_t index) const;
    // The dataset rows in that micro-batch (-1 for padding rows); for tests and logs.
    std::vector<int64_t> batch_rows(int64_t epoch, int64_t index) const;

  private:
    const Dataset& data_;
    int B_, T_, rank_, world_;
    uint64_t seed_;
    bool shuffle_;
    int32_t pad_id_;
    int64_t batches_per_epoch_;
    mutable int64_t cached_epoch_ = -1;  // the epoch order last computed
    mutable std::vector<int64_t> order_;
};
