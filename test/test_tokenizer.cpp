// test/test_tokenizer.cpp — the Llama-3 tokenizer against Hugging Face `tokenizers` (golden ids made by
// test/make_golden_tokenizer.py), round trips on random text, special tokens, ill-formed UTF-8, and
// each broken tokenizer file.
#include "test.h"

#include <unistd.h>

#include "data.h"

namespace {

const Json& golden() {
    static Json g = read_json_file("test/golden/tokenizer_ids.json");
    return g;
}

std::string from_hex(const std::string& hex) {
    std::string out;
    for (size_t i = 0; i + 1 < hex.size(); i += 2) out += char(std::stoi(hex.substr(i, 2), nullptr, 16));
    return out;
}

}  // namespace

TEST_CASE("tokenizer: ids equal Hugging Face on the golden texts") {
    const Tokenizer& tok = default_tokenizer();
    int checked = 0;
    for (const Json& c : golden().find("cases")->array) {
        const std::string& text = c.find("text")->string;
        CAPTURE(text);
        CHECK(tok.encode(text) == ids_of(*c.find("ids")));
        ++checked;
    }
    CHECK(checked >= 60);
}

TEST_CASE("tokenizer: ill-formed UTF-8 is encoded as HF encodes its U+FFFD replacement") {
    const Tokenizer& tok = default_tokenizer();
    for (const Json& c : golden().find("invalid_utf8")->array) {
        std::string bytes = from_hex(c.find("bytes_hex")->string);
        CAPTURE(c.find("bytes_hex")->string);
        CHECK(tok.encode(bytes) == ids_of(*c.find("ids")));
    }
    // Decoding ids whose bytes are not UTF-8 (a lone byte token) gives U+FFFD, as HF's decode does.
    std::vector<int32_t> lone = tok.encode("\xC3\xA9");  // "é" is one token made of two bytes
    REQUIRE(lone.size() == 1);
    std::vector<int32_t> half = tok.encode_ordinary("x");
    CHECK(tok.decode({lone[0]}) == "\xC3\xA9");
    CHECK(tok.decode(half) == "x");
}

TEST_CASE("tokenizer: every default data file equals HF id for id (count and hash)") {
    check_golden_files(default_tokenizer(), *golden().find("files"));
}

TEST_CASE("tokenizer: decode(encode(x)) == x on random text") {
    const Tokenizer& tok = default_tokenizer();
    uint64_t base = uint64_t(time(nullptr));
    for (uint64_t seed = 0; seed < 200; ++seed) {
        std::string text = random_text(base + seed, 1 + seed * 5);
        CAPTURE(text);
        CHECK(tok.decode(tok.encode(text)) == text);
    }
}

TEST_CASE("tokenizer: special tokens") {
    const Tokenizer& tok = default_tokenizer();
    CHECK(tok.vocab_size() == 128256);
    CHECK(tok.special_id("<|begin_of_text|>") == 128000);
    CHECK(tok.special_id("<|end_of_text|>") == 128001);
    CHECK(tok.special_id("<|eot_id|>") == 128009);
    CHECK(tok.special_id("<|start_header_id|>") == 128006);
    CHECK_THROWS_WITH_AS(tok.special_id("<|nope|>"), doctest::Contains("no special token <|nope|>"), Error);
    std::vector<int32_t> ids = tok.encode("a<|eot_id|>b");
    REQUIRE(ids.size() == 3);
    CHECK(ids[1] == 128009);
    std::vector<int32_t> plain = tok.encode_ordinary("a<|eot_id|>b");  // user text: no special ids
    for (int32_t id : plain) CHECK(id < 128000);
    CHECK(tok.decode(plain) == "a<|eot_id|>b");
    CHECK(tok.decode(ids) == "a<|eot_id|>b");
    CHECK_THROWS_WITH_AS(tok.decode({128256}), doctest::Contains("outside the vocabulary"), Error);
    CHECK_THROWS_WITH_AS(tok.decode({-1}), doctest::Contains("outside the vocabulary"), Error);
    CHECK(tok.encode("").empty());
    CHECK(tok.family() == TokenizerFamily::llama3);
    CHECK(tok.token_id("<|eot_id|>") == 128009);                 // an added token, by its content
    CHECK(tok.token_id("\xC4\xA0the") == tok.encode(" the")[0]);  // "Ġthe": a vocabulary entry, as the file spells it
    CHECK(tok.token_id(" the") == -1);                           // raw bytes are not a spelling
    CHECK(tok.token_id("<|nope|>") == -1);
}

TEST_CASE("tokenizer: the split pattern on chosen strings") {
    const Tokenizer& tok = default_tokenizer();
    auto pieces = [&](const std::string& s) {
        std::vector<std::string> out;
        for (auto p : tok.split(s)) out.emplace_back(p);
        return out;
    };
    using V = std::vector<std::string>;
    CHECK(pieces("Hello world") == V{"Hello", " world"});
    CHECK(pieces("I'm 12345!") == V{"I", "'m", " ", "123", "45", "!"});
    CHECK(pieces("a  b") == V{"a", " ", " b"});
    CHECK(pieces("x \n\n y") == V{"x", " \n\n", " y"});
    CHECK(pieces("end   ") == V{"end", "   "});
    CHECK(pieces("$x ...\n") == V{"$x", " ...\n"});
}

namespace {
// A small byte-level BPE tokenizer.json: 256 byte tokens, two merges, one special token; `edit` alters it.
std::string tiny_tokenizer(const std::string& pattern_or_edit = "") {
    std::string vocab;
    auto cp_of = [](int b) {  // the byte-level alphabet
        int n = 0;
        for (int x = 0; x < 256; ++x) {
            bool printable = (x >= '!' && x <= '~') || (x >= 0xA1 && x <= 0xAC) || (x >= 0xAE && x <= 0xFF);
            if (x == b) return printable ? x : 256 + n;
            if (!printable) ++n;
        }
        return -1;
    };
    for (int b = 0; b < 256; ++b) {
        int cp = cp_of(b);
        std::string s;
        if (cp < 0x80) s = std::string(1, char(cp));
        else s = std::string{char(0xC0 | cp >> 6), char(0x80 | (cp & 0x3F))};
        vocab += (b ? ", " : "") + json_quote(s) + ": " + std::to_string(b);
    }
    vocab += ", \"ab\": 256, \"abc\": 257";
    std::string pattern = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\\\r\\\\n\\\\p{L}\\\\p{N}]?\\\\p{L}+|\\\\p{N}{1,3}| "
                          "?[^\\\\s\\\\p{L}\\\\p{N}]+[\\\\r\\\\n]*|\\\\s*[\\\\r\\\\n]+|\\\\s+(?!\\\\S)|\\\\s+";
    std::string json = "{\"normalizer\": null, \"pre_tokenizer\": {\"type\": \"Sequence\", \"pretokenizers\": ["
                       "{\"type\": \"Split\", \"pattern\": {\"Regex\": \"" + pattern + "\"}, \"behavior\": \"Isolated\"}, "
                       "{\"type\": \"ByteLevel\", \"add_prefix_space\": false, \"use_regex\": false}]},"
                       "\"added_tokens\": [{\"id\": 258, \"content\": \"<|end|>\", \"special\": true}],"
                       "\"model\": {\"type\": \"BPE\", \"vocab\": {" + vocab + "}, \"merges\": [\"a b\", \"ab c\"]}}";
    if (pattern_or_edit == "bad pattern") json.replace(json.find("(?i:"), 4, "(?x:");
    if (pattern_or_edit == "bad merge") json.replace(json.find("\"ab c\""), 6, "\"ab q\"");
    if (pattern_or_edit == "bad vocab") json.replace(json.find("\"ab\": 256"), 9, "\"a b\": 256");
    if (pattern_or_edit == "gap") json.replace(json.find("\"id\": 258"), 9, "\"id\": 300");
    if (pattern_or_edit == "wordpiece") json.replace(json.find("\"BPE\""), 5, "\"WordPiece\"");
    return json;
}
}  // namespace

TEST_CASE("tokenizer: a tiny tokenizer file merges by rank") {
    Tokenizer tok = Tokenizer::load(temp_file("tiny_tokenizer.json", tiny_tokenizer()));
    CHECK(tok.vocab_size() == 259);
    CHECK(tok.encode("abc") == std::vector<int32_t>{257});
    CHECK(tok.encode("abd") == std::vector<int32_t>{256, 'd'});
    CHECK(tok.encode("cab<|end|>") == std::vector<int32_t>{'c', 256, 258});
    CHECK(tok.decode({257, 258}) == "abc<|end|>");
}

TEST_CASE("tokenizer: broken files give one error naming the file") {
    const struct { const char* edit; const char* message; } cases[] = {
        {"bad pattern", "unsupported pre_tokenizer"},
        {"bad merge", "names a token not in the vocabulary"},
        {"bad vocab", "is not in the byte-level alphabet"},
        {"gap", "is missing (ids must be contiguous)"},
        {"wordpiece", "unsupported tokenizer model"},
    };
    for (const auto& c : cases) {
        std::string path = temp_file(std::string("broken_") + c.edit[0] + c.edit[4] + ".json", tiny_tokenizer(c.edit));
        CAPTURE(c.edit);
        CHECK_THROWS_WITH_AS(Tokenizer::load(path), doctest::Contains(c.message), Error);
        CHECK_THROWS_WITH_AS(Tokenizer::load(path), doctest::Contains(path.c_str()), Error);
    }
    CHECK_THROWS_WITH_AS(Tokenizer::load("/nonexistent/tokenizer.json"),
                         doctest::Contains("cannot read /nonexistent/tokenizer.json"), Error);
    std::string truncated = temp_file("truncated_tokenizer.json", tiny_tokenizer().substr(0, 500));
    CHECK_THROWS_WITH_AS(Tokenizer::load(truncated), doctest::Contains("truncated_tokenizer.json:1:"), Error);
    CHECK_THROWS_WITH_AS(Tokenizer::load(temp_file("array.json", "[1, 2]")), doctest::Contains("not a tokenizer.json"), Error);
}
