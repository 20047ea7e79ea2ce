// test/test_data_formats.cpp — the dataset formats, each from a fresh fixture file, recognised by content:
// chat messages (system prompt, several turns, loss on the answers), TRL conversational and standard
// prompt/completion, Alpaca with and without input, SQuAD as `datasets` exports it, WikiQA (label 0 rows
// dropped and counted), QA, plain text, JSON without a JSON name, a directory of JSON Lines; and each file
// that is no dataset (binary, ill-formed UTF-8, a FIFO, a device, a directory mixing rows and text, an empty
// --data entry) as one error.
#include "test.h"

#include <sys/stat.h>

#include <algorithm>

#include "data.h"

namespace {

std::vector<int32_t> cat(std::initializer_list<std::vector<int32_t>> parts) {
    std::vector<int32_t> out;
    for (const auto& p : parts) out.insert(out.end(), p.begin(), p.end());
    return out;
}

// The decoded runs of tokens that take loss, in order.
std::vector<std::string> loss_runs(const Tokenizer& tok, const Example& ex) {
    std::vector<std::string> runs;
    for (size_t k = 0; k < ex.labels.size(); ++k) {
        if (ex.labels[k] == kIgnoreIndex) continue;
        if (k == 0 || ex.labels[k - 1] == kIgnoreIndex) runs.emplace_back();
        runs.back() += tok.decode({ex.labels[k]});
    }
    return runs;
}

// A model directory holding only tokenizer_config.json with the stored template `name`.
ModelTokens model_with_template(const std::string& name) {
    std::string sub = "fmt_model_" + name, dir = temp_dir(sub);
    temp_file(sub + "/tokenizer_config.json",
              "{\"bos_token\": \"<|begin_of_text|>\", \"chat_template\": " + json_quote(read_file("test/golden/chat_templates/" + name)) + "}");
    return model_tokens(default_tokenizer(), dir);
}

Dataset load(const std::string& name, const std::string& content, const ModelTokens* mt = nullptr, bool chat = false) {
    DataOptions opt;
    opt.tokens = mt, opt.chat_template = chat;
    return load_dataset(temp_file(name, content), default_tokenizer(), opt);
}

const std::string kBos = "<|begin_of_text|>", kEos = "<|end_of_text|>";

}  // namespace

TEST_CASE("data formats: chat messages with a system prompt and several turns, loss on the answers only") {
    const Tokenizer& tok = default_tokenizer();
    ModelTokens mt = model_with_template("llama-3.1-instruct.jinja");
    std::string row = R"({"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}], "id": 7})";
    row.erase(std::remove(row.begin(), row.end(), '\n'), row.end());
    Dataset d = load("fmt_messages.jsonl", row + "\n" + R"({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]})" "\n", &mt);
    REQUIRE(d.rows.size() == 2);
    std::string h = "<|start_header_id|>", e = "<|end_header_id|>\n\n";
    CHECK(d.rows[0].ids == tok.encode(kBos + h + "system" + e + "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"
                                      "Be brief.<|eot_id|>" + h + "user" + e + "Hi<|eot_id|>" + h + "assistant" + e + "Hello!<|eot_id|>" +
                                      h + "user" + e + "2+2?<|eot_id|>" + h + "assistant" + e + "4<|eot_id|>"));
    CHECK(loss_runs(tok, d.rows[0]) == std::vector<std::string>{"Hello!<|eot_id|>", "4<|eot_id|>"});
    CHECK(loss_runs(tok, d.rows[1]) == std::vector<std::string>{"y<|eot_id|>"});
    CHECK(data_summary("train", d).find("fmt_messages.jsonl (chat messages in the Llama-3.1/3.2 (Today Date: 26 Jul 2024) chat "
                                        "template): 2 rows") != std::string::npos);

    const struct { const char* row; const char* message; } bad[] = {
        {R"({"messages": [{"role": "user", "content": "a"}]})", "fmt_bad_chat.jsonl:1: \"messages\" has no assistant turn to train on"},
        {R"({"messages": []})", "fmt_bad_chat.jsonl:1: field \"messages\" must be a non-empty list"},
        {R"({"messages": "hi"})", "fmt_bad_chat.jsonl:1: field \"messages\" must be a non-empty list"},
        {R"({"messages": [{"role": "tool", "content": "a"}]})", "fmt_bad_chat.jsonl:1: messages[0]: role \"tool\" is not supported"},
        {R"({"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}]}]})",
         "fmt_bad_chat.jsonl:1: messages[0]: field \"content\" must be a string, not an array"},
        {R"({"messages": [{"content": "a"}]})", "fmt_bad_chat.jsonl:1: messages[0]: missing field \"role\""},
        {R"({"messages": [{"role": "assistant", "content": "", "tool_calls": [{}]}]})", "messages[0]: tool calls are not supported"},
        {R"({"messages": [7]})", "fmt_bad_chat.jsonl:1: messages[0] must be a {\"role\", \"content\"} object, not a number"},
    };
    for (const auto& b : bad) {
        CAPTURE(b.row);
        CHECK_THROWS_WITH_AS(load("fmt_bad_chat.jsonl", std::string(b.row) + "\n", &mt), doctest::Contains(b.message), Error);
    }
}

TEST_CASE("data formats: TRL prompt/completion, conversational (loss on the completion) and standard") {
    const Tokenizer& tok = default_tokenizer();
    ModelTokens mt = model_with_template("llama-3-instruct.jinja");
    Dataset c = load("fmt_conv.jsonl", R"({"prompt": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},)"
                                       R"( {"role": "user", "content": "Name?"}], "completion": [{"role": "assistant", "content": "Ada"}]})" "\n", &mt);
    Dataset m = load("fmt_conv_m.jsonl", R"({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},)"
                                         R"( {"role": "user", "content": "Name?"}, {"role": "assistant", "content": "Ada"}]})" "\n", &mt);
    CHECK(c.rows[0].ids == m.rows[0].ids);  // one conversation
    CHECK(loss_runs(tok, c.rows[0]) == std::vector<std::string>{"Ada<|eot_id|>"});  // the prompt's answer takes none
    CHECK(loss_runs(tok, m.rows[0]) == std::vector<std::string>{"Hello<|eot_id|>", "Ada<|eot_id|>"});
    CHECK(data_summary("train", c).find("(conversational prompt/completion in the Llama-3.0 chat template)") != std::string::npos);

    Dataset s = load("fmt_pc.jsonl", "{\"prompt\": \"The sky is\", \"completion\": \" blue.\"}\n", &mt);
    CHECK(s.rows[0].ids == cat({{128000}, tok.encode("The sky is blue."), {128001}}));
    CHECK(loss_runs(tok, s.rows[0]) == std::vector<std::string>{" blue." + kEos});
    CHECK_THROWS_WITH_AS(load("fmt_pc_bad.jsonl", R"({"prompt": [{"role": "user", "content": "a"}], "completion": "b"})" "\n", &mt),
                         doctest::Contains("fmt_pc_bad.jsonl:1: field \"completion\" must be a non-empty list"), Error);
    CHECK_THROWS_WITH_AS(load("fmt_pc_bad2.jsonl", R"({"prompt": [{"role": "user", "content": "a"}], "completion": [{"role": "user", "content": "b"}]})" "\n", &mt),
                         doctest::Contains("fmt_pc_bad2.jsonl:1: \"completion\" has no assistant turn to train on"), Error);
}

TEST_CASE("data formats: Alpaca with and without input, in Stanford Alpaca's prompt") {
    const Tokenizer& tok = default_tokenizer();
    Dataset d = load("fmt_alpaca.json", R"([{"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
        {"instruction": "Name a color.", "input": "", "output": "Red", "text": "the rendered prompt, not read"},
        {"instruction": "Name a fruit.", "output": "Pear"}])");
    REQUIRE(d.rows.size() == 3);
    std::string with_input = "Below is an instruction that describes a task, paired with an input that provides further context. "
                             "Write a response that appropriately completes the request.\n\n### Instruction:\nAdd the numbers.\n\n"
                             "### Input:\n2 and 3\n\n### Response:\n";
    std::string without = "Below is an instruction that describes a task. Write a response that appropriately completes the "
                          "request.\n\n### Instruction:\nName a color.\n\n### Response:\n";
    CHECK(d.rows[0].ids == cat({{128000}, tok.encode(with_input + "5"), {128001}}));
    CHECK(d.rows[1].ids == cat({{128000}, tok.encode(without + "Red"), {128001}}));
    CHECK(loss_runs(tok, d.rows[0]) == std::vector<std::string>{"5" + kEos});
    CHECK(loss_runs(tok, d.rows[2]) == std::vector<std::string>{"Pear" + kEos});
    CHECK(data_summary("train", d).find("fmt_alpaca.json (Alpaca): 3 rows") != std::string::npos);
    ModelTokens mt = model_tokens(tok, "");
    Dataset chat = load("fmt_alpaca_chat.jsonl", R"({"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"})" "\n", &mt, true);
    CHECK(tok.decode(chat.rows[0].ids) == kBos + "<|start_header_id|>user<|end_header_id|>\n\nAdd the numbers.\n\n2 and 3<|eot_id|>"
                                          "<|start_header_id|>assistant<|end_header_id|>\n\n5<|eot_id|>");
    CHECK_THROWS_WITH_AS(load("fmt_alpaca_bad.jsonl", R"({"instruction": "x", "input": 3, "output": "y"})" "\n"),
                         doctest::Contains("fmt_alpaca_bad.jsonl:1: field \"input\" must be a string, not a number"), Error);
    CHECK_THROWS_WITH_AS(load("fmt_alpaca_bad2.jsonl", R"({"instruction": "x"})" "\n"),
                         doctest::Contains("fmt_alpaca_bad2.jsonl:1: missing field \"output\""), Error);
}

TEST_CASE("data formats: SQuAD's nested answers, WikiQA's labels (label 0 rows dropped and counted), QA") {
    const Tokenizer& tok = default_tokenizer();
    Dataset squad = load("fmt_squad.jsonl",
                         R"({"id": "5733", "title": "Notre_Dame", "context": "Founded in 1842.", "question": "When was it founded?", "answers": {"text": ["1842", "in 1842"], "answer_start": [11, 8]}})" "\n"
                         R"({"id": "5734", "title": "x", "context": "c", "question": "Unanswerable?", "answers": {"text": [], "answer_start": []}})" "\n");
    REQUIRE(squad.rows.size() == 1);
    CHECK(squad.rows[0].ids == cat({{128000}, tok.encode("Question: When was it founded?\nContext: Founded in 1842.\nAnswer: 1842"), {128001}}));
    CHECK(loss_runs(tok, squad.rows[0]) == std::vector<std::string>{" 1842" + kEos});
    std::string s = data_summary("train", squad);
    CHECK(s.find("fmt_squad.jsonl (SQuAD): 1 rows") != std::string::npos);
    std::string dropped = ", 1 rows dropped (SQuAD questions without an answer)";  // the end of the line
    CHECK(s.substr(s.size() - std::min(s.size(), dropped.size())) == dropped);

    uint64_t seed = uint64_t(time(nullptr));
    CAPTURE(seed);
    Rng rng(seed);
    std::string wiki;
    int ones = 0, zeros = 0;
    for (int i = 0; i < 40; ++i) {
        bool one = rng.below(5) == 0 || i == 0;
        (one ? ones : zeros)++;
        wiki += "{\"question_id\": \"Q" + std::to_string(i) + "\", \"question\": \"how are glacier caves formed?\", \"document_title\": "
                "\"Glacier cave\", \"" + (i % 2 ? "answer" : "sentence") + "\": \"Sentence " + std::to_string(i) + ".\", \"label\": " +
                (one ? "1" : "0") + "}\n";
    }
    Dataset w = load("fmt_wikiqa.jsonl", wiki);
    CHECK(int(w.rows.size()) == ones);
    CHECK(w.stats.dropped.at("WikiQA label 0: a candidate sentence that does not answer") == zeros);
    CHECK(w.stats.documents == 40);
    CHECK(data_summary("train", w).find("fmt_wikiqa.jsonl (WikiQA): " + std::to_string(ones) + " rows") != std::string::npos);
    CHECK(data_summary("train", w).find(", " + std::to_string(zeros) + " rows dropped (WikiQA label 0: a candidate sentence that "
                                        "does not answer)") != std::string::npos);
    CHECK(w.rows[0].ids == cat({{128000}, tok.encode("Question: how are glacier caves formed?\nAnswer: Sentence 0."), {128001}}));
    Dataset train = w;  // the drop count stays with the training part of a split
    if (w.rows.size() > 1) {
        Dataset eval = split_eval(train, 0.5, 1);
        CHECK(data_summary("train", train).find(std::to_string(zeros) + " rows dropped") != std::string::npos);
        CHECK(data_summary("eval", eval).find("rows dropped") == std::string::npos);
    }

    // a null context (how `datasets` writes a column a row lacks) is no context, as Alpaca's null input is no input
    Dataset nulls = load("fmt_null_context.jsonl", R"({"question": "how are glacier caves formed?", "answer": "Sentence 0.", "context": null})" "\n");
    CHECK(nulls.rows[0].ids == w.rows[0].ids);

    const struct { const char* row; const char* message; } bad[] = {
        {R"({"question": "q", "answer": "a", "label": 2})", "fmt_bad_qa.jsonl:1: field \"label\" must be 0 or 1"},
        {R"({"question": "q", "answer": "a", "label": "1"})", "fmt_bad_qa.jsonl:1: field \"label\" must be 0 or 1"},
        {R"({"question": "q", "sentence": "a"})", "fmt_bad_qa.jsonl:1: a WikiQA row (\"sentence\") needs its \"label\""},
        {R"({"question": "q", "context": "c", "answers": ["a"]})", "fmt_bad_qa.jsonl:1: field \"answers\" must be {\"text\": [...]"},
        {R"({"question": "q", "context": "c", "answers": {"text": [5]}})", "fmt_bad_qa.jsonl:1: answers.text[0] must be a string"},
        {R"({"question": "q", "answers": {"text": ["a"]}})", "fmt_bad_qa.jsonl:1: missing field \"context\""},
    };
    for (const auto& b : bad) {
        CAPTURE(b.row);
        CHECK_THROWS_WITH_AS(load("fmt_bad_qa.jsonl", std::string(b.row) + "\n"), doctest::Contains(b.message), Error);
    }
    CHECK_THROWS_WITH_AS(load("fmt_all_dropped.jsonl", "{\"question\": \"q\", \"answer\": \"a\", \"label\": 0}\n"),
                         doctest::Contains("fmt_all_dropped.jsonl has no rows to train on, 1 rows dropped (WikiQA label 0"), Error);
}

TEST_CASE("data formats: decided by content, not by the file name") {
    const Tokenizer& tok = default_tokenizer();
    Dataset noext = load("fmt_rows_without_extension", "{\"question\": \"Q?\", \"answer\": \"A\"}\n\n{\"text\": \"T\"}\n");
    CHECK(noext.rows.size() == 2);
    CHECK(data_summary("train", noext).find("fmt_rows_without_extension (question/answer, text): 2 rows") != std::string::npos);
    Dataset txt = load("fmt_rows.txt", "\xEF\xBB\xBF[{\"text\": \"in an array\"}]");  // a BOM, then one JSON array
    CHECK(txt.rows[0].ids == cat({{128000}, tok.encode("in an array"), {128001}}));
    std::string prose = "{curly braces open this essay, which is no JSON}\nSecond line.\n";
    Dataset text = load("fmt_prose.jsonish", prose);
    CHECK(text.corpus);
    CHECK(text.rows[0].ids == cat({{128000}, tok.encode(prose), {128001}}));
    CHECK(data_summary("train", text).find("fmt_prose.jsonish (plain text): 1 documents") != std::string::npos);
    CHECK_THROWS_WITH_AS(load("fmt_prose.jsonl", prose), doctest::Contains("fmt_prose.jsonl:1:2: "), Error);  // named JSON: must be
    CHECK_THROWS_WITH_AS(load("fmt_words.jsonl", "just words\n"),
                         doctest::Contains("fmt_words.jsonl: expected JSON rows (a JSON object per line, or one array of objects)"), Error);

    std::string dir = temp_dir("fmt_jsonl_dir");  // a directory of JSON Lines is rows, not text
    temp_file("fmt_jsonl_dir/b.jsonl", "{\"text\": \"second\"}\n");
    temp_file("fmt_jsonl_dir/a.jsonl", "{\"text\": \"first\"}\n{\"text\": \"again\"}\n");
    DataOptions opt;
    Dataset rows = load_dataset(dir, tok, opt);
    CHECK(!rows.corpus);
    REQUIRE(rows.rows.size() == 3);
    CHECK(rows.rows[0].ids == cat({{128000}, tok.encode("first"), {128001}}));
    CHECK(rows.rows[2].ids == cat({{128000}, tok.encode("second"), {128001}}));
    temp_file("fmt_jsonl_dir/notes.txt", "a plain text file beside them");
    CHECK_THROWS_WITH_AS(load_dataset(dir, tok, opt), doctest::Contains(("dataset directory " + dir + " mixes JSON rows (" + dir +
                                                                        "/a.jsonl) and plain text (" + dir + "/notes.txt)").c_str()), Error);
}

TEST_CASE("data formats: what is no dataset is one error, before anything blocks") {
    const Tokenizer& tok = default_tokenizer();
    DataOptions opt;
    CHECK_THROWS_WITH_AS(load_dataset("/bin/ls", tok, opt), doctest::Contains("dataset /bin/ls is not text ("), Error);
    CHECK_THROWS_WITH_AS(load_dataset(temp_file("fmt_nul.txt", std::string("text\0more", 9)), tok, opt),
                         doctest::Contains("fmt_nul.txt is not text (a NUL byte at offset 4)"), Error);
    CHECK_THROWS_WITH_AS(load_dataset(temp_file("fmt_latin1.jsonl", "{\"text\": \"caf\xE9\"}\n"), tok, opt),
                         doctest::Contains("fmt_latin1.jsonl is not text (byte 0xE9 at offset 13 is not UTF-8)"), Error);
    std::string fifo = temp_dir("fmt_fifo") + "/pipe.jsonl";
    REQUIRE(mkfifo(fifo.c_str(), 0600) == 0);
    CHECK_THROWS_WITH_AS(load_dataset(fifo, tok, opt), doctest::Contains(("dataset " + fifo + " is a FIFO (named pipe), not a file").c_str()), Error);
    CHECK_THROWS_WITH_AS(load_dataset(temp_dir("fmt_fifo"), tok, opt), doctest::Contains((fifo + " is a FIFO").c_str()), Error);  // inside a directory
    CHECK_THROWS_WITH_AS(load_dataset("/dev/null", tok, opt), doctest::Contains("dataset /dev/null is a character device, not a file"), Error);
    CHECK_THROWS_WITH_AS(load_dataset("", tok, opt), doctest::Contains("dataset path is empty"), Error);

    CHECK(data_paths("a.jsonl,b", "--data") == std::vector<std::string>{"a.jsonl", "b"});
    for (const char* list : {"a.jsonl,", ",a.jsonl", "a,,b", ","})
        CHECK_THROWS_WITH_AS(data_paths(list, "--data"), doctest::Contains((std::string("--data \"") + list + "\" has an empty entry").c_str()), Error);
    CHECK_THROWS_WITH_AS(data_paths("", "--eval-data"), doctest::Contains("--eval-data is empty"), Error);
}
