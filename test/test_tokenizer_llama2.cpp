// test/test_tokenizer_llama2.cpp — the Llama-2-family tokenizer (SentencePiece-style BPE with byte fallback)
// against Hugging Face `tokenizers` (golden ids made by test/make_golden_tokenizer_llama2.py from the fixture
// data/llama2_tokenizer.json, whose vocabulary is Mistral 7B v0.1's), cases worked out by hand from HF's
// normalizer, BPE and decoder code, round trips on random text, the Metaspace, unknown-token and added-token
// variants on tiny files, and each unsupported tokenizer.json.
#include "test.h"

#include <unistd.h>

#include "support/json.h"
#include "support/tokenizer.h"

namespace {

const Tokenizer& llama2() { return llama2_tokenizer(); }

const Json& golden() {
    static Json g = [] {
        const char* path = "test/golden/tokenizer_llama2_ids.json";
        if (access(path, R_OK) != 0)
            fail(std::string("missing ") + path + ": make it where Python `tokenizers` is installed with "
                 "python3 test/make_golden_tokenizer_llama2.py data/llama2_tokenizer.json data " + path);
        return read_json_file(path);
    }();
    return g;
}

// Ids of tokens given by their spelling in the file; fails the test on an unknown spelling.
std::vector<int32_t> ids(const Tokenizer& tok, std::initializer_list<const char*> spellings) {
    std::vector<int32_t> out;
    for (const char* s : spellings) {
        int32_t id = tok.token_id(s);
        REQUIRE_MESSAGE(id >= 0, "no token " << s);
        out.push_back(id);
    }
    return out;
}

std::string byte_token(unsigned char b) {
    char name[8];
    std::snprintf(name, sizeof name, "<0x%02X>", b);
    return name;
}

}  // namespace

TEST_CASE("tokenizer llama2: ids, ids with specials as text, and decodes equal Hugging Face on the golden texts") {
    check_golden_texts(llama2(), golden(), 130);
}

TEST_CASE("tokenizer llama2: every default data file equals HF id for id (count and hash)") {
    check_golden_files(llama2(), *golden().find("files"));
}

TEST_CASE("tokenizer llama2: decode(encode(x)) == x on random text") {
    const Tokenizer& tok = llama2();
    uint64_t base = uint64_t(time(nullptr));
    for (uint64_t seed = 0; seed < 200; ++seed) {
        std::string text = random_text(base + seed, 1 + seed * 5);
        CAPTURE(text);
        CHECK(tok.decode(tok.encode(text)) == text);
        CHECK(tok.decode(tok.encode_ordinary(text)) == text);
    }
}

// Worked out from HF's code: the normalizer prepends "▁" to each segment between added tokens and turns
// spaces into "▁"; a character with no token becomes one <0xNN> token per UTF-8 byte; the decoder turns
// "▁" into spaces, joins the bytes of <0xNN> runs (one U+FFFD per byte when they are not UTF-8) and strips
// one leading space.
TEST_CASE("tokenizer llama2: the normalizer, byte fallback and decoder on chosen strings") {
    const Tokenizer& tok = llama2();
    CHECK(tok.family() == TokenizerFamily::llama2);
    CHECK(default_tokenizer().family() == TokenizerFamily::llama3);
    CHECK(tok.vocab_size() == 32000);
    CHECK(tok.special_id("<unk>") == 0);
    CHECK(tok.special_id("<s>") == 1);
    CHECK(tok.special_id("</s>") == 2);
    CHECK(tok.token_id("▁Hello") == 22557);  // Mistral 7B v0.1's vocabulary
    CHECK(tok.token_id("no such token") == -1);

    CHECK(tok.encode("").empty());
    CHECK(tok.encode("Hello world") == ids(tok, {"▁Hello", "▁world"}));
    CHECK(tok.encode(" leading") == ids(tok, {"▁", "▁leading"}));  // the prepended "▁", then " " -> "▁"
    CHECK(tok.encode("\n\nx") == ids(tok, {"▁", "<0x0A>", "<0x0A>", "x"}));
    CHECK(tok.encode("<s>") == std::vector<int32_t>{1});
    CHECK(tok.encode("<s></s>") == std::vector<int32_t>{1, 2});
    CHECK(tok.encode("a<s>b") == ids(tok, {"▁a", "<s>", "▁b"}));  // each segment gets its own "▁"
    CHECK(tok.decode(tok.encode("a <s> b")) == "a <s>  b");     // so spaces beside a special token double
    std::vector<int32_t> plain = tok.encode_ordinary("a<s>b");
    for (int32_t id : plain) CHECK(id > 2);
    CHECK(tok.decode(plain) == "a<s>b");

    for (std::string ch : {"🫠", "𠀋", "\xE2\x80\xA8"}) {  // no token: the bytes, after the "▁"
        std::vector<int32_t> expected = ids(tok, {"▁"});
        for (unsigned char b : ch) expected.push_back(tok.token_id(byte_token(b)));
        CAPTURE(ch);
        CHECK(tok.encode(ch) == expected);
        CHECK(expected.size() == 1 + ch.size());
        CHECK(tok.decode(expected) == ch);
    }
    CHECK(tok.decode(ids(tok, {"<0xE2>", "<0x82>"})) == "\xEF\xBF\xBD\xEF\xBF\xBD");  // not UTF-8: one U+FFFD per byte
    CHECK(tok.decode(ids(tok, {"<0x41>", "<0xFF>"})) == "\xEF\xBF\xBD\xEF\xBF\xBD");  // the whole run
    CHECK(tok.decode(ids(tok, {"<0xE2>", "<0x82>", "<0xAC>"})) == "€");
    CHECK(tok.decode(ids(tok, {"<s>", "▁Hello"})) == "<s> Hello");
    CHECK(tok.decode(ids(tok, {"▁", "▁Hello"})) == " Hello");  // only one leading space is stripped
    CHECK(tok.decode(ids(tok, {"<0x20>", "x"})) == "x");       // the strip sees the decoded bytes
    CHECK_THROWS_WITH_AS(tok.decode({32000}), doctest::Contains("outside the vocabulary"), Error);
}

namespace {
// A tiny SentencePiece-style tokenizer.json: <unk> <s> </s>, 256 byte tokens, then ▁ a b c ▁a ab ▁ab ▁▁ and
// merges "▁ a", "a b", "▁a b", "▁ ▁". The parts named in `parts` replace the defaults (Llama 2's).
struct TinyParts {
    std::string normalizer = R"({"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"},
        {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]})";
    std::string pre_tokenizer = "null";
    std::string decoder = R"({"type": "Sequence", "decoders": [{"type": "Replace", "pattern": {"String": "▁"},
        "content": " "}, {"type": "ByteFallback"}, {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]})";
    std::string model = R"("type": "BPE", "byte_fallback": true, "unk_token": "<unk>", "fuse_unk": true)";
    std::string added;         // more added tokens, each starting with ", "
    bool without_e2 = false;   // respell <0xE2> (id kept) so that byte 0xE2 has no token
};
enum : int32_t { kUnk = 0, kBos = 1, kMeta = 259, kA, kB, kC, kMetaA, kAB, kMetaAB, kMetaMeta, kNext };
int32_t byte_id(unsigned char b) { return 3 + b; }

Tokenizer tiny(const std::string& name, const TinyParts& p) {
    std::string vocab = R"("<unk>": 0, "<s>": 1, "</s>": 2)";
    for (int b = 0; b < 256; ++b) vocab += ", \"" + byte_token((unsigned char)b) + "\": " + std::to_string(3 + b);
    vocab += R"(, "▁": 259, "a": 260, "b": 261, "c": 262, "▁a": 263, "ab": 264, "▁ab": 265, "▁▁": 266)";
    if (p.without_e2) vocab.replace(vocab.find("<0xE2>"), 6, "<0xE2 gone>");
    std::string added = R"([{"id": 0, "content": "<unk>", "special": true, "normalized": false},
        {"id": 1, "content": "<s>", "special": true, "normalized": false}, {"id": 2, "content": "</s>", "special": true})";
    std::string json = "{\"normalizer\": " + p.normalizer + ", \"pre_tokenizer\": " + p.pre_tokenizer + ", \"decoder\": " +
                       p.decoder + ", \"added_tokens\": " + added + p.added + "], \"model\": {" + p.model +
                       ", \"vocab\": {" + vocab + "}, \"merges\": [\"▁ a\", \"a b\", \"▁a b\", \"▁ ▁\"]}}";
    return Tokenizer::load(temp_file(name, json));
}
using V = std::vector<int32_t>;
}  // namespace

TEST_CASE("tokenizer llama2: merges by rank, unknown characters and added tokens on a tiny file") {
    TinyParts p;
    Tokenizer tok = tiny("sp_legacy.json", p);
    CHECK(tok.family() == TokenizerFamily::llama2);
    CHECK(tok.vocab_size() == kNext);
    CHECK(tok.encode("ab") == V{kMetaAB});        // ▁ a b: "▁ a" (rank 0) first, then "▁a b"
    CHECK(tok.encode(" ab") == V{kMeta, kMetaAB});  // ▁ ▁ a b: "▁ a" outranks "▁ ▁"
    CHECK(tok.encode("ba") == V{kMeta, kB, kA});
    CHECK(tok.encode("ab<s>ab") == V{kMetaAB, kBos, kMetaAB});
    CHECK(tok.encode("a€") == V{kMetaA, byte_id(0xE2), byte_id(0x82), byte_id(0xAC)});
    CHECK(tok.decode(V{kMetaAB, kBos, kMetaAB}) == "ab<s> ab");
    CHECK(tok.decode(V{kMeta, kMetaAB}) == " ab");

    p.model = R"("type": "BPE", "unk_token": "<unk>", "fuse_unk": true)";  // no byte fallback: <unk>
    CHECK(tiny("sp_fuse.json", p).encode("ab€€b") == V{kMetaAB, kUnk, kB});
    p.model = R"("type": "BPE", "unk_token": "<unk>", "fuse_unk": false)";
    CHECK(tiny("sp_nofuse.json", p).encode("ab€€b") == V{kMetaAB, kUnk, kUnk, kB});
    p.model = R"("type": "BPE")";  // neither: HF drops the character
    CHECK(tiny("sp_drop.json", p).encode("a€") == V{kMetaA});
    TinyParts w;  // € (E2 82 AC) cannot fall back, é (C3 A9) can: the waiting <unk> follows é's bytes and fuses
    w.without_e2 = true;
    CHECK(tiny("sp_no_e2.json", w).encode("a€é€b") == V{kMetaA, byte_id(0xC3), byte_id(0xA9), kUnk, kB});

    TinyParts q;  // an added token matched in normalized text: its pattern is normalize("cc") = "▁cc"
    q.added = R"(, {"id": 267, "content": "cc", "special": false, "normalized": true})";
    Tokenizer n = tiny("sp_normalized.json", q);
    CHECK(n.encode("a cc") == V{kMetaA, 267});
    CHECK(n.encode("acc") == V{kMetaA, kC, kC});
    CHECK(n.decode(V{kMetaA, 267}) == "a cc");  // decoded from its normalized form "▁cc", as HF 0.23 does
    q.added = R"(, {"id": 267, "content": "<m>", "special": true, "normalized": false, "lstrip": true, "rstrip": true})";
    Tokenizer s = tiny("sp_strip.json", q);
    CHECK(s.encode("a <m> b") == V{kMetaA, 267, kMeta, kB});  // the spaces beside <m> go with it
    CHECK(s.encode_ordinary("<m>").size() == 4);              // ▁ < m >: bytes, no id 267
    q.added = R"(, {"id": 267, "content": "<m>", "special": true, "normalized": false})";
    CHECK(tiny("sp_nostrip.json", q).encode("a <m> b") == V{kMetaA, kMeta, 267, kMetaMeta, kB});
}

TEST_CASE("tokenizer llama2: the Metaspace pre-tokenizer and decoder of newer files") {
    TinyParts p;
    p.normalizer = "null";
    p.pre_tokenizer = R"({"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": true})";
    p.decoder = R"({"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": true})";
    Tokenizer first = tiny("ms_first.json", p);
    CHECK(first.family() == TokenizerFamily::llama2);
    CHECK(first.encode("ab ab") == V{kMetaAB, kMetaAB});
    CHECK(first.encode("<s>ab") == V{kBos, kAB});            // "first": only the text's first segment gets "▁"
    CHECK(first.encode("ab<s>ab") == V{kMetaAB, kBos, kAB});
    CHECK(first.encode(" ab") == V{kMetaAB});                // already starts with "▁": none prepended
    CHECK(first.decode(V{kMetaAB, kMetaAB}) == "ab ab");     // the first token's "▁" is dropped
    CHECK(first.decode(V{kBos, kMetaAB}) == "<s> ab");

    for (std::string* part : {&p.pre_tokenizer, &p.decoder}) part->replace(part->find("first"), 5, "always");
    Tokenizer always = tiny("ms_always.json", p);
    CHECK(always.encode("ab<s>ab") == V{kMetaAB, kBos, kMetaAB});
    CHECK(always.decode(V{kMetaAB, kMetaAB}) == "ab ab");
    for (std::string* part : {&p.pre_tokenizer, &p.decoder}) part->replace(part->find("always"), 6, "never");
    Tokenizer never = tiny("ms_never.json", p);
    CHECK(never.encode("ab") == V{kAB});
    CHECK(never.encode("ab ab") == V{kAB, kMetaAB});
    CHECK(never.decode(V{kMetaAB, kMetaAB}) == " ab ab");
    p.pre_tokenizer = R"({"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": false})";
    CHECK(tiny("ms_nosplit.json", p).encode("ab ab") == V{kMetaAB, kMetaAB});
}

TEST_CASE("tokenizer: an unsupported tokenizer.json is one error naming the file and what is unsupported") {
    const struct { const char* part; const char* value; const char* message; } cases[] = {
        {"model", R"("type": "Unigram")", "unsupported tokenizer model Unigram"},
        {"model", R"("type": "WordPiece")", "unsupported tokenizer model WordPiece"},
        {"model", R"("type": "BPE", "unk_token": "<nope>")", "unk_token \"<nope>\" is not in the vocabulary"},
        {"model", R"("type": "BPE", "continuing_subword_prefix": "##")", "unsupported BPE option continuing_subword_prefix"},
        {"pre_tokenizer", R"({"type": "Whitespace"})", "unsupported pre_tokenizer Whitespace"},
        {"pre_tokenizer", R"({"type": "ByteLevel", "add_prefix_space": false})", "unsupported pre_tokenizer ByteLevel"},
        {"normalizer", R"({"type": "NFKC"})", "unsupported normalizer NFKC"},
        {"normalizer", R"({"type": "Replace", "pattern": {"Regex": " +"}, "content": "▁"})", "unsupported Replace pattern"},
        {"normalizer", "null", "neither a pre_tokenizer nor a SentencePiece-style normalizer"},
        {"decoder", R"({"type": "ByteLevel"})", "unsupported decoder ByteLevel"},
        {"added", R"(, {"id": 267, "content": "x y", "single_word": true})", "is single_word"},
    };
    int k = 0;
    for (const auto& c : cases) {
        TinyParts p;
        if (std::string(c.part) == "model") p.model = c.value;
        if (std::string(c.part) == "pre_tokenizer") p.pre_tokenizer = c.value;
        if (std::string(c.part) == "normalizer") p.normalizer = c.value;
        if (std::string(c.part) == "decoder") p.decoder = c.value;
        if (std::string(c.part) == "added") p.added = c.value;
        std::string name = "unsupported_" + std::to_string(k++) + ".json";
        CAPTURE(std::string(c.value));
        CHECK_THROWS_WITH_AS(tiny(name, p), doctest::Contains(c.message), Error);
        CHECK_THROWS_WITH_AS(tiny(name, p), doctest::Contains(name.c_str()), Error);
    }
    CHECK_NOTHROW(tiny("supported.json", TinyParts()));  // the edits above are what breaks each file
}
