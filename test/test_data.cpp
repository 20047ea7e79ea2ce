// test/test_data.cpp — datasets (every row form, corpora, masks, truncation, packing), the model's special
// tokens and both families' templates, each bad input, the train/eval split, the deterministic shuffle, and
// rank sharding for 1..8 ranks.
#include "test.h"

#include <algorithm>
#include <map>
#include <set>

#include "data.h"

namespace {

std::vector<int32_t> cat(std::initializer_list<std::vector<int32_t>> parts) {
    std::vector<int32_t> out;
    for (const auto& p : parts) out.insert(out.end(), p.begin(), p.end());
    return out;
}
std::vector<int32_t> masked(size_t n) { return std::vector<int32_t>(n, kIgnoreIndex); }

Dataset load_rows(const std::string& name, const std::string& jsonl, DataOptions opt = DataOptions()) {
    return load_dataset(temp_file(name, jsonl), default_tokenizer(), opt);
}

}  // namespace

TEST_CASE("data: QA rows use the template and mask the prompt") {
    const Tokenizer& tok = default_tokenizer();
    int32_t bos = 128000, eos = 128001;
    Dataset d = load_rows("qa.jsonl", "{\"question\": \"What is a harbor?\", \"answer\": \"a sheltered port\"}\n"
                                      "\n"
                                      "{\"question\": \"Q2\", \"context\": \"some context\", \"answer\": \"A2\"}\n");
    REQUIRE(d.rows.size() == 2);
    std::vector<int32_t> prompt = cat({{bos}, tok.encode("Question: What is a harbor?\nAnswer:")});
    std::vector<int32_t> answer = cat({tok.encode(" a sheltered port"), {eos}});
    CHECK(d.rows[0].ids == cat({prompt, answer}));
    CHECK(d.rows[0].labels == cat({masked(prompt.size()), answer}));
    // Tokenizing prompt and answer apart gives the same ids as the whole text.
    CHECK(d.rows[0].ids == cat({{bos}, tok.encode("Question: What is a harbor?\nAnswer: a sheltered port"), {eos}}));
    CHECK(tok.decode(d.rows[1].ids) == "<|begin_of_text|>Question: Q2\nContext: some context\nAnswer: A2<|end_of_text|>");
    CHECK(d.stats.documents == 2);
    CHECK(d.stats.target_tokens == int64_t(answer.size()) + int64_t(tok.encode(" A2").size()) + 1);

    DataOptions all;
    all.train_on_prompt = true;
    Dataset a = load_rows("qa_all.jsonl", "{\"question\": \"What is a harbor?\", \"answer\": \"a sheltered port\"}\n", all);
    CHECK(a.rows[0].labels == a.rows[0].ids);
}

TEST_CASE("data: prompt/completion, text and pre-tokenized rows") {
    const Tokenizer& tok = default_tokenizer();
    Dataset d = load_rows("forms.jsonl",
                          "{\"prompt\": \"Translate: chat\", \"completion\": \" cat\"}\n"
                          "{\"text\": \"Plain text row.\"}\n"
                          "{\"input_ids\": [128000, 9906, 1917], \"labels\": [-100, -100, 1917]}\n"
                          "{\"input_ids\": [5, 6, 7, 8]}\n");
    REQUIRE(d.rows.size() == 4);
    std::vector<int32_t> p = cat({{128000}, tok.encode("Translate: chat")}), c = cat({tok.encode(" cat"), {128001}});
    CHECK(d.rows[0].ids == cat({p, c}));
    CHECK(d.rows[0].labels == cat({masked(p.size()), c}));
    CHECK(d.rows[1].ids == cat({{128000}, tok.encode("Plain text row."), {128001}}));
    CHECK(d.rows[1].labels == d.rows[1].ids);
    CHECK(d.rows[2].ids == std::vector<int32_t>{128000, 9906, 1917});
    CHECK(d.rows[2].labels == std::vector<int32_t>{-100, -100, 1917});
    CHECK(d.rows[3].labels == d.rows[3].ids);
    Dataset array = load_dataset(temp_file("rows.json", " [{\"input_ids\": [1, 2]}, {\"text\": \"x\"}]"), tok, DataOptions());
    CHECK(array.rows.size() == 2);
    CHECK(array.rows[0].ids == std::vector<int32_t>{1, 2});
    CHECK_THROWS_WITH_AS(load_dataset(temp_file("rows2.json", "[{\"input_ids\": [1, 2]}, {\"txt\": 1}]"), tok, DataOptions()),
                         doctest::Contains("rows2.json: row 2: unknown row form"), Error);
}

TEST_CASE("data: the Llama-3 chat template for Instruct models") {
    const Tokenizer& tok = default_tokenizer();
    DataOptions opt;
    opt.chat_template = true;
    Dataset d = load_rows("chat.jsonl", "{\"prompt\": \"Hi <|eot_id|> there\", \"completion\": \" Hello! \"}\n", opt);
    REQUIRE(d.rows.size() == 1);
    CHECK(tok.decode(d.rows[0].ids) ==
          "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi <|eot_id|> there<|eot_id|>"
          "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>");
    Dataset plain = load_rows("chat_plain.jsonl", "{\"prompt\": \" Hi there\\n\", \"completion\": \"Hello!\"}\n", opt);
    CHECK(plain.rows[0].ids == tok.encode("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>"
                                          "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"));
    int eots = int(std::count(d.rows[0].ids.begin(), d.rows[0].ids.end(), 128009));
    CHECK(eots == 3);  // as HF's apply_chat_template: the rendered text is tokenized, the user's "<|eot_id|>" too
    std::vector<int32_t> answer = cat({tok.encode("Hello!"), {128009}});
    size_t n = d.rows[0].ids.size();
    CHECK(std::vector<int32_t>(d.rows[0].labels.end() - long(answer.size()), d.rows[0].labels.end()) == answer);
    CHECK(std::count(d.rows[0].labels.begin(), d.rows[0].labels.end(), kIgnoreIndex) == long(n - answer.size()));
    CHECK(data_summary("train", d).find("chat.jsonl (prompt/completion in the Llama-3.0 chat template): 1 rows") != std::string::npos);
}

TEST_CASE("data: the model's special tokens come from its files, later files overriding earlier ones") {
    const Tokenizer& tok = default_tokenizer();
    ModelTokens d = model_tokens(tok, "");
    CHECK(d.bos == 128000);
    CHECK(d.eos == std::vector<int32_t>{128001});
    CHECK(d.pad == 128001);
    CHECK(d.chat.family == ChatFamily::llama3);
    CHECK(d.source.find("its own conventions") != std::string::npos);
    ModelTokens l2 = model_tokens(llama2_tokenizer(), "");
    CHECK((l2.bos == 1 && l2.eos == std::vector<int32_t>{2} && l2.pad == 2 && l2.chat.family == ChatFamily::llama2));
    CHECK((l2.chat.bos_token == "<s>" && l2.chat.eos_token == "</s>" && d.chat.bos_token == "<|begin_of_text|>"));

    uint64_t seed = uint64_t(time(nullptr));
    Rng rng(seed);
    std::vector<int32_t> id;  // five distinct reserved special tokens
    while (id.size() < 5) {
        int32_t x = 128002 + int32_t(rng.below(254));
        if (std::find(id.begin(), id.end(), x) == id.end()) id.push_back(x);
    }
    auto name = [&](int32_t x) { return tok.decode({x}); };
    std::string dir = temp_dir("model_" + std::to_string(seed));
    temp_file("model_" + std::to_string(seed) + "/config.json", "{\"bos_token_id\": " + std::to_string(id[0]) +
              ", \"eos_token_id\": [" + std::to_string(id[1]) + ", " + std::to_string(id[2]) + "], \"vocab_size\": 128256}");
    ModelTokens c = model_tokens(tok, dir);
    CHECK(c.bos == id[0]);
    CHECK(c.eos == std::vector<int32_t>{id[1], id[2]});
    CHECK(c.pad == id[1]);
    CHECK(c.source == dir + ": config.json");
    temp_file("model_" + std::to_string(seed) + "/generation_config.json",
              "{\"eos_token_id\": [" + std::to_string(id[2]) + ", " + std::to_string(id[3]) + "]}");
    ModelTokens g = model_tokens(tok, dir);  // generation_config's list wins
    CHECK(g.eos == std::vector<int32_t>{id[2], id[3]});
    temp_file("model_" + std::to_string(seed) + "/tokenizer_config.json", "{\"eos_token\": {\"content\": \"" + name(id[1]) +
              "\"}, \"pad_token\": \"" + name(id[4]) + "\", \"bos_token\": null}");
    ModelTokens t = model_tokens(tok, dir);  // the tokenizer's eos ends rows; generation also stops on the list
    CHECK(t.bos == id[0]);
    CHECK(t.eos == std::vector<int32_t>{id[1], id[2], id[3]});
    CHECK(t.pad == id[4]);
    CHECK(t.source == dir + ": config.json, generation_config.json, tokenizer_config.json");

    const struct { const char* file; const char* json; const char* message; } bad[] = {
        {"config.json", "{\"eos_token_id\": 999999}", "config.json: eos_token_id holds 999999, not a token id of"},
        {"config.json", "{\"bos_token_id\": \"x\"}", "config.json: bos_token_id holds a string"},
        {"generation_config.json", "{\"eos_token_id\": [1, -2]}", "generation_config.json: eos_token_id holds -2"},
        {"tokenizer_config.json", "{\"eos_token\": \"<|nope|>\"}", "tokenizer_config.json: eos_token \"<|nope|>\" is not a token of"},
        {"tokenizer_config.json", "{\"pad_token\": 5}", "tokenizer_config.json: pad_token must be a string"},
        {"config.json", "[1]", "config.json: expected a JSON object"},
    };
    for (const auto& b : bad) {
        std::string sub = "bad_model_" + std::string(b.file) + std::to_string(seed);
        std::string bdir = temp_dir(sub);
        temp_file(sub + "/" + b.file, b.json);
        CAPTURE(std::string(b.json));
        CHECK_THROWS_WITH_AS(model_tokens(tok, bdir), doctest::Contains(b.message), Error);
    }
    CHECK_NOTHROW(check_vocab(tok, 128256, "tok.json", "model/config.json"));
    CHECK_THROWS_WITH_AS(check_vocab(tok, 32000, "tok.json", "model/config.json"),
                         doctest::Contains("tok.json has 128256 token ids but model/config.json has vocab_size 32000"), Error);
}

TEST_CASE("data: Llama-2-family rows use <s> and </s> and the Llama-2 chat template") {
    const Tokenizer& tok = llama2_tokenizer();
    ModelTokens mt = model_tokens(tok, "");
    DataOptions opt;
    opt.tokens = &mt;
    std::string qa = "{\"question\": \"What is a harbor?\", \"answer\": \"a sheltered port\"}\n";
    Dataset d = load_dataset(temp_file("l2_qa.jsonl", qa + "{\"text\": \"Plain text.\"}\n"), &tok, 32000, opt);
    std::string prompt = "Question: What is a harbor?\nAnswer:";
    std::vector<int32_t> ids = cat({{1}, tok.encode(prompt + " a sheltered port"), {2}});
    size_t n_prompt = 1 + tok.encode(prompt).size();
    CHECK(d.rows[0].ids == ids);
    CHECK(d.rows[0].labels == cat({masked(n_prompt), std::vector<int32_t>(ids.begin() + long(n_prompt), ids.end())}));
    CHECK(tok.decode(d.rows[0].ids) == "<s> " + prompt + " a sheltered port</s>");
    CHECK(d.rows[1].ids == cat({{1}, tok.encode("Plain text."), {2}}));

    opt.chat_template = true;  // <s>[INST] {user} [/INST] {answer} </s>, tokenized as HF tokenizes the rendering
    Dataset c = load_dataset(temp_file("l2_chat.jsonl", "{\"prompt\": \" Hi there \", \"completion\": \"Hello!\\n\"}\n"
                                                        "{\"prompt\": \"a <s> b\", \"completion\": \"c\"}\n"), &tok, 32000, opt);
    CHECK(c.rows[0].ids == tok.encode("<s>[INST] Hi there [/INST] Hello! </s>"));
    CHECK(tok.decode(c.rows[0].ids) == "<s> [INST] Hi there [/INST] Hello! </s>");
    size_t answer = 1 + tok.encode("[INST] Hi there [/INST]").size();
    CHECK(c.rows[0].labels == cat({masked(answer), std::vector<int32_t>(c.rows[0].ids.begin() + long(answer), c.rows[0].ids.end())}));
    CHECK(c.rows[1].ids == tok.encode("<s>[INST] a <s> b [/INST] c </s>"));  // HF's: the user's "<s>" is <s> too
    CHECK(std::count(c.rows[1].ids.begin(), c.rows[1].ids.end(), 1) == 2);

    std::string dir = temp_dir("l2_corpus");
    temp_file("l2_corpus/a.txt", "First document.");
    temp_file("l2_corpus/b.txt", "Second.");
    opt.seq_len = 64;
    Dataset corpus = load_dataset(dir, &tok, 32000, opt);
    CHECK(corpus.rows[0].ids == cat({{1}, tok.encode("First document."), {2, 1}, tok.encode("Second."), {2}}));

    ModelTokens wrong = mt;  // a template whose tokens the tokenizer lacks
    wrong.chat.family = ChatFamily::llama3, wrong.chat.name = "Llama-3.0";
    opt.tokens = &wrong;
    CHECK_THROWS_WITH_AS(load_dataset(temp_file("l2_wrong.jsonl", qa), &tok, 32000, opt),
                         doctest::Contains("the Llama-3.0 chat template needs the token <|start_header_id|>, which "
                                           "data/llama2_tokenizer.json lacks"), Error);
}

TEST_CASE("data: pre-tokenized rows need no tokenizer; text without one is one error") {
    DataOptions opt;
    Dataset d = load_dataset(temp_file("ids_only.jsonl", "{\"input_ids\": [5, 999]}\n{\"input_ids\": [7, 8], \"labels\": [-100, 8]}\n"),
                             nullptr, 1000, opt);
    CHECK(d.rows.size() == 2);
    CHECK(d.rows[0].ids == std::vector<int32_t>{5, 999});
    CHECK_THROWS_WITH_AS(load_dataset(temp_file("ids_big.jsonl", "{\"input_ids\": [5, 1000]}\n"), nullptr, 1000, opt),
                         doctest::Contains("ids_big.jsonl:1: field \"input_ids\" holds 1000, not a token id in [0, 1000)"), Error);
    CHECK_THROWS_WITH_AS(load_dataset(temp_file("text_no_tok.jsonl", "{\"input_ids\": [1]}\n{\"text\": \"hi\"}\n"), nullptr, 1000, opt),
                         doctest::Contains("text_no_tok.jsonl:2: a text row needs a tokenizer (pass --tokenizer"), Error);
    std::string dir = temp_dir("corpus_no_tok");
    temp_file("corpus_no_tok/a.txt", "text");
    CHECK_THROWS_WITH_AS(load_dataset(dir, nullptr, 1000, opt), doctest::Contains("is plain text: it needs a tokenizer"), Error);
    CHECK_THROWS_WITH_AS(load_dataset(dir, nullptr, 0, opt), doctest::Contains("no vocabulary size"), Error);
    // a tokenizer's padding: the tokens attention_mask masks are dropped with their labels (not trained on)
    Dataset padded = load_dataset(temp_file("ids_mask.jsonl", "{\"input_ids\": [1, 9, 8, 2, 0, 0], \"attention_mask\": [1, 1, 1, 1, 0, 0]}\n"
                                                               "{\"input_ids\": [0, 1, 7], \"labels\": [-100, -100, 7], \"attention_mask\": [0, 1, 1]}\n"),
                                  nullptr, 1000, opt);
    CHECK(padded.rows[0].ids == std::vector<int32_t>{1, 9, 8, 2});
    CHECK(padded.rows[0].labels == std::vector<int32_t>{1, 9, 8, 2});
    CHECK(padded.rows[1].ids == std::vector<int32_t>{1, 7});
    CHECK(padded.rows[1].labels == std::vector<int32_t>{-100, 7});
    const std::pair<const char*, const char*> bad_masks[] = {
        {"{\"input_ids\": [1, 2], \"attention_mask\": [1]}", "ids_bad_mask.jsonl:1: field \"attention_mask\" must be a list of 0 and 1 as long as \"input_ids\" (2)"},
        {"{\"input_ids\": [1, 2], \"attention_mask\": \"11\"}", "field \"attention_mask\" must be a list of 0 and 1"},
        {"{\"input_ids\": [1, 2], \"attention_mask\": [1, 2]}", "ids_bad_mask.jsonl:1: field \"attention_mask\" holds 2, not 0 or 1"},
        {"{\"input_ids\": [1, 2], \"attention_mask\": [1, true]}", "field \"attention_mask\" holds a boolean, not 0 or 1"},
        {"{\"input_ids\": [1, 2], \"attention_mask\": [0, 0]}", "ids_bad_mask.jsonl:1: field \"attention_mask\" masks every token"}};
    for (const auto& [row, message] : bad_masks) {
        CAPTURE(row);
        CHECK_THROWS_WITH_AS(load_dataset(temp_file("ids_bad_mask.jsonl", std::string(row) + "\n"), nullptr, 1000, opt), doctest::Contains(message), Error);
    }
    // the model's vocabulary, not the tokenizer's, bounds the ids
    CHECK_THROWS_WITH_AS(load_dataset(temp_file("ids_model.jsonl", "{\"input_ids\": [5, 600]}\n"), &default_tokenizer(), 512, opt),
                         doctest::Contains("not a token id in [0, 512)"), Error);
}

TEST_CASE("data: a plain-text corpus is packed with BOS/EOS between documents") {
    const Tokenizer& tok = default_tokenizer();
    std::string dir = temp_dir("corpus");
    std::string a = random_text(uint64_t(time(nullptr)), 300), b = "Second document.\nWith two lines.\n";
    temp_file("corpus/a.txt", a);
    temp_file("corpus/b.txt", b);
    temp_file("corpus/.hidden", "ignored");
    DataOptions opt;
    opt.seq_len = 37;
    Dataset d = load_dataset(dir, tok, opt);
    std::vector<int32_t> stream = cat({{128000}, tok.encode(a), {128001}, {128000}, tok.encode(b), {128001}});
    std::vector<int32_t> joined;
    size_t second = 2 + tok.encode(a).size();  // where document b begins in the stream
    for (size_t r = 0; r < d.rows.size(); ++r) {
        const Example& row = d.rows[r];
        CHECK(row.ids.size() <= 37);
        size_t begin = joined.size();
        bool inside = second > begin && second < begin + row.ids.size();
        CHECK(row.doc_starts == (inside ? std::vector<int32_t>{int32_t(second - begin)} : std::vector<int32_t>{}));
        for (size_t k = 0; k < row.ids.size(); ++k)  // labels are the ids, but for the first token of b
            CHECK(row.labels[k] == (inside && k == second - begin ? kIgnoreIndex : row.ids[k]));
        joined.insert(joined.end(), row.ids.begin(), row.ids.end());
        CHECK(d.sequences[r] == std::vector<int64_t>{int64_t(r)});  // one chunk per sequence
    }
    CHECK(joined == stream);
    CHECK(d.rows.size() == (stream.size() + 36) / 37);
    CHECK(d.stats.documents == 2);
    CHECK(d.stats.truncated_rows == 0);
    CHECK(d.stats.target_tokens == int64_t(stream.size() - d.rows.size() - (second % 37 != 0)));
    Dataset single = load_dataset(dir + "/b.txt", tok, opt);  // a file that is not .jsonl: one document
    CHECK(single.rows[0].ids == cat({{128000}, tok.encode(b), {128001}}));
}

TEST_CASE("data: truncation is counted; best-fit packing, or one row per sequence") {
    DataOptions opt;
    opt.seq_len = 8;
    Dataset d = load_rows("long.jsonl", "{\"input_ids\": [1,2,3,4,5,6,7,8,9,10,11]}\n{\"input_ids\": [1,2,3]}\n"
                                        "{\"input_ids\": [1,2,3,4,5,6,7,8,9], \"labels\": [-100,-100,-100,-100,-100,-100,-100,-100,9]}\n", opt);
    CHECK(d.stats.truncated_rows == 2);
    CHECK(d.stats.truncated_tokens == 3 + 1);
    CHECK(d.stats.rows_without_targets == 1);
    CHECK(d.rows[0].ids.size() == 8);
    CHECK(d.sequences == std::vector<std::vector<int64_t>>{{0}, {1}, {2}});  // none fits beside another
    opt.seq_len = 6;  // lengths 5 4 3 2 1: 5 -> new (room 1), 4 -> new (2), 3 -> new (3), 2 -> the room-2 one, 1 -> room 1
    std::string rows;
    for (const char* r : {"[1,2,3,4,5]", "[1,2,3,4]", "[1,2,3]", "[1,2]", "[1]"}) rows += std::string("{\"input_ids\": ") + r + "}\n";
    Dataset p = load_rows("pack.jsonl", rows, opt);
    CHECK(p.rows.size() == 5);
    CHECK(p.sequences == std::vector<std::vector<int64_t>>{{0, 4}, {1, 3}, {2}});
    CHECK(p.stats.sequences == 3);
    CHECK(p.stats.padding_tokens == 3 * 6 - 15);
    opt.pack = false;
    Dataset u = load_rows("nopack.jsonl", rows, opt);
    CHECK(u.sequences == std::vector<std::vector<int64_t>>{{0}, {1}, {2}, {3}, {4}});
    CHECK(u.stats.padding_tokens == 5 * 6 - 15);
}

namespace {
// Rows of random lengths min..max and random ids and labels as JSONL: about a third of the labels are
// -100, never the last (so a row of two or more tokens takes loss).
std::string random_rows(Rng& rng, int n, int max, int min = 1) {
    std::string out;
    for (int i = 0; i < n; ++i) {
        int len = min + int(rng.below(uint64_t(max - min + 1)));
        std::string ids, labels;
        for (int k = 0; k < len; ++k) {
            int32_t id = 1 + int32_t(rng.below(9999));
            ids += (k ? "," : "") + std::to_string(id);
            labels += (k ? "," : "") + std::to_string(rng.below(3) == 0 && k + 1 < len ? kIgnoreIndex : id);
        }
        out += "{\"input_ids\": [" + ids + "], \"labels\": [" + labels + "]}\n";
    }
    return out;
}
}  // namespace

TEST_CASE("data: best-fit packing fills sequences, never splits a row and keeps every row once") {
    uint64_t seed = uint64_t(time(nullptr));
    CAPTURE(seed);
    Rng rng(seed);
    for (int trial = 0; trial < 20; ++trial) {
        DataOptions opt;
        opt.seq_len = 8 + int(rng.below(60));
        Dataset d = load_rows("fit.jsonl", random_rows(rng, int(rng.below(200)), opt.seq_len) + "{\"input_ids\": [1, 2]}\n", opt);
        std::vector<int> seen(d.rows.size(), 0);
        std::vector<int64_t> room;  // the reference: best fit by linear search
        std::vector<std::vector<int64_t>> expected;
        for (size_t r = 0; r < d.rows.size(); ++r) {
            int64_t len = int64_t(d.rows[r].ids.size()), best = -1;
            for (size_t s = 0; s < room.size(); ++s)
                if (room[s] >= len && (best < 0 || room[s] < room[size_t(best)])) best = int64_t(s);
            if (best < 0) best = int64_t(room.size()), room.push_back(opt.seq_len), expected.emplace_back();
            room[size_t(best)] -= len;
            expected[size_t(best)].push_back(int64_t(r));
        }
        CHECK(d.sequences == expected);
        int64_t tokens = 0;
        for (const auto& seq : d.sequences) {
            int64_t used = 0;
            for (size_t k = 0; k < seq.size(); ++k) {
                used += int64_t(d.rows[size_t(seq[k])].ids.size());
                seen[size_t(seq[k])]++;
                if (k) CHECK(seq[k] > seq[k - 1]);  // insertion order
            }
            CHECK(used <= opt.seq_len);
            tokens += used;
        }
        CHECK(std::all_of(seen.begin(), seen.end(), [](int n) { return n == 1; }));
        CHECK(tokens == d.stats.tokens);
        CHECK(d.stats.padding_tokens == int64_t(d.sequences.size()) * opt.seq_len - tokens);
    }
}

TEST_CASE("data: packed batches: positions and document starts per row, first labels masked, targets as unpacked") {
    uint64_t seed = uint64_t(time(nullptr));
    CAPTURE(seed);
    Rng rng(seed);
    DataOptions opt;
    opt.seq_len = 16 + int(rng.below(48));
    std::string jsonl = random_rows(rng, 50 + int(rng.below(100)), opt.seq_len);
    Dataset packed = load_rows("packed.jsonl", jsonl, opt);
    opt.pack = false;
    Dataset unpacked = load_rows("unpacked.jsonl", jsonl, opt);
    REQUIRE(packed.sequences.size() < unpacked.sequences.size());
    int B = 1 + int(rng.below(4)), T = opt.seq_len;
    int32_t pad = 77777;
    auto epoch_targets = [&](const Dataset& d) {
        Loader loader(d, B, T, 0, 1, seed, true, pad);
        int64_t targets = 0, tokens = 0;
        for (int64_t i = 0; i < loader.micro_batches_per_epoch(); ++i) {
            Batch b = loader.batch(1, i);
            targets += b.target_tokens, tokens += b.tokens;
        }
        CHECK(tokens == d.stats.tokens);
        return targets;
    };
    CHECK(epoch_targets(packed) == epoch_targets(unpacked));
    CHECK(epoch_targets(packed) == packed.stats.target_tokens);

    Loader loader(packed, B, T, 0, 1, seed, true, pad);
    for (int64_t i = 0; i < loader.micro_batches_per_epoch(); ++i) {
        Batch b = loader.batch(0, i);
        std::vector<int64_t> seqs = loader.batch_sequences(0, i);
        int64_t targets = 0;
        for (int r = 0; r < B; ++r) {
            size_t row = size_t(r) * size_t(T);
            int32_t t = 0;
            if (seqs[size_t(r)] >= 0) {
                for (int64_t index : packed.sequences[size_t(seqs[size_t(r)])]) {
                    const Example& ex = packed.rows[size_t(index)];
                    targets += std::count_if(ex.labels.begin() + 1, ex.labels.end(), [](int32_t l) { return l != kIgnoreIndex; });
                    for (size_t k = 0; k < ex.ids.size(); ++k, ++t) {
                        CHECK(b.ids[row + size_t(t)] == ex.ids[k]);
                        CHECK(b.labels[row + size_t(t)] == (k == 0 && t > 0 ? kIgnoreIndex : ex.labels[k]));
                        CHECK(b.doc_start[row + size_t(t)] == t - int32_t(k));
                        CHECK(b.positions[row + size_t(t)] == int32_t(k));
                    }
                }
            }
            for (int32_t p = t; p < T; ++p) {  // padding: its own document
                CHECK(b.ids[row + size_t(p)] == pad);
                CHECK(b.labels[row + size_t(p)] == kIgnoreIndex);
                CHECK(b.doc_start[row + size_t(p)] == t);
                CHECK(b.positions[row + size_t(p)] == p - t);
            }
        }
        CHECK(b.target_tokens == targets);  // the same rows unpacked take loss on exactly these
    }
    CHECK_THROWS_WITH_AS(Loader(packed, 1, T - 1, 0, 1, 1, false, 0), doctest::Contains("packed into sequences of"), Error);
}

TEST_CASE("data: a corpus chunk's documents get their own positions and document starts in the batch") {
    const Tokenizer& tok = default_tokenizer();
    std::string dir = temp_dir("doc_corpus");
    temp_file("doc_corpus/a.txt", "One short document.");
    temp_file("doc_corpus/b.txt", "Another.");
    DataOptions opt;
    opt.seq_len = 32;
    Dataset d = load_dataset(dir, tok, opt);
    REQUIRE(d.rows.size() == 1);
    int32_t second = int32_t(2 + tok.encode("One short document.").size()), end = int32_t(d.rows[0].ids.size());
    CHECK(d.rows[0].doc_starts == std::vector<int32_t>{second});
    Batch b = Loader(d, 1, 32, 0, 1, 1, false, 128001).batch(0, 0);
    for (int32_t t = 0; t < 32; ++t) {
        int32_t start = t < second ? 0 : t < end ? second : end;
        CHECK(b.doc_start[size_t(t)] == start);
        CHECK(b.positions[size_t(t)] == t - start);
    }
    CHECK(b.labels[size_t(second)] == kIgnoreIndex);  // the EOS before it does not predict its BOS
    CHECK(b.ids[size_t(second)] == 128000);
    CHECK(b.target_tokens == end - 2);
    CHECK(b.target_tokens == d.stats.target_tokens);
    CHECK(data_summary("train", d).find(": 2 documents in 1 sequences of 32 tokens") != std::string::npos);
}

TEST_CASE("data: the summary line counts rows, sequences and padding") {
    DataOptions opt;
    opt.seq_len = 6;
    Dataset d = load_rows("summary.jsonl", "{\"input_ids\": [1,2,3,4,5]}\n{\"input_ids\": [1,2,3,4]}\n"
                                           "{\"input_ids\": [1,2,3], \"labels\": [-100,2,3]}\n{\"input_ids\": [1,2,3,4,5,6,7,8]}\n", opt);
    std::string path = d.source;
    CHECK(data_summary("train", d) == "data: train " + path + " (pre-tokenized): 4 rows in 4 sequences of 6 tokens, 25.0% padding, 18 tokens "
                                      "(14 take loss), 1 rows truncated (2 tokens cut)");
    Dataset e = split_eval(d, 0.25, 3);
    CHECK(data_summary("eval", e).find(": 1 rows in 1 sequences of 6 tokens") != std::string::npos);
}

TEST_CASE("data: each bad input is one error naming file, line and field") {
    const struct { const char* jsonl; const char* message; } cases[] = {
        {"{\"text\": \"ok\"}\n{\"text\": \"broken\n", "bad.jsonl:2:10: unterminated string"},
        {"{\"text\": \"ok\"}\n\n[1, 2]\n", "bad.jsonl:3: a row must be a JSON object"},
        {"{\"title\": \"x\"}\n", "bad.jsonl:1: unknown row form"},
        {"{\"text\": \"x\", \"question\": \"q\", \"answer\": \"a\"}\n", "bad.jsonl:1: the row mixes fields"},
        {"{\"question\": \"q\", \"answer\": 5}\n", "bad.jsonl:1: field \"answer\" must be a string, not a number"},
        {"{\"question\": \"q\"}\n", "bad.jsonl:1: missing field \"answer\""},
        {"{\"prompt\": \"p\", \"completion\": null}\n", "bad.jsonl:1: field \"completion\" must be a string, not null"},
        {"{\"text\": \"\"}\n", "bad.jsonl:1: field \"text\" tokenizes to nothing"},
        {"{\"question\": \"\", \"answer\": \"a\"}\n", "bad.jsonl:1: field \"question\" tokenizes to nothing"},
        {"{\"input_ids\": [1, 999999]}\n", "bad.jsonl:1: field \"input_ids\" holds 999999, not a token id"},
        {"{\"input_ids\": [1, \"2\"]}\n", "bad.jsonl:1: field \"input_ids\" holds a string"},
        {"{\"input_ids\": []}\n", "bad.jsonl:1: field \"input_ids\" is empty"},
        {"{\"input_ids\": [1, 2], \"labels\": [1]}\n", "bad.jsonl:1: \"labels\" has 1 entries but \"input_ids\" has 2"},
        {"{\"input_ids\": [1, 2], \"labels\": [-5, 2]}\n", "bad.jsonl:1: field \"labels\" holds -5"},
        {"{\"input_ids\": 7}\n", "bad.jsonl:1: field \"input_ids\" must be an array"},
        {"\n  \n", "is empty"},
        {"{\"input_ids\": [1, 2], \"labels\": [-100, -100]}\n", "has no tokens that take loss"},
    };
    for (const auto& c : cases) {
        CAPTURE(c.jsonl);
        CHECK_THROWS_WITH_AS(load_rows("bad.jsonl", c.jsonl), doctest::Contains(c.message), Error);
    }
    DataOptions short_rows;  // the truncation named where it took every answer
    short_rows.seq_len = 3;
    CHECK_THROWS_WITH_AS(load_rows("cut.jsonl", "{\"question\": \"a harbor is what\", \"answer\": \"a port\"}\n", short_rows),
                         doctest::Contains("has no tokens that take loss (all labels are -100; 1 rows were cut at --seq 3, before their answers)"), Error);
    const Tokenizer& tok = default_tokenizer();
    CHECK_THROWS_WITH_AS(load_dataset("/nonexistent/train.jsonl", tok, DataOptions()),
                         doctest::Contains("cannot read dataset /nonexistent/train.jsonl"), Error);
    std::string empty_dir = temp_dir("empty_corpus");
    CHECK_THROWS_WITH_AS(load_dataset(empty_dir, tok, DataOptions()), doctest::Contains("has no files"), Error);
    std::string with_empty = temp_dir("corpus_with_empty");
    temp_file("corpus_with_empty/a.txt", "text");
    temp_file("corpus_with_empty/b.txt", "");
    CHECK_THROWS_WITH_AS(load_dataset(with_empty, tok, DataOptions()), doctest::Contains("corpus_with_empty/b.txt is empty"), Error);
    DataOptions tiny;
    tiny.seq_len = 1;
    CHECK_THROWS_WITH_AS(load_rows("ok.jsonl", "{\"text\": \"x\"}\n", tiny), doctest::Contains("--seq"), Error);
}

TEST_CASE("data: the eval split is deterministic, disjoint and complete") {
    std::string jsonl;
    for (int i = 0; i < 100; ++i) jsonl += "{\"input_ids\": [" + std::to_string(i + 1) + ", 7]}\n";
    Dataset a = load_rows("split.jsonl", jsonl), b = load_rows("split.jsonl", jsonl);
    Dataset ea = split_eval(a, 0.1, 42), eb = split_eval(b, 0.1, 42);
    CHECK(ea.rows.size() == 10);
    CHECK(a.rows.size() == 90);
    for (const Dataset* part : {&a, &ea}) {  // both parts packed again, over their own rows
        std::vector<int64_t> all;
        for (const auto& seq : part->sequences) all.insert(all.end(), seq.begin(), seq.end());
        std::sort(all.begin(), all.end());
        CHECK(all == epoch_order(int64_t(part->rows.size()), 0, 0, false));
        CHECK(part->stats.sequences == int64_t(part->sequences.size()));
        CHECK(part->stats.padding_tokens == part->stats.sequences * 1024 - part->stats.tokens);
    }
    std::set<int32_t> seen;
    for (const Example& r : a.rows) seen.insert(r.ids[0]);
    for (const Example& r : ea.rows) CHECK(seen.insert(r.ids[0]).second);
    CHECK(seen.size() == 100);
    for (size_t i = 0; i < ea.rows.size(); ++i) CHECK(ea.rows[i].ids == eb.rows[i].ids);
    Dataset c = load_rows("split.jsonl", jsonl);
    Dataset ec = split_eval(c, 0.1, 43);
    bool differs = false;
    for (size_t i = 0; i < ec.rows.size(); ++i) differs |= ec.rows[i].ids != ea.rows[i].ids;
    CHECK(differs);
    CHECK_THROWS_WITH_AS(split_eval(c, 1.5, 1), doctest::Contains("--eval-fraction"), Error);
    Dataset one = load_rows("one.jsonl", "{\"input_ids\": [1, 2]}\n");
    CHECK_THROWS_WITH_AS(split_eval(one, 0.5, 1), doctest::Contains("too few rows"), Error);
}

TEST_CASE("data: shuffle is a deterministic permutation per seed and epoch") {
    for (int64_t n : {1, 2, 17, 1000}) {
        std::vector<int64_t> o1 = epoch_order(n, 7, 3, true), o2 = epoch_order(n, 7, 3, true);
        CHECK(o1 == o2);
        std::vector<int64_t> sorted = o1;
        std::sort(sorted.begin(), sorted.end());
        CHECK(sorted == epoch_order(n, 7, 3, false));
        if (n >= 17) {
            CHECK(o1 != epoch_order(n, 7, 4, true));
            CHECK(o1 != epoch_order(n, 8, 3, true));
        }
    }
    Rng r(1);
    CHECK(r.next() == 0x910a2dec89025cc1ull);  // splitmix64 reference value: the stream is fixed forever
}

TEST_CASE("data: ranks get disjoint sequences covering the data and equal micro-batch counts") {
    uint64_t seed = uint64_t(time(nullptr));
    CAPTURE(seed);
    Rng rng(seed);
    for (int n : {1, 5, 13, 64, 101}) {
        DataOptions opt;
        opt.seq_len = 6;
        Dataset d = load_rows("shard.jsonl", random_rows(rng, n, 4, 2), opt);  // rows of 2..4 tokens, packed
        int64_t sequences = int64_t(d.sequences.size());
        for (int world = 1; world <= 8; ++world) {
            for (int B : {1, 3}) {
                CAPTURE(n);
                CAPTURE(world);
                CAPTURE(B);
                std::map<int64_t, int> owners, row_owners;
                int64_t batches = -1;
                for (int rank = 0; rank < world; ++rank) {
                    Loader loader(d, B, 6, rank, world, seed, true, 128001);
                    if (batches >= 0) CHECK(loader.micro_batches_per_epoch() == batches);
                    batches = loader.micro_batches_per_epoch();
                    for (int64_t i = 0; i < batches; ++i) {
                        Batch b = loader.batch(2, i);
                        std::vector<int64_t> seqs = loader.batch_sequences(2, i);
                        for (int r = 0; r < B; ++r) {
                            const int32_t* labels = &b.labels[size_t(r) * 6];
                            if (seqs[size_t(r)] < 0) {  // padding: fully masked
                                CHECK(std::all_of(labels, labels + 6, [](int32_t l) { return l == kIgnoreIndex; }));
                                continue;
                            }
                            owners[seqs[size_t(r)]]++;
                            size_t t = 0;
                            for (int64_t row : d.sequences[size_t(seqs[size_t(r)])]) {
                                row_owners[row]++;
                                CHECK(b.ids[size_t(r) * 6 + t] == d.rows[size_t(row)].ids[0]);
                                t += d.rows[size_t(row)].ids.size();
                            }
                        }
                    }
                }
                CHECK(int64_t(owners.size()) == sequences);
                for (const auto& [seq, count] : owners) CHECK(count == 1);
                CHECK(int(row_owners.size()) == n);
                for (const auto& [row, count] : row_owners) CHECK(count == 1);
                CHECK(batches == ((sequences + world - 1) / world + B - 1) / B);
            }
        }
    }
}

TEST_CASE("data: batches count the positions that take loss") {
    DataOptions opt;
    opt.seq_len = 5;
    opt.pack = false;
    Dataset d = load_rows("targets.jsonl", "{\"input_ids\": [1, 2, 3, 4], \"labels\": [1, -100, 3, 4]}\n"
                                           "{\"input_ids\": [5, 6], \"labels\": [5, 6]}\n", opt);
    Loader loader(d, 2, 5, 0, 1, 1, false, 0);
    Batch b = loader.batch(0, 0);
    CHECK(b.target_tokens == 2 + 1);  // position 0 never takes loss (HF shifts labels by one)
    CHECK(b.tokens == 6);
    CHECK(b.real_rows == 2);
    CHECK(b.ids == std::vector<int32_t>{1, 2, 3, 4, 0, 5, 6, 0, 0, 0});
    CHECK(b.positions == std::vector<int32_t>{0, 1, 2, 3, 0, 0, 1, 0, 1, 2});
    CHECK(b.doc_start == std::vector<int32_t>{0, 0, 0, 0, 4, 0, 0, 2, 2, 2});
    opt.pack = true;  // both rows in one sequence: the second row's first label is masked
    Dataset p = load_rows("targets_packed.jsonl", "{\"input_ids\": [1, 2], \"labels\": [1, 2]}\n"
                                                  "{\"input_ids\": [5, 6], \"labels\": [5, 6]}\n", opt);
    Batch q = Loader(p, 1, 5, 0, 1, 1, false, 0).batch(0, 0);
    CHECK(q.ids == std::vector<int32_t>{1, 2, 5, 6, 0});
    CHECK(q.labels == std::vector<int32_t>{1, 2, kIgnoreIndex, 6, kIgnoreIndex});
    CHECK(q.positions == std::vector<int32_t>{0, 1, 0, 1, 0});
    CHECK(q.doc_start == std::vector<int32_t>{0, 0, 2, 2, 4});
    CHECK(q.target_tokens == 2);
    CHECK_THROWS_WITH_AS(Loader(d, 0, 5, 0, 1, 1, false, 0), doctest::Contains("--micro-batch"), Error);
}

TEST_CASE("data: the default QA set and corpus load") {
    const Tokenizer& tok = default_tokenizer();
    DataOptions opt;
    opt.seq_len = 256;
    Dataset qa = load_dataset("data/qa_train.jsonl", tok, opt);
    CHECK(qa.rows.size() > 10000);
    CHECK(qa.stats.truncated_rows == 0);
    Dataset eval = load_dataset("data/qa_eval.jsonl", tok, opt);
    CHECK(eval.rows.size() > 500);
    Dataset corpus = load_dataset("data/corpus", tok, opt);
    CHECK(corpus.stats.tokens > 400000);
}
