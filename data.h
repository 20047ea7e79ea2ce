// data.h — text to training batches, exactly as Hugging Face would make them: the model's special tokens
// (from its config, generation and tokenizer files), datasets (plain-text corpora and JSON rows of the usual
// forms, recognised by content) tokenized by tokenizer.h, templates (chat templates: support/chat_template.h),
// label masks (-100 = ignored), packing with document boundaries, a deterministic shuffle and per-rank
// sharding. Knows nothing of CUDA or the model.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "support/chat_template.h"
#include "support/json.h"
#include "support/tokenizer.h"

// ---------------------------------------------------------------------------------------------- model tokens
// The ids a dataset and generation need, from the model's files.
struct ModelTokens {
    int32_t bos = -1;                                 // begins each document and row; -1: the family adds none (Qwen)
    std::vector<int32_t> eos;                         // eos[0] ends documents and rows; all of them stop generation
    int32_t pad = -1;                                 // pad_token if any, else eos[0]
    ChatTemplate chat;                                // the model's chat template (model_chat_template)
    std::string source;                               // which files they came from (for messages)
};

// Reads, later files overriding earlier ones as HF's loaders do: model_dir/config.json (bos_token_id,
// eos_token_id: an id or a list, pad_token_id), generation_config.json (the same keys; its eos list is the
// one generation stops on), tokenizer_config.json (bos_token, eos_token, pad_token: a string or
// {"content": ...}, looked up in `tok`: what HF's tokenizer adds to rows). Missing files are skipped;
// model_dir "" gives the tokenizer's own conventions (Llama 3: <|begin_of_text|> <|end_of_text|>;
// Llama 2: <s> </s>). Fails on an id outside the tokenizer or a token it lacks, naming the file and key.
// The chat template is the directory's (support/chat_template.h); one we cannot render fails only when used.
ModelTokens model_tokens(const Tokenizer& tok, const std::string& model_dir);

// Fails, naming both files and both sizes, when the tokenizer has ids the model's embedding lacks.
void check_vocab(const Tokenizer& tok, int model_vocab, const std::string& tokenizer_path, const std::string& config_path);
// Fails unless BOS, every EOS and pad are rows of the model's embedding (vocab_size `model_vocab`): the
// ids the data puts around rows and after them. Tokens from a tokenizer pass check_vocab already; this
// catches ids taken from a config.json alone (pre-tokenized data), defaults included.
void check_model_tokens(const ModelTokens& t, int model_vocab, const std::string& config_path);

// ---------------------------------------------------------------------------------------------- datasets
// Packing with document boundaries. A dataset is a list of rows (Examples, each at most seq_len tokens);
// its `sequences` say which rows share each sequence of seq_len tokens that a batch row holds:
//   JSONL rows   best-fit packing (default): each row, in order, goes into the open sequence with the least
//                room that still fits it (the earliest of equals), else into a new one; a row is never split,
//                and rows keep their insertion order within a sequence. pack = false: one row per sequence.
//   corpora      each file is one document, BOS text EOS, in one long stream cut into seq_len chunks; a chunk
//                is a row and a sequence, and records where documents begin inside it (doc_starts); a
//                document that continues into the next chunk restarts its positions at 0 there.
// Every row, and every document inside a row, is a document of its batch row: its tokens attend only to
// keys of the same document (Batch::doc_start), its RoPE positions count from 0 (Batch::positions), and
// the label of its first token is -100 when it does not start the row, so no token predicts the next
// document. Padding is a document of its own after the real tokens. The loss and gradients of a packed
// batch therefore equal those of the same rows unpacked (each row's position 0 never takes loss).
// Packing runs after loading and again on both parts of an eval split (pack_sequences).
constexpr int32_t kIgnoreIndex = -100;  // label of a position that takes no loss (HF convention)

// One training row before padding: ids and the labels aligned with them (the loss shifts by one, as
// HF does: position t predicts labels[t+1]).
struct Example {
    std::vector<int32_t> ids, labels;
    std::vector<int32_t> doc_starts;  // offsets where a further document begins (0 is implied, not stored);
                                      // labels there are already -100
};

struct DataOptions {
    int seq_len = 1024;            // rows are truncated (counted) to this; sequences are this long
    bool train_on_prompt = false;  // loss on every token, not only the answers (and their end tokens)
    bool chat_template = false;    // QA/prompt/Alpaca rows as a user turn and an assistant turn in the model's
                                   // chat template `tokens->chat` (Instruct models); chat rows always are
    bool pack = true;              // JSONL rows: best-fit packing; false (--no-pack): one row per sequence
    const ModelTokens* tokens = nullptr;  // BOS/EOS and the chat template; nullptr: the tokenizer's conventions
    bool progress = false;         // print progress lines while tokenizing a large dataset (rank 0)
};

struct DataStats {
    int64_t documents = 0;         // corpus files or JSONL rows read
    int64_t tokens = 0;            // tokens kept, padding excluded
    int64_t target_tokens = 0;     // tokens that take loss (exactly what the batches of an epoch count)
    int64_t truncated_rows = 0, truncated_tokens = 0;
    int64_t rows_without_targets = 0;  // rows whose answer was cut off entirely by truncation
    int64_t sequences = 0;         // sequences of seq_len tokens the rows are packed into
    int64_t padding_tokens = 0;    // sequences * seq_len - tokens
    std::vector<std::string> formats;      // the row forms read ("Alpaca", "chat messages in the Llama-2 template")
    std::map<std::string, int64_t> dropped;  // rows read but not trained on, by reason (WikiQA's label 0)
};

struct Dataset {
    std::string source;
    bool corpus = false;                         // plain-text documents cut into chunks (rows are the chunks)
    int seq_len = 0;
    bool pack = true;                            // how pack_sequences fills `sequences` (DataOptions::pack)
    std::vector<Example> rows;                   // truncated to seq_len
    std::vector<std::vector<int64_t>> sequences;  // the rows in each sequence, in order
    DataStats stats;
};

// Loads a dataset. Its format is decided by content, never by the file name: a file (a regular one: a FIFO,
// device or socket is refused before it is opened) must be UTF-8 text (a NUL byte or ill-formed UTF-8 is one
// error); it holds JSON rows when its first non-blank line is a JSON object (JSON Lines) or the whole file is
// a JSON array of objects, and is one plain-text document otherwise (a .json/.jsonl name only insists on
// JSON). A directory's non-hidden files, sorted, are all JSON (their rows, file by file) or all plain text (a
// corpus of documents). Row forms, by their fields (a row has one form's fields; other fields are not read,
// but fields of two forms are an error, except Alpaca's rendered "text" and a "prompt" beside "messages"):
//   {"input_ids"[,"labels","attention_mask"]} pre-tokenized, -100 = no loss; attention_mask 0 = padding, dropped
//   {"messages": [{"role","content"},...]}    chat (TRL/HF): the model's chat template, loss on assistant turns
//   {"prompt","completion"}                   TRL prompt/completion: strings, or lists of messages
//                                             (conversational: the chat template, loss on the completion's
//                                             assistant turns)
//   {"instruction"[,"input"],"output"}        Alpaca, in the Stanford Alpaca prompt
//   {"question","context","answers":{"text":[...]}}  SQuAD as `datasets` exports it: the first answer
//   {"question","answer"|"sentence","label"}  WikiQA: label 1 rows are answers, label 0 rows are dropped
//   {"question","answer"[,"context"]}         QA, "Question: ...\nContext: ...\nAnswer: ..."
//   {"text"}                                  BOS text EOS, every token takes loss
// Documents and {"text"} rows are BOS text EOS; prompt/answer rows BOS prompt answer EOS (answer and EOS
// take the loss), or with options.chat_template a user and an assistant turn of the chat template; the ids
// come from options.tokens. `tok` may be nullptr when every row is {"input_ids"} (text then fails, saying to
// pass a tokenizer); ids are checked against `vocab_size` (the model's; 0: the tokenizer's).
Dataset load_dataset(const std::string& path, const Tokenizer* tok, int vocab_size, const DataOptions& options);
Dataset load_dataset(const std::string& path, const Tokenizer& tok, const DataOptions& options);  // the tokenizer's size

// The paths of a comma-separated --data (or --eval-data) value; fails naming `flag` on an empty value or
// entry ("a.jsonl," or "a,,b").
std::vector<std::string> data_paths(const std::string& list, const std::string& flag);

// A conversation in the chat template `t`: its ids as HF's apply_chat_template(messages, tokenize=True,
// add_generation_prompt) gives them, and labels: the tokens of the assistant turns after the first `skip`
// (every token with train_on_prompt), -100 elsewhere. Fails naming `where` on a conversation the template
// refuses and on a template token the tokenizer lacks.
Example chat_example(const Tokenizer& tok, const ChatTemplate& t, const std::vector<ChatMessage>& messages,
                     bool add_generation_prompt, bool train_on_prompt, const std::string& where = "the conversation",
                     size_t skip = 0);

// A prompt to generate from: BOS + the text (as HF's tokenizer(prompt)), or with `chat` the prompt as one
// user turn in the model's chat template with the generation prompt (apply_chat_template(...,
// add_generation_prompt=True)).
std::vector<int32_t> prompt_ids(const Tokenizer& tok, const ModelTokens& mt, const std::string& prompt, bool chat);

// The QA prompt template: "Question: ...\nContext: ...\nAnswer:" (Context line only when present).
std::string qa_prompt(const std::string& question, const std::string& context);

// Appends `more`'s rows to `into` (several --data paths make one dataset) and packs the whole again.
void append_dataset(Dataset& into, Dataset&& more);

// Moves a deterministic `fraction` of rows (at least one) into the returned eval set; packs both parts again.
Dataset split_eval(Dataset& train, double fraction, uint64_t seed);

// Fills data.sequences from data.rows (best-fit when data.pack and not a corpus, else one row per sequence)
// and the sequence and padding counts.
void pack_sequences(Dataset& data);

// One line for the log, e.g. "data: train data/qa_train.jsonl (question/answer): 17,890 rows in 491 sequences
// of 1024 tokens, 1.6% padding, 530,000 tokens (120,000 take loss), 0 rows truncated (0 tokens cut)", and the
// rows dropped by reason.
std::string data_summary(const std::string& role, const Dataset& data);

// ---------------------------------------------------------------------------------------------- batches
// A deterministic random stream (splitmix64), the same on every platform.
struct Rng {
    uint64_t state;
    explicit Rng(uint64_t seed) : state(seed) {}
    uint64_t next();
    uint64_t below(uint64_t n);  // uniform in [0, n)
    float uniform();             // uniform in [0, 1)
};

// The order of n sequences in one epoch: a Fisher-Yates shuffle seeded by (seed, epoch), or 0..n-1.
std::vector<int64_t> epoch_order(int64_t n, uint64_t seed, int64_t epoch, bool shuffle);

// B rows of T tokens: row b holds one sequence (its rows one after another), then padding. Each [B*T], row-major.
struct Batch {
    int B = 0, T = 0;
    std::vector<int32_t> ids, labels;  // padding: pad_id, kIgnoreIndex
    std::vector<int32_t> positions;    // RoPE position: 0 at each document's first token, counting up within it
    std::vector<int32_t> doc_start;    // row position where the token's document begins: token t attends to
                                       // keys doc_start[t]..t (padding is one document after the real tokens)
    int64_t target_tokens = 0;  // labels[b][t] != -100 for t >= 1 (the positions that take loss)
    int64_t tokens = 0;         // real (non-padding) tokens
    int real_rows = 0;          // batch rows that hold a sequence (the rest are fully masked padding)
    int64_t examples = 0;       // dataset rows packed into those sequences (the samples of samples/s)
};

// Shards an epoch of sequences across ranks: rank r takes sequences r, r+W, r+2W, ... of the epoch order,
// so ranks get disjoint sequences that together cover the data, and every rank gets the same number of
// micro-batches (ceil(ceil(n/W)/B)); missing sequences are fully masked, so every rank runs the same
// collectives.
class Loader {
  public:
    // seq_len must be at least the dataset's (the length its sequences were packed to).
    Loader(const Dataset& data, int micro_batch, int seq_len, int rank, int world, uint64_t seed, bool shuffle,
           int32_t pad_id);
    int64_t micro_batches_per_epoch() const { return batches_per_epoch_; }
    // Micro-batch `index` (0-based) of `epoch` for this rank.
    Batch batch(int64_t epoch, int64_t index) const;
    // The dataset's sequences in that micro-batch (-1 for padding rows); for tests and logs.
    std::vector<int64_t> batch_sequences(int64_t epoch, int64_t index) const;

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
