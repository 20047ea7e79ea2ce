// data.cpp — text to training batches (see data.h). Three parts, in order:
//   Datasets files -> rows of a form recognised by content -> Examples (ids + labels) with the tokenizer
//            (support/tokenizer.cpp), in the model's templates (chat: support/chat_template.cpp);
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

// ---------------------------------------------------------------------------------------- files, by content

// Fails unless `path` is a directory or a regular file. Called before anything opens it: open() on a FIFO
// would block until a writer comes, and a device or socket is no dataset.
bool is_directory(const std::string& path) {
    struct stat st;
    if (stat(path.c_str(), &st) != 0) fail("cannot read dataset " + path + ": " + std::strerror(errno));
    if (S_ISDIR(st.st_mode)) return true;
    if (S_ISREG(st.st_mode)) return false;
    const char* kind = S_ISFIFO(st.st_mode) ? "a FIFO (named pipe)" : S_ISCHR(st.st_mode) ? "a character device"
                       : S_ISBLK(st.st_mode) ? "a block device" : S_ISSOCK(st.st_mode) ? "a socket" : "not a regular file";
    fail("dataset " + path + " is " + kind + ", not a file: write the data to a file first");
}

// A dataset file's text: UTF-8 (a NUL byte or ill-formed UTF-8 means it is not text: one error with the
// offset), a leading byte-order mark dropped.
std::string read_text(const std::string& path) {
    if (is_directory(path)) fail("cannot read dataset " + path + ": it is a directory");
    std::string text = read_file(path);
    if (text.compare(0, 3, "\xEF\xBB\xBF") == 0) text.erase(0, 3);
    size_t nul = text.find('\0'), n, bad;
    uint32_t cp;
    for (size_t i = 0; i < std::min(nul, text.size()); i += n)
        if ((n = utf8_decode(text, i, cp, bad)) == 0) {
            char b[64];
            std::snprintf(b, sizeof b, "byte 0x%02X at offset %zu is not UTF-8", static_cast<unsigned char>(text[i]), i);
            fail("dataset " + path + " is not text (" + b + "): give plain text, JSON Lines or a JSON array");
        }
    if (nul != std::string::npos)
        fail("dataset " + path + " is not text (a NUL byte at offset " + std::to_string(nul) +
             "): give plain text, JSON Lines or a JSON array");
    return text;
}

bool ends_with(const std::string& s, const std::string& suffix) {
    return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// What a dataset file holds, from its content: JSON rows when the first non-blank character opens a JSON
// object that its line completes (JSON Lines) or an array that the whole file completes; plain text
// otherwise. A .json or .jsonl name says it must be JSON: its parse error is the error.
enum class Content { text, json_lines, json_array };

Content sniff(const std::string& path, const std::string& text) {
    bool named_json = ends_with(path, ".jsonl") || ends_with(path, ".json");
    size_t first = text.find_first_not_of(" \t\r\n");
    if (first == std::string::npos) fail("dataset " + path + " is empty");
    if (text[first] != '{' && text[first] != '[') {
        if (named_json) fail(path + ": expected JSON rows (a JSON object per line, or one array of objects)");
        return Content::text;
    }
    try {
        if (text[first] == '[') {
            parse_json(text, path);
            return Content::json_array;
        }
        size_t end = std::min(text.find('\n', first), text.size());
        int line = 1 + int(std::count(text.begin(), text.begin() + long(first), '\n'));
        parse_json(std::string_view(text).substr(first, end - first), path, line);
        return Content::json_lines;
    } catch (const Error&) {
        if (named_json) throw;
        return Content::text;
    }
}

std::vector<std::string> list_files(const std::string& dir) {  // non-hidden entries, sorted; subdirectories skipped
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

// ---------------------------------------------------------------------------------------- rows and corpora

int64_t count_targets(const std::vector<int32_t>& labels) {  // positions 1.. take loss (HF's shift)
    int64_t n = 0;
    for (size_t t = 1; t < labels.size(); ++t) n += labels[t] != kIgnoreIndex;
    return n;
}

void add_format(DataStats& s, const std::string& format) {
    if (std::find(s.formats.begin(), s.formats.end(), format) == s.formats.end()) s.formats.push_back(format);
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

// Plain-text documents (one per file), each BOS text EOS, in one stream cut into rows of seq_len tokens.
void load_corpus(Dataset& data, const std::vector<std::string>& files, const Tokenizer* tok, const ModelTokens* mt,
                 int seq_len, bool progress) {
    if (!tok) fail("dataset " + data.source + " is plain text: it " + kNeedsTokenizer);
    data.corpus = true;
    add_format(data.stats, "plain text");
    std::vector<int32_t> stream;
    std::vector<size_t> starts;  // where each document begins in the stream
    Progress shown("tokenizing " + data.source, double(files.size()), Progress::Units::Items, progress);
    for (const std::string& path : files) {
        shown.update(double(data.stats.documents));
        std::string text = read_text(path);  // not empty: sniff() saw it
        starts.push_back(stream.size());
        if (mt->bos >= 0) stream.push_back(mt->bos);
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

// A string field; "" when absent and not required (or null and `null_ok`, as `datasets` writes a missing value).
std::string string_field(const Json& row, const char* key, const std::string& where, bool required, bool null_ok = false) {
    const Json* v = row.find(key);
    if (!v || (null_ok && v->type == Json::Null)) {
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

// A pre-tokenized row's "attention_mask" (a tokenizer's padding: 1 keeps a token, 0 marks a pad): the
// tokens it masks are dropped with their labels, so the row trains as it would have without the padding.
void drop_masked(Example& ex, const Json& row, const std::string& where) {
    const Json* mask = row.find("attention_mask");
    if (mask->type != Json::Array || mask->array.size() != ex.ids.size())
        fail(where + ": field \"attention_mask\" must be a list of 0 and 1 as long as \"input_ids\" (" + std::to_string(ex.ids.size()) + ")");
    size_t kept = 0;
    for (size_t i = 0; i < ex.ids.size(); ++i) {
        const Json& m = mask->array[i];
        if (!m.is_int() || (m.integer != 0 && m.integer != 1))
            fail(where + ": field \"attention_mask\" holds " + (m.is_int() ? std::to_string(m.integer) : json_type_name(m.type)) + ", not 0 or 1");
        if (m.integer == 1) ex.ids[kept] = ex.ids[i], ex.labels[kept] = ex.labels[i], ++kept;
    }
    if (kept == 0) fail(where + ": field \"attention_mask\" masks every token");
    ex.ids.resize(kept), ex.labels.resize(kept);
}

// ---------------------------------------------------------------------------------------- prompt templates

// A piece of a rendered prompt template: a special token (id >= 0) or text, which is encoded as ordinary
// text (special-token strings in the text stay text).
struct Part {
    int32_t id = -1;
    std::string text;
};
Part token(int32_t id) { return {id, ""}; }
Part text(std::string s) { return {-1, std::move(s)}; }

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

// Stanford Alpaca's prompt (its train.py PROMPT_DICT), the response on the next line as in the `text`
// column of the tatsu-lab/alpaca dataset on the HF Hub; the input paragraph only when the input is not "".
std::string alpaca_prompt(const std::string& instruction, const std::string& input) {
    if (input.empty())
        return "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
               "### Instruction:\n" + instruction + "\n\n### Response:\n";
    return "Below is an instruction that describes a task, paired with an input that provides further context. Write a "
           "response that appropriately completes the request.\n\n### Instruction:\n" + instruction + "\n\n### Input:\n" +
           input + "\n\n### Response:\n";
}

// ---------------------------------------------------------------------------------------- chat rows

// The messages of a "messages" (or conversational "prompt"/"completion") list: {"role", "content"
// [, "reasoning_content"]}; other roles, tool calls and non-text contents are refused.
std::vector<ChatMessage> message_list(const Json& row, const char* key, const std::string& where) {
    const Json* list = row.find(key);
    if (list->type != Json::Array || list->array.empty())
        fail(where + ": field \"" + key + "\" must be a non-empty list of {\"role\", \"content\"} messages");
    std::vector<ChatMessage> messages;
    for (size_t i = 0; i < list->array.size(); ++i) {
        const Json& m = list->array[i];
        std::string at = where + ": " + key + "[" + std::to_string(i) + "]";
        if (m.type != Json::Object) fail(at + " must be a {\"role\", \"content\"} object, not " + json_type_name(m.type));
        if (const Json* calls = m.find("tool_calls"); calls && calls->type != Json::Null) fail(at + ": tool calls are not supported");
        ChatMessage message{string_field(m, "role", at, true), string_field(m, "content", at, true)};
        if (message.role != "system" && message.role != "user" && message.role != "assistant")
            fail(at + ": role " + json_quote(message.role) + " is not supported (roles are \"system\", \"user\", \"assistant\")");
        if (const Json* r = m.find("reasoning_content"); r && r->type != Json::Null)
            message.has_reasoning = true, message.reasoning = string_field(m, "reasoning_content", at, true);
        messages.push_back(std::move(message));
    }
    return messages;
}

size_t assistant_turns(const std::vector<ChatMessage>& messages) {
    return size_t(std::count_if(messages.begin(), messages.end(), [](const ChatMessage& m) { return m.role == "assistant"; }));
}

// ---------------------------------------------------------------------------------------- row forms

// A row's form, from which fields it has (data.h lists the forms). Fields of two forms are an error, but for
// two that datasets carry beside others: Alpaca's "text" (tatsu-lab/alpaca: the prompt and response already
// rendered) and a "prompt" beside "messages" (ultrachat_200k: the first user turn again); neither is read.
enum class Form { input_ids, text, messages, prompt_completion, alpaca, squad, wikiqa, qa };

Form row_form(const Json& row, const std::string& where) {
    auto has = [&](const char* key) { return row.find(key) != nullptr; };
    bool ids = has("input_ids"), chat = has("messages"), alpaca = has("instruction") || has("output");
    bool pc = !chat && (has("prompt") || has("completion")), text = !alpaca && has("text");
    bool qa = has("question") || has("answer") || has("answers") || has("sentence");
    int forms = ids + chat + pc + alpaca + qa + text;
    if (forms == 0)
        fail(where + ": unknown row form (expected \"messages\", \"prompt\"+\"completion\", \"instruction\"+\"output\", "
             "\"question\"+\"answer\" (or SQuAD's \"answers\", WikiQA's \"label\"), \"text\" or \"input_ids\")");
    if (forms > 1)
        fail(where + ": the row mixes fields of different forms (messages, prompt/completion, instruction/output, "
             "question/answer, text, input_ids)");
    if (ids) return Form::input_ids;
    if (text) return Form::text;
    if (chat) return Form::messages;
    if (pc) return Form::prompt_completion;
    if (alpaca) return Form::alpaca;
    if (has("answers")) return Form::squad;
    if (has("label")) return Form::wikiqa;
    if (has("sentence")) fail(where + ": a WikiQA row (\"sentence\") needs its \"label\" (1: the sentence answers the question)");
    return Form::qa;
}

// One JSON row, ready to add: its Example, the form it was read as (with the template it is written in), or
// why it is dropped (a SQuAD question without an answer, a WikiQA sentence of label 0).
struct Row {
    Example ex;
    std::string format, dropped;
};

Row row_example(const Json& row, const std::string& where, const Tokenizer* tok, const ModelTokens* mt, int32_t vocab,
                const DataOptions& opt) {
    if (row.type != Json::Object) fail(where + ": a row must be a JSON object, not " + std::string(json_type_name(row.type)));
    Form form = row_form(row, where);
    Row out;
    if (form == Form::input_ids) {
        out.format = "pre-tokenized";
        out.ex.ids = id_array(row, "input_ids", where, vocab, false);
        if (out.ex.ids.empty()) fail(where + ": field \"input_ids\" is empty");
        out.ex.labels = row.find("labels") ? id_array(row, "labels", where, vocab, true) : out.ex.ids;
        if (out.ex.labels.size() != out.ex.ids.size())
            fail(where + ": \"labels\" has " + std::to_string(out.ex.labels.size()) + " entries but \"input_ids\" has " +
                 std::to_string(out.ex.ids.size()));
        if (row.find("attention_mask")) drop_masked(out.ex, row, where);
        return out;
    }
    if (!tok) fail(where + ": a text row " + kNeedsTokenizer);
    auto nonempty = [&](const char* key) {  // a required string field that tokenizes to something
        std::string value = string_field(row, key, where, true);
        if (tok->encode_ordinary(value).empty()) fail(where + ": field \"" + std::string(key) + "\" tokenizes to nothing");
        return value;
    };
    const ChatTemplate& chat = mt->chat;
    std::string in_chat = " in the " + chat.name + " chat template";
    if (form == Form::text) {  // as HF's tokenizer(text) with BOS, then EOS: special-token strings in the text are tokens
        std::vector<int32_t> body = tok->encode(nonempty("text"));
        if (mt->bos >= 0) out.ex.ids.push_back(mt->bos);
        out.ex.ids.insert(out.ex.ids.end(), body.begin(), body.end());
        out.ex.ids.push_back(mt->eos[0]);
        out.ex.labels = out.ex.ids;
        out.format = "text";
        return out;
    }
    if (form == Form::messages) {
        std::vector<ChatMessage> messages = message_list(row, "messages", where);
        if (assistant_turns(messages) == 0) fail(where + ": \"messages\" has no assistant turn to train on");
        out.ex = chat_example(*tok, chat, messages, false, opt.train_on_prompt, where);
        out.format = "chat messages" + in_chat;
        return out;
    }
    // The other forms are a prompt and its answer: with --chat-template a user turn and an assistant turn
    // (`user`, `reply`), else BOS prompt answer EOS.
    std::string prompt, answer, user, reply;
    if (form == Form::prompt_completion) {
        const Json* p = row.find("prompt");
        const Json* c = row.find("completion");
        if (p && c && (p->type == Json::Array || c->type == Json::Array)) {  // TRL's conversational prompt/completion
            std::vector<ChatMessage> messages = message_list(row, "prompt", where), completion = message_list(row, "completion", where);
            if (assistant_turns(completion) == 0) fail(where + ": \"completion\" has no assistant turn to train on");
            size_t skip = assistant_turns(messages);  // answers inside the prompt take no loss
            messages.insert(messages.end(), completion.begin(), completion.end());
            out.ex = chat_example(*tok, chat, messages, false, opt.train_on_prompt, where, skip);
            out.format = "conversational prompt/completion" + in_chat;
            return out;
        }
        out.format = "prompt/completion";
        prompt = user = nonempty("prompt"), answer = reply = nonempty("completion");
    } else if (form == Form::alpaca) {
        out.format = "Alpaca";
        std::string instruction = nonempty("instruction"), input = string_field(row, "input", where, false, true);
        answer = reply = nonempty("output");
        prompt = alpaca_prompt(instruction, input);
        user = instruction + (input.empty() ? "" : "\n\n" + input);
    } else {  // question/answer: QA, SQuAD, WikiQA
        std::string question = nonempty("question"), context;
        if (form == Form::squad) {
            out.format = "SQuAD";
            context = string_field(row, "context", where, true);
            const Json* texts = row.find("answers")->find("text");
            if (!texts || texts->type != Json::Array)
                fail(where + ": field \"answers\" must be {\"text\": [...], \"answer_start\": [...]} (SQuAD as `datasets` writes it)");
            if (texts->array.empty()) return out.dropped = "SQuAD questions without an answer", out;
            if (!texts->array[0].is_string() || tok->encode_ordinary(texts->array[0].string).empty())
                fail(where + ": answers.text[0] must be a string that tokenizes to something");
            reply = texts->array[0].string;
        } else if (form == Form::wikiqa) {
            out.format = "WikiQA";
            reply = nonempty(row.find("sentence") ? "sentence" : "answer");
            const Json* label = row.find("label");
            bool zero_or_one = label->type == Json::Bool || (label->is_int() && (label->integer == 0 || label->integer == 1));
            if (!zero_or_one) fail(where + ": field \"label\" must be 0 or 1 (WikiQA: 1 marks a sentence that answers the question)");
            if (label->type == Json::Bool ? !label->boolean : label->integer == 0)
                return out.dropped = "WikiQA label 0: a candidate sentence that does not answer", out;
        } else {
            out.format = "question/answer";
            reply = nonempty("answer");
            context = string_field(row, "context", where, false, true);  // null: none (`datasets` writes a missing column so)
        }
        prompt = qa_prompt(question, context);  // "Question: ...\nContext: ...\nAnswer:" then " " + the answer
        answer = " " + reply;
        user = "Question: " + question + (context.empty() ? "" : "\nContext: " + context);
    }
    if (opt.chat_template) {
        out.ex = chat_example(*tok, chat, {{"user", user}, {"assistant", reply}}, false, opt.train_on_prompt, where);
        out.format += in_chat;
    } else {
        std::vector<Part> begin = mt->bos >= 0 ? std::vector<Part>{token(mt->bos), text(prompt)} : std::vector<Part>{text(prompt)};
        out.ex = render(*tok, begin, {text(answer), token(mt->eos[0])}, opt.train_on_prompt);
    }
    return out;
}

// JSON rows: one object per line (blank lines skipped), or one array of objects.
void load_rows(Dataset& data, const std::string& path, Content content, const Tokenizer* tok, const ModelTokens* mt,
               int32_t vocab, const DataOptions& opt) {
    std::string text = read_text(path);
    std::vector<Example> rows;
    auto take = [&](const Json& value, const std::string& where) {
        Row row = row_example(value, where, tok, mt, vocab, opt);
        data.stats.documents++;
        if (!row.dropped.empty()) data.stats.dropped[row.dropped]++;
        else add_format(data.stats, row.format), rows.push_back(std::move(row.ex));
    };
    if (content == Content::json_array) {
        Json array = parse_json(text, path);
        for (size_t i = 0; i < array.array.size(); ++i) take(array.array[i], path + ": row " + std::to_string(i + 1));
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
        take(parse_json(s, path, line), path + ":" + std::to_string(line));
    }
    shown.finish();
    for (Example& row : rows) add_row(data, std::move(row), opt.seq_len);
}

std::string dropped_text(const DataStats& s) {  // ", 12 rows dropped (why), ..."
    std::string out;
    for (const auto& [why, n] : s.dropped) out += ", " + thousands(n) + " rows dropped (" + why + ")";
    return out;
}

}  // namespace

// The rendering is tokenized as one text, as HF's apply_chat_template(tokenize=True) does (special-token
// strings inside contents become those tokens there too); each assistant piece after the first `skip` takes
// the loss, its tokens found as TRL finds a completion's: the text before it, tokenized alone, is the tokens
// before it.
Example chat_example(const Tokenizer& tok, const ChatTemplate& t, const std::vector<ChatMessage>& messages,
                     bool add_generation_prompt, bool train_on_prompt, const std::string& where, size_t skip) {
    for (const std::string& special : chat_template_tokens(t))
        if (tok.encode(special).size() != 1)
            fail("the " + t.name + " chat template needs the token " + special + ", which " + tok.path() + " lacks");
    std::vector<ChatPiece> pieces = render_chat(t, messages, add_generation_prompt, where);
    std::string whole;
    std::vector<std::pair<size_t, size_t>> spans;  // [begin, end) bytes of the pieces that take the loss
    for (const ChatPiece& p : pieces) {
        if (p.assistant && skip > 0) --skip;
        else if (p.assistant) spans.push_back({whole.size(), whole.size() + p.text.size()});
        whole += p.text;
    }
    Example ex;
    ex.ids = tok.encode(whole);
    ex.labels.assign(ex.ids.size(), kIgnoreIndex);
    auto tokens_before = [&](size_t at) {
        return at >= whole.size() ? ex.ids.size() : std::min(ex.ids.size(), tok.encode(std::string_view(whole).substr(0, at)).size());
    };
    if (train_on_prompt) ex.labels = ex.ids;
    for (auto [begin, end] : spans)
        for (size_t k = tokens_before(begin), stop = tokens_before(end); k < stop; ++k) ex.labels[k] = ex.ids[k];
    return ex;
}

std::vector<int32_t> prompt_ids(const Tokenizer& tok, const ModelTokens& mt, const std::string& prompt, bool chat) {
    if (chat) return chat_example(tok, mt.chat, {{"user", prompt}}, true, false, "the prompt").ids;
    std::vector<int32_t> ids = tok.encode(prompt);  // as HF's tokenizer(prompt): BOS (if the family adds one), then the text
    if (mt.bos >= 0) ids.insert(ids.begin(), mt.bos);
    return ids;
}

std::string qa_prompt(const std::string& question, const std::string& context) {
    return "Question: " + question + "\n" + (context.empty() ? "" : "Context: " + context + "\n") + "Answer:";
}

std::vector<std::string> data_paths(const std::string& list, const std::string& flag) {
    if (list.empty()) fail(flag + " is empty: give a file or directory (several separated by commas)");
    std::vector<std::string> paths;
    for (size_t start = 0; start <= list.size();) {
        size_t end = std::min(list.find(',', start), list.size());
        if (end == start) fail(flag + " " + json_quote(list) + " has an empty entry (a comma at the start, at the end or doubled)");
        paths.push_back(list.substr(start, end - start));
        start = end + 1;
    }
    return paths;
}

Dataset load_dataset(const std::string& path, const Tokenizer* tok, int vocab_size, const DataOptions& options) {
    if (options.seq_len < 2) fail("sequence length must be at least 2 (--seq)");
    if (vocab_size <= 0 && tok) vocab_size = tok->vocab_size();
    if (vocab_size <= 0) fail("load_dataset " + path + ": no tokenizer and no vocabulary size to check ids against");
    if (path.empty()) fail("dataset path is empty");
    ModelTokens defaults;
    const ModelTokens* mt = options.tokens;
    if (!mt && tok) defaults = model_tokens(*tok, ""), mt = &defaults;
    Dataset data;
    data.source = path, data.seq_len = options.seq_len, data.pack = options.pack;
    bool directory = is_directory(path);
    std::vector<std::string> files = directory ? list_files(path) : std::vector<std::string>{path};
    if (files.empty()) fail("dataset directory " + path + " has no files");
    std::vector<Content> content;  // every file's, before any is tokenized
    for (const std::string& file : files) content.push_back(sniff(file, read_text(file)));
    size_t text = size_t(std::find(content.begin(), content.end(), Content::text) - content.begin());
    size_t json = size_t(std::find_if(content.begin(), content.end(), [](Content c) { return c != Content::text; }) - content.begin());
    if (text < files.size() && json < files.size())
        fail("dataset directory " + path + " mixes JSON rows (" + files[json] + ") and plain text (" + files[text] +
             "): give them as separate --data entries");
    if (text < files.size()) load_corpus(data, files, tok, mt, options.seq_len, options.progress);
    else
        for (size_t k = 0; k < files.size(); ++k) load_rows(data, files[k], content[k], tok, mt, vocab_size, options);
    if (data.rows.empty() && !data.stats.dropped.empty())
        fail("dataset " + path + " has no rows to train on" + dropped_text(data.stats));
    if (data.rows.empty()) fail("dataset " + path + " is empty");
    if (data.stats.target_tokens == 0)
        fail("dataset " + path + " has no tokens that take loss (all labels are -100" +
             (data.stats.truncated_rows ? "; " + thousands(data.stats.truncated_rows) + " rows were cut at --seq " + std::to_string(options.seq_len) +
                                              ", before their answers" : std::string()) + ")");
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
    rest.stats.documents = train.stats.documents;  // truncation and drop counts stay with the training set
    rest.stats.truncated_rows = train.stats.truncated_rows, rest.stats.truncated_tokens = train.stats.truncated_tokens;
    rest.stats.rows_without_targets = train.stats.rows_without_targets;
    rest.stats.dropped = train.stats.dropped;
    rest.stats.formats = eval.stats.formats = train.stats.formats;
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
    for (const std::string& format : b.formats) add_format(a, format);
    for (const auto& [why, n] : b.dropped) a.dropped[why] += n;
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
    std::string formats;
    for (const std::string& f : s.formats) formats += (formats.empty() ? " (" : ", ") + f;
    std::string line = "data: " + role + " " + data.source + formats + (formats.empty() ? "" : ")") + ": " +
                       (!data.corpus ? thousands(int64_t(data.rows.size())) + " rows in "
                        : s.documents ? thousands(s.documents) + " documents in " : "") +  // an eval split of a corpus: chunks
                       thousands(s.sequences) + " sequences of " + std::to_string(data.seq_len) + " tokens, " +
                       padding + " padding, " + thousands(s.tokens) + " tokens (" + thousands(s.target_tokens) +
                       " take loss), " + thousands(s.truncated_rows) + " rows truncated (" + thousands(s.truncated_tokens) +
                       " tokens cut)";
    if (s.rows_without_targets) line += ", " + thousands(s.rows_without_targets) + " rows with no answer left";
    return line + dropped_text(s);
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
    bool llama3 = tok.family() == TokenizerFamily::llama3;
    // Qwen's tokenizer adds no BOS (its post-processor has none; config.json's bos_token_id is never put in
    // front of text); its documents end with <|endoftext|>.
    bool adds_bos = tok.family() != TokenizerFamily::qwen3;
    const char* bos_name = llama3 ? "<|begin_of_text|>" : "<s>";
    const char* eos_name = llama3 ? "<|end_of_text|>" : adds_bos ? "</s>" : "<|endoftext|>";
    t.bos = adds_bos ? tok.token_id(bos_name) : -1;
    int32_t eos = tok.token_id(eos_name);
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
            if (adds_bos && bos >= 0) t.bos = bos;
            eos = e >= 0 ? e : eos, t.pad = pad >= 0 ? pad : t.pad;
            continue;
        }
        std::vector<int32_t> bos = config_ids(file, "bos_token_id", path, tok), e = config_ids(file, "eos_token_id", path, tok),
                             pad = config_ids(file, "pad_token_id", path, tok);
        if (adds_bos && !bos.empty()) t.bos = bos[0];
        if (!e.empty()) eos = e[0], stop = e;  // generation_config.json, read second, wins
        if (!pad.empty()) t.pad = pad[0];
    }
    t.source = read.empty() ? tok.path() + " (its own conventions)" : model_dir + ": " + read;
    if ((adds_bos && t.bos < 0) || eos < 0)
        fail(tok.path() + " has no " + (eos >= 0 ? bos_name : eos_name) +
             " and " + (read.empty() ? "no model directory names one" : model_dir + " names none") +
             " (use a model directory with tokenizer_config.json)");
    t.eos = {eos};
    for (int32_t id : stop)
        if (std::find(t.eos.begin(), t.eos.end(), id) == t.eos.end()) t.eos.push_back(id);
    if (t.pad < 0) t.pad = eos;
    t.chat = model_chat_template(model_dir, tok, t.bos >= 0 ? tok.decode({t.bos}) : "", tok.decode({eos}));
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
    if (t.bos != -1) check(t.bos, "the BOS id");  // -1: the family adds none (Qwen)
    for (int32_t id : t.eos) check(id, "the EOS id");
    check(t.pad, "the pad id");
}
