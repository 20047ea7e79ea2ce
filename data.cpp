// data.cpp — text to training batches (see data.h). Two parts, in order:
//   Datasets corpora and JSONL rows -> Examples (ids + labels) with the tokenizer (tokenizer.cpp);
//   Batches  epoch order, rank shards, batches.
#include "data.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <sys/stat.h>
#include <dirent.h>

#include "common.h"

// ================================================================================================ datasets

namespace {

bool is_directory(const std::string& path) {
    struct stat st;
    return stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

std::vector<std::string> list_files(const std::string& dir) {
    std::vector<std::string> files;
    DIR* d = opendir(dir.c_str());
    if (!d) fail("cannot read dataset directory " + dir + ": " + std::strerror(errno));
    while (dirent* e = readdir(d)) {
        std::string name = e->d_name;
        if (name.empty() || name[0] == '.') continue;
        std::string path = dir + "/" + name;
        if (!is_directory(path)) files.push_back(path);
    }
    closedir(d);
    std::sort(files.begin(), files.end());
    return files;
}

bool ends_with(const std::string& s, const std::string& suffix) {
    return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

int64_t count_targets(const std::vector<int32_t>& labels) {  // positions 1.. take loss (HF's shift)
    int64_t n = 0;
    for (size_t t = 1; t < labels.size(); ++t) n += labels[t] != kIgnoreIndex;
    return n;
}

// Truncates to seq_len (counted), then adds the row to the dataset.
void add_row(Dataset& data, Example row, int seq_len) {
    if (int64_t(row.ids.size()) > seq_len) {
        data.stats.truncated_rows++;
        data.stats.truncated_tokens += int64_t(row.ids.size()) - seq_len;
        row.ids.resize(size_t(seq_len));
        row.labels.resize(size_t(seq_len));
    }
    int64_t targets = count_targets(row.labels);
    if (targets == 0) data.stats.rows_without_targets++;
    data.stats.tokens += int64_t(row.ids.size());
    data.stats.target_tokens += targets;
    data.rows.push_back(std::move(row));
}

void load_corpus(Dataset& data, const std::vector<std::string>& files, const Tokenizer& tok, int seq_len) {
    int32_t bos = tok.special_id("<|begin_of_text|>"), eos = tok.special_id("<|end_of_text|>");
    std::vector<int32_t> stream;
    for (const std::string& path : files) {
        std::string text = read_file(path);
        if (text.empty()) fail(path + ": empty document");
        stream.push_back(bos);
        std::vector<int32_t> ids = tok.encode(text);
        stream.insert(stream.end(), ids.begin(), ids.end());
        stream.push_back(eos);
        data.stats.documents++;
    }
    for (size_t start = 0; start < stream.size(); start += size_t(seq_len)) {
        size_t end = std::min(stream.size(), start + size_t(seq_len));
        Example row;
        row.ids.assign(stream.begin() + long(start), stream.begin() + long(end));
        row.labels = row.ids;
        add_row(data, std::move(row), seq_len);
    }
}

std::string string_field(const Json& row, const char* key, const std::string& where, bool required) {
    const Json* v = row.find(key);
    if (!v) {
        if (required) fail(where + ": missing field \"" + key + "\"");
        return "";
    }
    if (!v->is_string()) fail(where + ": field \"" + key + "\" must be a string, not " + json_type_name(v->type));
    return v->string;
}

std::vector<int32_t> id_array(const Json& row, const char* key, const std::string& where, int32_t vocab,
                              bool allow_ignore) {
    const Json* v = row.find(key);
    if (v->type != Json::Array) fail(where + ": field \"" + key + "\" must be an array of token ids");
    std::vector<int32_t> ids;
    for (const Json& x : v->array) {
        bool ok = x.is_int() && ((x.integer >= 0 && x.integer < vocab) || (allow_ignore && x.integer == kIgnoreIndex));
        if (!ok)
            fail(where + ": field \"" + key + "\" holds " + (x.is_int() ? std::to_string(x.integer) : json_type_name(x.type)) +
                 ", not a token id in [0, " + std::to_string(vocab) + ")" + (allow_ignore ? " or -100" : ""));
        ids.push_back(int32_t(x.integer));
    }
    return ids;
}

// One JSONL row -> Example. The prompt part takes no loss unless train_on_prompt.
Example row_example(const Json& row, const std::string& where, const Tokenizer& tok, const DataOptions& opt) {
    if (row.type != Json::Object) fail(where + ": a row must be a JSON object, not " + std::string(json_type_name(row.type)));
    bool ids = row.find("input_ids"), text = row.find("text"), qa = row.find("question") || row.find("answer"),
         pc = row.find("prompt") || row.find("completion");
    int forms = ids + text + qa + pc;
    if (forms == 0)
        fail(where + ": unknown row form (expected \"text\", \"question\"+\"answer\", \"prompt\"+\"completion\" or \"input_ids\")");
    if (forms > 1) fail(where + ": the row mixes fields of different forms (text, question/answer, prompt/completion, input_ids)");
    int32_t bos = tok.special_id("<|begin_of_text|>");
    Example ex;
    if (ids) {
        ex.ids = id_array(row, "input_ids", where, tok.vocab_size(), false);
        if (ex.ids.empty()) fail(where + ": field \"input_ids\" is empty");
        ex.labels = row.find("labels") ? id_array(row, "labels", where, tok.vocab_size(), true) : ex.ids;
        if (ex.labels.size() != ex.ids.size())
            fail(where + ": \"labels\" has " + std::to_string(ex.labels.size()) + " entries but \"input_ids\" has " +
                 std::to_string(ex.ids.size()));
        return ex;
    }
    auto nonempty = [&](const std::string& value, const char* key) {
        if (tok.encode_ordinary(value).empty()) fail(where + ": field \"" + std::string(key) + "\" tokenizes to nothing");
        return value;
    };
    if (text) {
        std::vector<int32_t> body = tok.encode(nonempty(string_field(row, "text", where, true), "text"));
        ex.ids.push_back(bos);
        ex.ids.insert(ex.ids.end(), body.begin(), body.end());
        ex.ids.push_back(tok.special_id("<|end_of_text|>"));
        ex.labels = ex.ids;
        return ex;
    }
    std::string user, answer;
    if (qa) {
        std::string q = nonempty(string_field(row, "question", where, true), "question");
        std::string c = string_field(row, "context", where, false);
        answer = nonempty(string_field(row, "answer", where, true), "answer");
        user = opt.chat_template ? "Question: " + q + (c.empty() ? "" : "\nContext: " + c) : qa_prompt(q, c);
        if (!opt.chat_template) answer = " " + answer;
    } else {
        user = nonempty(string_field(row, "prompt", where, true), "prompt");
        answer = nonempty(string_field(row, "completion", where, true), "completion");
    }
    std::vector<int32_t> prompt{bos}, completion;
    auto append = [](std::vector<int32_t>& to, const std::vector<int32_t>& ids) { to.insert(to.end(), ids.begin(), ids.end()); };
    if (opt.chat_template) {  // <|start_header_id|>user<|end_header_id|>\n\nUSER<|eot_id|><|start_header_id|>assistant...
        auto trim = [](const std::string& s) {
            size_t b = s.find_first_not_of(" \t\r\n"), e = s.find_last_not_of(" \t\r\n");
            return b == std::string::npos ? std::string() : s.substr(b, e - b + 1);
        };
        int32_t start = tok.special_id("<|start_header_id|>"), end = tok.special_id("<|end_header_id|>"),
                eot = tok.special_id("<|eot_id|>");
        prompt.push_back(start), append(prompt, tok.encode_ordinary("user")), prompt.push_back(end);
        append(prompt, tok.encode_ordinary("\n\n" + trim(user)));
        prompt.push_back(eot), prompt.push_back(start), append(prompt, tok.encode_ordinary("assistant"));
        prompt.push_back(end), append(prompt, tok.encode_ordinary("\n\n"));
        append(completion, tok.encode_ordinary(trim(answer)));
        completion.push_back(eot);
    } else {
        append(prompt, tok.encode_ordinary(user));
        append(completion, tok.encode_ordinary(answer));
        completion.push_back(tok.special_id("<|end_of_text|>"));
    }
    ex.ids = prompt;
    append(ex.ids, completion);
    ex.labels.assign(prompt.size(), kIgnoreIndex);
    if (opt.train_on_prompt) ex.labels = prompt;
    append(ex.labels, completion);
    return ex;
}

// JSON Lines (one row object per line), or a .json file holding one array of row objects.
void load_jsonl(Dataset& data, const std::string& path, const Tokenizer& tok, const DataOptions& opt) {
    std::string text = read_file(path);
    std::vector<Example> rows;
    size_t first = text.find_first_not_of(" \t\r\n");
    if (ends_with(path, ".json") && first != std::string::npos && text[first] == '[') {
        Json array = parse_json(text, path);
        for (size_t i = 0; i < array.array.size(); ++i, data.stats.documents++)
            rows.push_back(row_example(array.array[i], path + ": row " + std::to_string(i + 1), tok, opt));
        text.clear();
    }
    size_t line_start = 0;
    for (int line = 1; line_start < text.size(); ++line) {
        size_t end = text.find('\n', line_start);
        if (end == std::string::npos) end = text.size();
        std::string_view s(text.data() + line_start, end - line_start);
        line_start = end + 1;
        if (s.find_first_not_of(" \t\r") == std::string_view::npos) continue;  // blank line
        std::string where = path + ":" + std::to_string(line);
        rows.push_back(row_example(parse_json(s, path, line), where, tok, opt));
        data.stats.documents++;
    }
    if (!opt.pack) {
        for (Example& row : rows) add_row(data, std::move(row), opt.seq_len);
        return;
    }
    Example packed;  // greedy: append rows while they fit; a row never straddles two sequences
    for (Example& row : rows) {
        if (!packed.ids.empty() && packed.ids.size() + row.ids.size() > size_t(opt.seq_len))
            add_row(data, std::move(packed), opt.seq_len), packed = Example();
        packed.ids.insert(packed.ids.end(), row.ids.begin(), row.ids.end());
        packed.labels.insert(packed.labels.end(), row.labels.begin(), row.labels.end());
    }
    if (!packed.ids.empty()) add_row(data, std::move(packed), opt.seq_len);
}

}  // namespace

std::string qa_prompt(const std::string& question, const std::string& context) {
    return "Question: " + question + "\n" + (context.empty() ? "" : "Context: " + context + "\n") + "Answer:";
}

Dataset load_dataset(const std::string& path, const Tokenizer& tok, const DataOptions& options) {
    if (options.seq_len < 2) fail("sequence length must be at least 2 (--seq)");
    Dataset data;
    data.source = path;
    struct stat st;
    if (stat(path.c_str(), &st) != 0) fail("cannot read dataset " + path + ": " + std::strerror(errno));
    if (S_ISDIR(st.st_mode)) {
        std::vector<std::string> files = list_files(path);
        if (files.empty()) fail("dataset directory " + path + " has no files");
        load_corpus(data, files, tok, options.seq_len);
    } else if (ends_with(path, ".jsonl") || ends_with(path, ".json")) {
        load_jsonl(data, path, tok, options);
    } else {
        load_corpus(data, {path}, tok, options.seq_len);
    }
    if (data.rows.empty()) fail("dataset " + path + " is empty");
    if (data.stats.target_tokens == 0) fail("dataset " + path + " has no tokens that take loss (all labels are -100)");
    return data;
}

Dataset split_eval(Dataset& train, double fraction, uint64_t seed) {
    int64_t n = int64_t(train.rows.size());
    if (!(fraction > 0 && fraction < 1)) fail("eval fraction must be in (0, 1) (--eval-fraction)");
    int64_t k = std::max<int64_t>(1, int64_t(std::llround(fraction * double(n))));
    if (k >= n) fail("dataset " + train.source + " has too few rows (" + std::to_string(n) + ") to split off an eval set");
    std::vector<int64_t> order = epoch_order(n, seed ^ 0x5EED5EED5EED5EEDull, 0, true);
    std::vector<bool> is_eval(size_t(n), false);
    for (int64_t i = 0; i < k; ++i) is_eval[size_t(order[size_t(i)])] = true;
    Dataset eval, rest;
    eval.source = train.source + " (eval split)";
    rest.source = train.source;
    rest.stats = eval.stats = DataStats();
    for (int64_t i = 0; i < n; ++i) {
        Dataset& to = is_eval[size_t(i)] ? eval : rest;
        to.stats.tokens += int64_t(train.rows[size_t(i)].ids.size());
        to.stats.target_tokens += count_targets(train.rows[size_t(i)].labels);
        to.rows.push_back(std::move(train.rows[size_t(i)]));
    }
    rest.stats.documents = train.stats.documents;  // truncation counts stay with the training set
    rest.stats.truncated_rows = train.stats.truncated_rows, rest.stats.truncated_tokens = train.stats.truncated_tokens;
    rest.stats.rows_without_targets = train.stats.rows_without_targets;
    train = std::move(rest);
    return eval;
}

// ================================================================================================ batches

uint64_t Rng::next() {
    uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
uint64_t Rng::below(uint64_t n) { return uint64_t((unsigned __int128)next() * n >> 64); }
float Rng::uniform() { return float(next() >> 40) * (1.0f / 16777216.0f); }

std::vector<int64_t> epoch_order(int64_t n, uint64_t seed, int64_t epoch, bool shuffle) {
    std::vector<int64_t> order(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) order[size_t(i)] = i;
    if (!shuffle) return order;
    Rng rng(seed ^ (0xD1B54A32D192ED03ull * uint64_t(epoch + 1)));
    for (int64_t i = n - 1; i > 0; --i) std::swap(order[size_t(i)], order[size_t(rng.below(uint64_t(i + 1)))]);
    return order;
}

Loader::Loader(const Dataset& data, int micro_batch, int seq_len, int rank, int world, uint64_t seed, bool shuffle,
               int32_t pad_id)
    : data_(data), B_(micro_batch), T_(seq_len), rank_(rank), world_(world), seed_(seed), shuffle_(shuffle), pad_id_(pad_id) {
    if (micro_batch < 1) fail("micro-batch size must be at least 1 (--micro-batch)");
    if (world < 1 || rank < 0 || rank >= world) fail("rank " + std::to_string(rank) + " is outside a world of " + std::to_string(world));
    int64_t n = int64_t(data.rows.size());
    if (n == 0) fail("dataset " + data.source + " is empty");
    int64_t per_rank = (n + world - 1) / world;
    batches_per_epoch_ = (per_rank + micro_batch - 1) / micro_batch;
}

std::vector<int64_t> Loader::batch_rows(int64_t epoch, int64_t index) const {
    if (epoch != cached_epoch_) order_ = epoch_order(int64_t(data_.rows.size()), seed_, epoch, shuffle_), cached_epoch_ = epoch;
    std::vector<int64_t> rows(size_t(B_), -1);
    for (int b = 0; b < B_; ++b) {
        int64_t pos = rank_ + (index * B_ + b) * int64_t(world_);  // this rank's j-th row is order[rank + j*W]
        if (index >= 0 && index < batches_per_epoch_ && pos < int64_t(order_.size())) rows[size_t(b)] = order_[size_t(pos)];
    }
    return rows;
}

Batch Loader::batch(int64_t epoch, int64_t index) const {
    Batch batch;
    batch.B = B_, batch.T = T_;
    batch.ids.assign(size_t(B_) * size_t(T_), pad_id_);
    batch.labels.assign(size_t(B_) * size_t(T_), kIgnoreIndex);
    std::vector<int64_t> rows = batch_rows(epoch, index);
    for (int b = 0; b < B_; ++b) {
        if (rows[size_t(b)] < 0) continue;
        const Example& ex = data_.rows[size_t(rows[size_t(b)])];
        size_t len = std::min(ex.ids.size(), size_t(T_));
        std::copy(ex.ids.begin(), ex.ids.begin() + long(len), batch.ids.begin() + long(size_t(b) * size_t(T_)));
        std::copy(ex.labels.begin(), ex.labels.begin() + long(len), batch.labels.begin() + long(size_t(b) * size_t(T_)));
        batch.real_rows++;
        for (size_t t = 1; t < len; ++t) batch.target_tokens += ex.labels[t] != kIgnoreIndex;
    }
    return batch;
}
