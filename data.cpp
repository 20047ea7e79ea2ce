// data.cpp — text to training batches (see data.h). Three parts, in order:
//   Datasets corpora and JSONL rows -> Examples (ids + labels) with the tokenizer (support/tokenizer.cpp), in the
//            model's templates;
//   Packing  rows -> sequences (best fit), the eval split, the summary line;
//   Batches  epoch order, rank shards, batches with positions and document starts.
#include "data.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <set>
#include <sys/stat.h>
#include <dirent.h>
#include <unistd.h>

#include "support/common.h"
#include "support/report.h"

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
        while (!row.doc_starts.empty() && row.doc_starts.back() >= seq_len) row.doc_starts.pop_back();
    }
    int64_t targets = count_targets(row.labels);
    if (targets == 0) data.stats.rows_without_targets++;
    data.stats.tokens += int64_t(row.ids.size());
    data.stats.target_tokens += targets;
    data.rows.push_back(std::move(row));
}

const std::string kNeedsTokenizer = "needs a tokenizer (pass --tokenizer, or use a model directory with tokenizer.json)";

void load_corpus(Dataset& data, const std::vector<std::string>& files, const Tokenizer* tok, const ModelTokens* mt,
                 int seq_len, bool progress) {
    if (!tok) fail("dataset " + data.source + " is plain text: it " + kNeedsTokenizer);
    data.corpus = true;
    std::vector<int32_t> stream;
    std::vector<size_t> starts;  // where each document begins in the stream
    Progress shown("tokenizing " + data.source, double(files.size()), Progress::Units::Items, progress);
    for (const std::string& path : files) {
        shown.update(double(data.stats.documents));
        std::string text = read_file(path);
        if (text.empty()) fail(path + ": empty document");
        starts.push_back(stream.size());
        stream.push_back(mt->bos);
        std::vector<int32_t> ids = tok->encode(text);
        stream.insert(stream.end(), ids.begin(), ids.end());
        stream.push_back(mt->eos[0]);
        data.stats.documents++;
    }
    shown.finish();
    size_t next_doc = 0;
    for (size_t start = 0; start < stream.size(); start += size_t(seq_len)) {
        size_t end = std::min(stream.size(), start + size_t(seq_len));
        Example row;
        row.ids.assign(stream.begin() + long(start), stream.begin() + long(end));
        row.labels = row.ids;
        for (; next_doc < starts.size() && starts[next_doc] < end; ++next_doc) {
            if (starts[next_doc] == start) continue;  // position 0: the row's first document
            int32_t at = int32_t(starts[next_doc] - start);
            row.doc_starts.push_back(at);
            row.labels[size_t(at)] = kIgnoreIndex;  // the previous document does not predict this one
        }
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

// Python's str.strip(), which chat templates apply to contents: Unicode white space and \x1c-\x1f.
std::string strip(const std::string& s) {
    auto space = [](uint32_t cp) {
        return (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x20) || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
               (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
    };
    size_t begin = 0, end = s.size(), n, bad;
    uint32_t cp;
    while (begin < end && (n = utf8_decode(s, begin, cp, bad)) && space(cp)) begin += n;
    while (end > begin) {
        size_t j = end - 1;
        while (j > begin && (static_cast<unsigned char>(s[j]) & 0xC0) == 0x80) --j;
        if (!(n = utf8_decode(s, j, cp, bad)) || !space(cp)) break;
        end = j;
    }
    return s.substr(begin, end - begin);
}

// A piece of a rendered template: a special token (id >= 0) or text, which is encoded as ordinary text
// (special-token strings in user content stay text).
struct Part {
    int32_t id = -1;
    std::string text;
};
Part token(int32_t id) { return {id, ""}; }
Part text(std::string s) { return {-1, std::move(s)}; }

int32_t template_token(const Tokenizer& tok, const char* name, const char* chat) {
    int32_t id = tok.token_id(name);
    if (id < 0) fail(std::string("the ") + chat + " chat template needs the token " + name + ", which " + tok.path() + " lacks");
    return id;
}

// ids and labels of a rendered template, prompt then answer. Text parts that touch are encoded as one
// string, as HF tokenizes a rendered template (Llama 2's normalizer puts a "▁" only before the first); the
// loss starts after as many tokens of that string as its prompt part alone has (TRL's rule).
Example render(const Tokenizer& tok, const std::vector<Part>& prompt, const std::vector<Part>& answer, bool train_on_prompt) {
    std::vector<Part> parts = prompt;
    parts.insert(parts.end(), answer.begin(), answer.end());
    Example ex;
    for (size_t i = 0; i < parts.size();) {
        if (parts[i].id >= 0) {
            ex.ids.push_back(parts[i].id);
            ex.labels.push_back(i >= prompt.size() || train_on_prompt ? parts[i].id : kIgnoreIndex);
            ++i;
            continue;
        }
        std::string run, prompt_text;  // the run's text, and its part from the prompt
        for (; i < parts.size() && parts[i].id < 0; ++i) {
            run += parts[i].text;
            if (i < prompt.size()) prompt_text = run;
        }
        std::vector<int32_t> ids = tok.encode_ordinary(run);
        size_t masked = train_on_prompt ? 0 : std::min(ids.size(), tok.encode_ordinary(prompt_text).size());
        for (size_t k = 0; k < ids.size(); ++k) ex.ids.push_back(ids[k]), ex.labels.push_back(k < masked ? kIgnoreIndex : ids[k]);
    }
    return ex;
}

// The prompt half of one exchange in the chat template (below): everything up to the answer.
std::vector<Part> chat_prompt(const Tokenizer& tok, const ModelTokens& mt, const std::string& user) {
    if (mt.chat == TokenizerFamily::llama2) return {token(mt.bos), text("[INST] " + strip(user) + " [/INST]")};
    int32_t start = template_token(tok, "<|start_header_id|>", "Llama-3"),
            end = template_token(tok, "<|end_header_id|>", "Llama-3"), eot = template_token(tok, "<|eot_id|>", "Llama-3");
    return {token(mt.bos), token(start), text("user"), token(end), text("\n\n" + strip(user)), token(eot), token(start), text("assistant"),
            token(end), text("\n\n")};
}

// One exchange in the model family's chat template (the Instruct models' tokenizer_config.json):
//   llama3  <|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n{user}<|eot_id|>
//           <|start_header_id|>assistant<|end_header_id|>\n\n{answer}<|eot_id|>
//   llama2  <s>[INST] {user} [/INST] {answer} </s>
// with user and answer stripped of surrounding white space; the answer part takes the loss.
Example chat_example(const Tokenizer& tok, const ModelTokens& mt, const std::string& user, const std::string& answer,
                     bool train_on_prompt) {
    if (mt.chat == TokenizerFamily::llama2)
        return render(tok, chat_prompt(tok, mt, user), {text(" " + strip(answer) + " "), token(mt.eos[0])}, train_on_prompt);
    std::vector<Part> prompt = chat_prompt(tok, mt, user);  // names a missing header token before <|eot_id|>
    return render(tok, prompt, {text(strip(answer)), token(template_token(tok, "<|eot_id|>", "Llama-3"))}, train_on_prompt);
}

// One JSONL row -> Example. The prompt part takes no loss unless train_on_prompt.
Example row_example(const Json& row, const std::string& where, const Tokenizer* tok, const ModelTokens* mt, int32_t vocab,
                    const DataOptions& opt) {
    if (row.type != Json::Object) fail(where + ": a row must be a JSON object, not " + std::string(json_type_name(row.type)));
    bool ids = row.find("input_ids"), text_row = row.find("text"), qa = row.find("question") || row.find("answer"),
         pc = row.find("prompt") || row.find("completion");
    int forms = ids + text_row + qa + pc;
    if (forms == 0)
        fail(where + ": unknown row form (expected \"text\", \"question\"+\"answer\", \"prompt\"+\"completion\" or \"input_ids\")");
    if (forms > 1) fail(where + ": the row mixes fields of different forms (text, question/answer, prompt/completion, input_ids)");
    Example ex;
    if (ids) {
        ex.ids = id_array(row, "input_ids", where, vocab, false);
        if (ex.ids.empty()) fail(where + ": field \"input_ids\" is empty");
        ex.labels = row.find("labels") ? id_array(row, "labels", where, vocab, true) : ex.ids;
        if (ex.labels.size() != ex.ids.size())
            fail(where + ": \"labels\" has " + std::to_string(ex.labels.size()) + " entries but \"input_ids\" has " +
                 std::to_string(ex.ids.size()));
        return ex;
    }
    if (!tok) fail(where + ": a text row " + kNeedsTokenizer);
    auto nonempty = [&](const std::string& value, const char* key) {
        if (tok->encode_ordinary(value).empty()) fail(where + ": field \"" + std::string(key) + "\" tokenizes to nothing");
        return value;
    };
    if (text_row) {  // as HF's tokenizer(text) with BOS, then EOS: special-token strings in the text are tokens
        std::vector<int32_t> body = tok->encode(nonempty(string_field(row, "text", where, true), "text"));
        ex.ids.push_back(mt->bos);
        ex.ids.insert(ex.ids.end(), body.begin(), body.end());
        ex.ids.push_back(mt->eos[0]);
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
    if (opt.chat_template) return chat_example(*tok, *mt, user, answer, opt.train_on_prompt);
    return render(*tok, {token(mt->bos), text(user)}, {text(answer), token(mt->eos[0])}, opt.train_on_prompt);
}

// JSON Lines (one row object per line), or a .json file holding one array of row objects.
void load_jsonl(Dataset& data, const std::string& path, const Tokenizer* tok, const ModelTokens* mt, int32_t vocab,
                const DataOptions& opt) {
    std::string text = read_file(path);
    std::vector<Example> rows;
    size_t first = text.find_first_not_of(" \t\r\n");
    if (ends_with(path, ".json") && first != std::string::npos && text[first] == '[') {
        Json array = parse_json(text, path);
        for (size_t i = 0; i < array.array.size(); ++i, data.stats.documents++)
            rows.push_back(row_example(array.array[i], path + ": row " + std::to_string(i + 1), tok, mt, vocab, opt));
        text.clear();
    }
    size_t line_start = 0;
    Progress shown("tokenizing " + path, double(text.size()), Progress::Units::Bytes, opt.progress);
    for (int line = 1; line_start < text.size(); ++line) {
        if (line % 1024 == 0) shown.update(double(line_start));
        size_t end = text.find('\n', line_start);
        if (end == std::string::npos) end = text.size();
        std::string_view s(text.data() + line_start, end - line_start);
        line_start = end + 1;
        if (s.find_first_not_of(" \t\r") == std::string_view::npos) continue;  // blank line
        std::string where = path + ":" + std::to_string(line);
        rows.push_back(row_example(parse_json(s, path, line), where, tok, mt, vocab, opt));
        data.stats.documents++;
    }
    shown.finish();
    for (Example& row : rows) add_row(data, std::move(row), opt.seq_len);
}

}  // namespace

std::vector<int32_t> prompt_ids(const Tokenizer& tok, const ModelTokens& mt, const std::string& prompt, bool chat) {
    if (chat) return render(tok, chat_prompt(tok, mt, prompt), {}, false).ids;
    std::vector<int32_t> ids{mt.bos}, body = tok.encode(prompt);  // as HF's tokenizer(prompt): BOS, then the text
    ids.insert(ids.end(), body.begin(), body.end());
    return ids;
}

std::string qa_prompt(const std::string& question, const std::string& context) {
    return "Question: " + question + "\n" + (context.empty() ? "" : "Context: " + context + "\n") + "Answer:";
}

Dataset load_dataset(const std::string& path, const Tokenizer* tok, int vocab_size, const DataOptions& options) {
    if (options.seq_len < 2) fail("sequence length must be at least 2 (--seq)");
    if (vocab_size <= 0 && tok) vocab_size = tok->vocab_size();
    if (vocab_size <= 0) fail("load_dataset " + path + ": no tokenizer and no vocabulary size to check ids against");
    ModelTokens defaults;
    const ModelTokens* mt = options.tokens;
    if (!mt && tok) defaults = model_tokens(*tok, ""), mt = &defaults;
    Dataset data;
    data.source = path, data.seq_len = options.seq_len, data.pack = options.pack;
    struct stat st;
    if (stat(path.c_str(), &st) != 0) fail("cannot read dataset " + path + ": " + std::strerror(errno));
    if (S_ISDIR(st.st_mode)) {
        std::vector<std::string> files = list_files(path);
        if (files.empty()) fail("dataset directory " + path + " has no files");
        load_corpus(data, files, tok, mt, options.seq_len, options.progress);
    } else if (ends_with(path, ".jsonl") || ends_with(path, ".json")) {
        load_jsonl(data, path, tok, mt, vocab_size, options);
    } else {
        load_corpus(data, {path}, tok, mt, options.seq_len, options.progress);
    }
    if (data.rows.empty()) fail("dataset " + path + " is empty");
    if (data.stats.target_tokens == 0) fail("dataset " + path + " has no tokens that take loss (all labels are -100)");
    pack_sequences(data);
    return data;
}

Dataset load_dataset(const std::string& path, const Tokenizer& tok, const DataOptions& options) {
    return load_dataset(path, &tok, 0, options);
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
    for (Dataset* d : {&eval, &rest}) d->corpus = train.corpus, d->seq_len = train.seq_len, d->pack = train.pack;
    eval.source = train.source + " (eval split)";
    rest.source = train.source;
    for (int64_t i = 0; i < n; ++i) {
        Dataset& to = is_eval[size_t(i)] ? eval : rest;
        to.stats.tokens += int64_t(train.rows[size_t(i)].ids.size());
        to.stats.target_tokens += count_targets(train.rows[size_t(i)].labels);
        to.rows.push_back(std::move(train.rows[size_t(i)]));
    }
    rest.stats.documents = train.stats.documents;  // truncation counts stay with the training set
    rest.stats.truncated_rows = train.stats.truncated_rows, rest.stats.truncated_tokens = train.stats.truncated_tokens;
    rest.stats.rows_without_targets = train.stats.rows_without_targets;
    pack_sequences(rest);
    pack_sequences(eval);
    train = std::move(rest);
    return eval;
}

void append_dataset(Dataset& into, Dataset&& more) {
    into.source += "," + more.source;
    into.corpus = into.corpus && more.corpus;
    for (Example& row : more.rows) into.rows.push_back(std::move(row));
    DataStats& a = into.stats;
    const DataStats& b = more.stats;
    a.documents += b.documents, a.tokens += b.tokens, a.target_tokens += b.target_tokens;
    a.truncated_rows += b.truncated_rows, a.truncated_tokens += b.truncated_tokens, a.rows_without_targets += b.rows_without_targets;
    pack_sequences(into);
}

void pack_sequences(Dataset& data) {
    data.sequences.clear();
    std::set<std::pair<int64_t, int64_t>> open;  // (room left, sequence) of sequences that are not full
    for (int64_t r = 0; r < int64_t(data.rows.size()); ++r) {
        int64_t len = int64_t(data.rows[size_t(r)].ids.size());
        auto fit = data.pack && !data.corpus ? open.lower_bound({len, -1}) : open.end();  // least room that fits
        int64_t s = fit != open.end() ? fit->second : int64_t(data.sequences.size());
        int64_t room = (fit != open.end() ? fit->first : data.seq_len) - len;
        if (fit != open.end()) open.erase(fit);
        else data.sequences.emplace_back();
        data.sequences[size_t(s)].push_back(r);
        if (room > 0) open.insert({room, s});
    }
    data.stats.sequences = int64_t(data.sequences.size());
    data.stats.padding_tokens = data.stats.sequences * data.seq_len - data.stats.tokens;
}

std::string data_summary(const std::string& role, const Dataset& data) {
    const DataStats& s = data.stats;
    double total = double(s.sequences) * data.seq_len;
    char padding[32];
    std::snprintf(padding, sizeof padding, "%.1f%%", total > 0 ? 100.0 * double(s.padding_tokens) / total : 0.0);
    std::string line = "data: " + role + " " + data.source + ": " +
                       (!data.corpus ? thousands(int64_t(data.rows.size())) + " rows in "
                        : s.documents ? thousands(s.documents) + " documents in " : "") +  // an eval split of a corpus: chunks
                       thousands(s.sequences) + " sequences of " + std::to_string(data.seq_len) + " tokens, " +
                       padding + " padding, " + thousands(s.tokens) + " tokens (" + thousands(s.target_tokens) +
                       " take loss), " + thousands(s.truncated_rows) + " rows truncated (" + thousands(s.truncated_tokens) +
                       " tokens cut)";
    if (s.rows_without_targets) line += ", " + thousands(s.rows_without_targets) + " rows with no answer left";
    return line;
}

// ================================================================================================ batches

uint64_t Rng::next() {
    return splitmix64(state += kGoldenGamma);
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
    int64_t n = int64_t(data.sequences.size());
    if (n == 0) fail("dataset " + data.source + " is empty");
    if (seq_len < data.seq_len)
        fail("dataset " + data.source + " is packed into sequences of " + std::to_string(data.seq_len) +
             " tokens, longer than the batch's " + std::to_string(seq_len));
    int64_t per_rank = (n + world - 1) / world;
    batches_per_epoch_ = (per_rank + micro_batch - 1) / micro_batch;
}

std::vector<int64_t> Loader::batch_sequences(int64_t epoch, int64_t index) const {
    if (epoch != cached_epoch_) order_ = epoch_order(int64_t(data_.sequences.size()), seed_, epoch, shuffle_), cached_epoch_ = epoch;
    std::vector<int64_t> seqs(size_t(B_), -1);
    for (int b = 0; b < B_; ++b) {
        int64_t pos = rank_ + (index * B_ + b) * int64_t(world_);  // this rank's j-th sequence is order[rank + j*W]
        if (index >= 0 && index < batches_per_epoch_ && pos < int64_t(order_.size())) seqs[size_t(b)] = order_[size_t(pos)];
    }
    return seqs;
}

// Row b: the sequence's rows one after another (each a document, and so is each document inside a row),
// then padding as one more document. A document that does not start the row has its first label masked.
Batch Loader::batch(int64_t epoch, int64_t index) const {
    Batch batch;
    batch.B = B_, batch.T = T_;
    size_t n = size_t(B_) * size_t(T_);
    batch.ids.assign(n, pad_id_);
    batch.labels.assign(n, kIgnoreIndex);
    batch.positions.resize(n);
    batch.doc_start.resize(n);
    std::vector<int64_t> seqs = batch_sequences(epoch, index);
    for (int b = 0; b < B_; ++b) {
        int32_t* ids = &batch.ids[size_t(b) * size_t(T_)];
        int32_t* labels = &batch.labels[size_t(b) * size_t(T_)];
        int32_t* doc = &batch.doc_start[size_t(b) * size_t(T_)];
        int32_t t = 0;
        if (seqs[size_t(b)] >= 0) {
            batch.real_rows++;
            batch.examples += int64_t(data_.sequences[size_t(seqs[size_t(b)])].size());
            for (int64_t r : data_.sequences[size_t(seqs[size_t(b)])]) {
                const Example& ex = data_.rows[size_t(r)];
                size_t next = 0;  // the next of ex.doc_starts
                for (int32_t k = 0; k < int32_t(ex.ids.size()); ++k, ++t) {
                    bool starts = k == 0 || (next < ex.doc_starts.size() && ex.doc_starts[next] == k);
                    if (k > 0 && starts) ++next;
                    ids[t] = ex.ids[size_t(k)];
                    labels[t] = starts && t > 0 ? kIgnoreIndex : ex.labels[size_t(k)];
                    doc[t] = starts ? t : doc[t - 1];
                }
            }
        }
        batch.tokens += t;
        for (int32_t p = t; p < T_; ++p) doc[p] = t;  // padding: a document of its own
        for (int32_t p = 0; p < T_; ++p) {
            batch.positions[size_t(b) * size_t(T_) + size_t(p)] = p - doc[p];
            batch.target_tokens += p > 0 && labels[p] != kIgnoreIndex;
        }
    }
    return batch;
}

// ================================================================================================ model tokens

namespace {

// An id or a list of ids under `key` (absent or null: none); each must be an id of `tok`.
std::vector<int32_t> config_ids(const Json& file, const char* key, const std::string& path, const Tokenizer& tok) {
    std::vector<int32_t> ids;
    const Json* v = file.find(key);
    if (!v || v->type == Json::Null) return ids;
    std::vector<Json> items = v->type == Json::Array ? v->array : std::vector<Json>{*v};
    for (const Json& x : items) {
        if (!x.is_int() || x.integer < 0 || x.integer >= tok.vocab_size())
            fail(path + ": " + key + " holds " + (x.is_int() ? std::to_string(x.integer) : json_type_name(x.type)) +
                 ", not a token id of " + tok.path() + " (0 to " + std::to_string(tok.vocab_size() - 1) + ")");
        ids.push_back(int32_t(x.integer));
    }
    return ids;
}

// A token named under `key`: a string or {"content": ...}; -1 when absent or null. It must be in `tok`.
int32_t config_token(const Json& file, const char* key, const std::string& path, const Tokenizer& tok) {
    const Json* v = file.find(key);
    if (v && v->type == Json::Object) v = v->find("content");
    if (!v || v->type == Json::Null) return -1;
    if (!v->is_string()) fail(path + ": " + key + " must be a string or {\"content\": \"...\"}");
    int32_t id = tok.token_id(v->string);
    if (id < 0) fail(path + ": " + key + " " + json_quote(v->string) + " is not a token of " + tok.path());
    return id;
}

}  // namespace

ModelTokens model_tokens(const Tokenizer& tok, const std::string& model_dir) {
    ModelTokens t;
    t.chat = tok.family();
    bool llama3 = tok.family() == TokenizerFamily::llama3;
    t.bos = tok.token_id(llama3 ? "<|begin_of_text|>" : "<s>");
    int32_t eos = tok.token_id(llama3 ? "<|end_of_text|>" : "</s>");
    std::vector<int32_t> stop;  // what generation stops on, besides eos
    std::string read;
    for (const char* name : {"config.json", "generation_config.json", "tokenizer_config.json"}) {
        std::string path = model_dir + "/" + name;
        if (model_dir.empty() || access(path.c_str(), R_OK) != 0) continue;
        Json file = read_json_file(path);
        if (file.type != Json::Object) fail(path + ": expected a JSON object");
        read += std::string(read.empty() ? "" : ", ") + name;
        if (std::string(name) == "tokenizer_config.json") {
            int32_t bos = config_token(file, "bos_token", path, tok), e = config_token(file, "eos_token", path, tok),
                    pad = config_token(file, "pad_token", path, tok);
            t.bos = bos >= 0 ? bos : t.bos, eos = e >= 0 ? e : eos, t.pad = pad >= 0 ? pad : t.pad;
            continue;
        }
        std::vector<int32_t> bos = config_ids(file, "bos_token_id", path, tok), e = config_ids(file, "eos_token_id", path, tok),
                             pad = config_ids(file, "pad_token_id", path, tok);
        if (!bos.empty()) t.bos = bos[0];
        if (!e.empty()) eos = e[0], stop = e;  // generation_config.json, read second, wins
        if (!pad.empty()) t.pad = pad[0];
    }
    t.source = read.empty() ? tok.path() + " (its own conventions)" : model_dir + ": " + read;
    if (t.bos < 0 || eos < 0)
        fail(tok.path() + " has no " + (t.bos < 0 ? (llama3 ? "<|begin_of_text|>" : "<s>") : (llama3 ? "<|end_of_text|>" : "</s>")) +
             " and " + (read.empty() ? "no model directory names one" : model_dir + " names none") +
             " (use a model directory with tokenizer_config.json)");
    t.eos = {eos};
    for (int32_t id : stop)
        if (std::find(t.eos.begin(), t.eos.end(), id) == t.eos.end()) t.eos.push_back(id);
    if (t.pad < 0) t.pad = eos;
    return t;
}

void check_vocab(const Tokenizer& tok, int model_vocab, const std::string& tokenizer_path, const std::string& config_path) {
    if (tok.vocab_size() > model_vocab)
        fail(tokenizer_path + " has " + std::to_string(tok.vocab_size()) + " token ids but " + config_path +
             " has vocab_size " + std::to_string(model_vocab) + ": the tokenizer does not belong to this model");
}

void check_model_tokens(const ModelTokens& t, int model_vocab, const std::string& config_path) {
    auto check = [&](int32_t id, const std::string& what) {
        if (id < 0 || id >= model_vocab)
            fail(what + " " + std::to_string(id) + " (from " + t.source + ") is outside the model's vocabulary: " + config_path +
                 " has vocab_size " + std::to_string(model_vocab));
    };
    check(t.bos, "the BOS id");
    for (int32_t id : t.eos) check(id, "the EOS id");
    check(t.pad, "the pad id");
}
