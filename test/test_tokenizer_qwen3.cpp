// test/test_tokenizer_qwen3.cpp — Qwen3's tokenizer (NFC, then byte-level BPE with one digit a piece) against
// Hugging Face `tokenizers` (golden ids made by test/make_golden_tokenizer_qwen3.py from data/qwen3_tokenizer.json),
// NFC against Python's unicodedata (test/nfc_cases.txt, made by data/make_unicode_nfc.py), round trips on random
// text, the added tokens special or not, and the unsupported variants of the file's structure.
#include "test.h"

#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <sstream>

#include "data.h"
#include "support/json.h"
#include "support/nfc.h"
#include "support/tokenizer.h"

namespace {

const char* kGolden = "test/golden/tokenizer_qwen3_ids.json";

// The golden file, or nullptr (and the test is skipped) while it has not been made.
const Json* golden() {
    static Json g = access(kGolden, R_OK) == 0 ? read_json_file(kGolden) : Json();
    if (g.type == Json::Object) return &g;
    skip_test(std::string(kGolden) + " is not made yet: python3 test/make_golden_tokenizer_qwen3.py "
              "data/qwen3_tokenizer.json data " + kGolden + " (needs Python tokenizers)");
    return nullptr;
}

std::string code_points(const std::string& hex) {  // "65 301" -> "e\u0301"
    std::istringstream in(hex);
    std::string h, out;
    while (in >> h) append_utf8(out, uint32_t(std::stoul(h, nullptr, 16)));
    return out;
}

struct NfcCase {
    int line;
    std::string given, expected;
};

// test/nfc_cases.txt: "input code points ; their NFC", in hex.
const std::vector<NfcCase>& nfc_cases() {
    static std::vector<NfcCase> cases = [] {
        std::ifstream in("test/nfc_cases.txt");
        if (!in) fail("cannot read test/nfc_cases.txt");
        std::vector<NfcCase> out;
        std::string line;
        for (int n = 1; std::getline(in, line); ++n) {
            if (line.empty() || line[0] == '#') continue;
            size_t semi = line.find(';');
            out.push_back({n, code_points(line.substr(0, semi)), code_points(line.substr(semi + 1))});
        }
        return out;
    }();
    return cases;
}

// Random text where NFC has work: combining marks, Hangul jamo and syllables, precomposed letters,
// compatibility ideographs, Indic nuktas, among ASCII.
std::string random_nfc_text(uint64_t seed, size_t code_points) {
    Rng rng(seed);
    static const uint32_t pools[][2] = {{0x61, 0x7A}, {0x20, 0x7E}, {0x300, 0x36F}, {0x1100, 0x11FF}, {0xAC00, 0xD7A3},
                                        {0xC0, 0x17F}, {0x1E00, 0x1FFF}, {0xF900, 0xFAFF}, {0x900, 0x97F}, {0x591, 0x5C7},
                                        {0x3099, 0x309A}, {0x304B, 0x30FF}, {0x1F600, 0x1F64F}, {0x2000, 0x2126}};
    std::string out;
    for (size_t i = 0; i < code_points; ++i) {
        const uint32_t* pool = pools[rng.below(sizeof(pools) / sizeof(pools[0]))];
        append_utf8(out, pool[0] + uint32_t(rng.below(pool[1] - pool[0] + 1)));
    }
    return out;
}

}  // namespace

// ------------------------------------------------------------------------------------------------ NFC

TEST_CASE("nfc: equals Python's unicodedata (as Unicode 9.0) on every case of test/nfc_cases.txt") {
    int checked = 0, changed = 0;
    for (const NfcCase& c : nfc_cases()) {
        CAPTURE(c.line);
        CHECK(nfc(c.given) == c.expected);
        if (nfc_quick_check(c.given)) CHECK(c.given == c.expected);  // the quick check never says yes wrongly
        changed += c.given != c.expected;
        ++checked;
    }
    CHECK(checked > 7000);  // every decomposition, composition pair and combining class
    CHECK(changed > 3000);
    std::string given, expected;  // all at once, between newlines (which compose with nothing)
    for (const NfcCase& c : nfc_cases()) given += c.given + "\n", expected += c.expected + "\n";
    CHECK(nfc(given) == expected);
    CHECK(nfc("") == "");
    CHECK(nfc("e\xCC\x81") == "\xC3\xA9");                               // e + U+0301 -> é
    CHECK(nfc("\xE2\x84\xAB") == "\xC3\x85");                            // U+212B ANGSTROM SIGN -> Å (a singleton)
    CHECK(nfc("\xE1\x84\x92\xE1\x85\xA1\xE1\x86\xAB") == "\xED\x95\x9C");  // Hangul jamo ᄒ ᅡ ᆫ -> 한
    CHECK(nfc("a\xCC\x82\xCC\xA3") == "\xE1\xBA\xAD");                   // a + U+0302 + U+0323 -> ậ (reordered first)
    CHECK(nfc_combining_class(0x301) == 230);
    CHECK(nfc_combining_class(0x334) == 1);
    CHECK(nfc_combining_class('a') == 0);
    CHECK(nfc_combining_class(0x1DFA) == 0);  // U+1DFA (Unicode 14) is unknown to HF's Unicode 9.0 tables
}

TEST_CASE("nfc: idempotent on random text, the quick check never says yes wrongly, ill-formed bytes") {
    uint64_t base = uint64_t(time(nullptr));
    int unchanged = 0;
    for (uint64_t seed = 0; seed < 300; ++seed) {
        std::string text = random_nfc_text(base + seed, 1 + seed % 40);
        CAPTURE(text);
        std::string once = nfc(text);
        CHECK(utf8_valid(once));
        CHECK(nfc(once) == once);
        if (nfc_quick_check(text)) CHECK(once == text);
        unchanged += once == text;
    }
    CHECK(unchanged < 250);  // the text gave NFC work
    CHECK(nfc_quick_check("Hello, \xE4\xB8\x96\xE7\x95\x8C \xC3\xA9 \xED\x95\x9C"));  // "Hello, 世界 é 한": stable
    CHECK(!nfc_quick_check("e\xCC\x81"));
    CHECK(nfc("a\xFF" "e\xCC\x81") == "a\xEF\xBF\xBD\xC3\xA9");  // an ill-formed byte becomes U+FFFD
    CHECK(!nfc_quick_check("a\xFF"));
}

// ------------------------------------------------------------------------------------------------ HF goldens

TEST_CASE("tokenizer qwen3: ids, ids with specials as text, and decodes equal Hugging Face on the golden texts") {
    const Json* g = golden();
    if (!g) return;
    const Tokenizer& tok = qwen3_tokenizer();
    CHECK(tok.vocab_size() == g->find("vocab_size")->integer);
    for (const Json& a : g->find("added")->array) CHECK(tok.special_id(a.find("content")->string) == a.find("id")->integer);
    check_golden_texts(tok, *g, 150);
}

TEST_CASE("tokenizer qwen3: HF's NFC agrees with test/nfc_cases.txt (so with ours)") {
    const Json* g = golden();
    if (!g) return;
    CHECK(g->find("nfc_cases")->integer == int64_t(nfc_cases().size()));
    for (const Json& d : g->find("nfc_differ")->array) {
        int line = int(d.find("line")->integer);
        CAPTURE(line);
        FAIL_CHECK("HF's NFC of line " << line << " of test/nfc_cases.txt is " << d.find("hf")->string);
    }
}

TEST_CASE("tokenizer qwen3: every default data file equals HF id for id (count and hash)") {
    const Json* g = golden();
    if (!g) return;
    check_golden_files(qwen3_tokenizer(), *g->find("files"));
}

// ------------------------------------------------------------------------------------------------ without goldens

TEST_CASE("tokenizer qwen3: the file is recognised; added tokens, special or not; no BOS") {
    const Tokenizer& tok = qwen3_tokenizer();
    using V = std::vector<int32_t>;
    CHECK(tok.family() == TokenizerFamily::qwen3);
    CHECK(tok.vocab_size() == 151669);  // 151,643 BPE tokens + 26 added
    CHECK(tok.special_id("<|endoftext|>") == 151643);
    CHECK(tok.special_id("<|im_start|>") == 151644);
    CHECK(tok.special_id("<|im_end|>") == 151645);
    CHECK(tok.special_id("<think>") == 151667);
    CHECK(tok.special_id("</think>") == 151668);
    CHECK(tok.encode("").empty());
    CHECK(tok.encode("Hello world") == V{9707, 1879});  // no BOS: Qwen adds none
    CHECK(tok.token_id("\xC4\xA0world") == 1879);      // "Ġworld", as the file spells it

    V chat = tok.encode("<|im_start|>user\nhi<|im_end|>\n");
    REQUIRE(chat.size() >= 4);
    CHECK(chat.front() == 151644);
    CHECK(chat[chat.size() - 2] == 151645);
    CHECK(tok.decode(chat) == "<|im_start|>user\nhi<|im_end|>\n");
    // Special tokens are plain text under encode_ordinary; <think> is added but not special: still its id.
    V plain = tok.encode_ordinary("<|im_end|><think>x</think>");
    CHECK(std::count(plain.begin(), plain.end(), 151645) == 0);
    CHECK(std::count(plain.begin(), plain.end(), 151667) == 1);
    CHECK(std::count(plain.begin(), plain.end(), 151668) == 1);
    CHECK(tok.decode(plain) == "<|im_end|><think>x</think>");
    // NFC applies to each segment between added tokens on its own: a mark after one composes with nothing.
    V composed = tok.encode("\xC3\xA9"), apart = tok.encode("e");
    composed.push_back(151645), apart.push_back(151667);
    for (int32_t id : tok.encode("\xCC\x81")) apart.push_back(id);
    CHECK(tok.encode("e\xCC\x81<|im_end|>") == composed);  // é, <|im_end|>
    CHECK(tok.encode("e<think>\xCC\x81") == apart);        // e, <think>, U+0301
}

TEST_CASE("tokenizer qwen3: digits are pieces of one") {
    const Tokenizer& tok = qwen3_tokenizer();
    auto pieces = [&](const std::string& s) {
        std::vector<std::string> out;
        for (auto p : tok.split(s)) out.emplace_back(p);
        return out;
    };
    using S = std::vector<std::string>;
    CHECK(pieces("I'm 12345!") == S{"I", "'m", " ", "1", "2", "3", "4", "5", "!"});
    CHECK(pieces("x2\xC2\xB2") == S{"x", "2", "\xC2\xB2"});  // ² is \p{N} too
    CHECK(pieces("Hello world") == S{"Hello", " world"});
    std::vector<int32_t> ids = tok.encode("2026");
    CHECK(ids == std::vector<int32_t>{tok.encode("2")[0], tok.encode("0")[0], tok.encode("2")[0], tok.encode("6")[0]});
    CHECK(default_tokenizer().encode("2026").size() == 2);  // Llama 3 groups three
}

TEST_CASE("tokenizer qwen3: decode(encode(x)) == nfc(x) on random text") {
    const Tokenizer& tok = qwen3_tokenizer();
    uint64_t base = uint64_t(time(nullptr));
    int normalized = 0;
    for (uint64_t seed = 0; seed < 200; ++seed) {
        std::string text = seed % 2 ? random_text(base + seed, 1 + seed * 5) : random_nfc_text(base + seed, 1 + seed * 3);
        CAPTURE(text);
        std::string expected = nfc(text);
        CHECK(tok.decode(tok.encode(text)) == expected);
        CHECK(tok.decode(tok.encode_ordinary(text)) == expected);
        normalized += expected != text;
    }
    CHECK(normalized > 20);  // NFC changed many of them
}

namespace {
// A tiny byte-level tokenizer.json: 256 byte tokens, merges "1 2" -> 256 and "Ã ©" (é) -> 257, a special
// <|end|> (258) and a non-special <t> (259); `normalizer`, `pattern`, `split` and `byte_level` vary it.
struct TinyByteLevel {
    std::string normalizer = R"({"type": "NFC"})";
    std::string pattern = R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
    std::string split = R"("behavior": "Isolated", "invert": false)";
    std::string byte_level = R"("add_prefix_space": false, "trim_offsets": false, "use_regex": false)";
};

Tokenizer tiny_byte_level(const std::string& name, const TinyByteLevel& p) {
    std::string vocab;
    for (int b = 0, shifted = 256; b < 256; ++b) {
        bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        std::string s;
        append_utf8(s, printable ? uint32_t(b) : uint32_t(shifted++));
        vocab += (b ? ", " : "") + json_quote(s) + ": " + std::to_string(b);
    }
    vocab += R"(, "12": 256, "Ã©": 257)";
    std::string json = R"({"normalizer": )" + p.normalizer + R"(, "pre_tokenizer": {"type": "Sequence", "pretokenizers": [)"
                       R"({"type": "Split", "pattern": {"Regex": )" + json_quote(p.pattern) + "}, " + p.split + "}, " +
                       R"({"type": "ByteLevel", )" + p.byte_level + "}]}, " +
                       R"("decoder": {"type": "ByteLevel"}, "added_tokens": [)"
                       R"({"id": 258, "content": "<|end|>", "special": true, "normalized": false},)"
                       R"({"id": 259, "content": "<t>", "special": false, "normalized": false}],)"
                       R"("model": {"type": "BPE", "vocab": {)" + vocab + R"(}, "merges": [["1", "2"], ["Ã", "©"]]}})";
    return Tokenizer::load(temp_file(name, json));
}
}  // namespace

TEST_CASE("tokenizer qwen3: a tiny file: NFC, then single digits, then merges; added tokens special or not") {
    using V = std::vector<int32_t>;
    Tokenizer tok = tiny_byte_level("qwen_tiny.json", TinyByteLevel());
    CHECK(tok.family() == TokenizerFamily::qwen3);
    CHECK(tok.encode("12") == V{'1', '2'});          // Qwen's pattern splits the digits before BPE
    CHECK(tok.encode("e\xCC\x81") == V{257});         // NFC makes é (C3 A9), which merges
    CHECK(tok.encode("\xC3\xA9") == V{257});
    CHECK(tok.encode("<t>e\xCC\x81<|end|>") == V{259, 257, 258});
    CHECK(tok.encode_ordinary("<t><|end|>") == V{259, '<', '|', 'e', 'n', 'd', '|', '>'});
    CHECK(tok.decode({259, 257, 258}) == "<t>\xC3\xA9<|end|>");

    TinyByteLevel llama;  // Llama 3's pattern and no normalizer: digits in threes, no NFC
    llama.normalizer = "null";
    llama.pattern.replace(llama.pattern.find(R"(\p{N}|)"), 6, R"(\p{N}{1,3}|)");
    Tokenizer l3 = tiny_byte_level("llama_tiny.json", llama);
    CHECK(l3.family() == TokenizerFamily::llama3);
    CHECK(l3.encode("12") == V{256});
    CHECK(l3.encode("e\xCC\x81") == V{'e', 0xCC, 0x81});
}

TEST_CASE("tokenizer qwen3: an unsupported byte-level structure is one error naming the file") {
    const struct { const char* what; const char* value; const char* message; } cases[] = {
        {"normalizer", "null", "unsupported normalizer none with Qwen's pattern"},
        {"normalizer", R"({"type": "NFKC"})", "unsupported normalizer NFKC with Qwen's pattern"},
        {"normalizer", R"({"type": "Sequence", "normalizers": [{"type": "NFC"}]})", "unsupported normalizer Sequence"},
        {"pattern", R"(\p{N}+|\s+|\S+)", "unsupported pre_tokenizer Sequence"},
        {"split", R"("behavior": "Removed", "invert": false)", "unsupported pre_tokenizer"},
        {"split", R"("behavior": "Isolated", "invert": true)", "unsupported pre_tokenizer"},
        {"byte_level", R"("add_prefix_space": true, "use_regex": false)", "unsupported pre_tokenizer"},
        {"byte_level", R"("add_prefix_space": false, "use_regex": true)", "unsupported pre_tokenizer"},
        {"byte_level", R"("add_prefix_space": false)", "unsupported pre_tokenizer"},  // HF's default: use_regex true
    };
    int k = 0;
    for (const auto& c : cases) {
        TinyByteLevel p;
        std::string what = c.what;
        (what == "normalizer" ? p.normalizer : what == "pattern" ? p.pattern : what == "split" ? p.split : p.byte_level) = c.value;
        std::string name = "qwen_unsupported_" + std::to_string(k++) + ".json";
        CAPTURE(std::string(c.value));
        CHECK_THROWS_WITH_AS(tiny_byte_level(name, p), doctest::Contains(c.message), Error);
        CHECK_THROWS_WITH_AS(tiny_byte_level(name, p), doctest::Contains(name.c_str()), Error);
    }
    TinyByteLevel llama_nfc;  // Llama 3's pattern with NFC is neither family
    llama_nfc.pattern.replace(llama_nfc.pattern.find(R"(\p{N}|)"), 6, R"(\p{N}{1,3}|)");
    CHECK_THROWS_WITH_AS(tiny_byte_level("llama_nfc.json", llama_nfc), doctest::Contains("unsupported normalizer NFC with Llama 3's pattern"), Error);
    CHECK_NOTHROW(tiny_byte_level("qwen_supported.json", TinyByteLevel()));  // the edits above are what breaks each file
}

TEST_CASE("model tokens, Qwen: no BOS is added (even when config.json names one), documents end with <|endoftext|>, chat ends with <|im_end|>") {
    const Tokenizer& tok = qwen3_tokenizer();
    int32_t endoftext = tok.token_id("<|endoftext|>"), im_end = tok.token_id("<|im_end|>");
    REQUIRE(endoftext >= 0);
    REQUIRE(im_end >= 0);
    ModelTokens own = model_tokens(tok, "");
    CHECK(own.bos == -1);
    CHECK(own.eos == std::vector<int32_t>{endoftext});
    // Qwen3-0.6B's files: config.json names bos 151643 and eos 151645; generation_config.json stops on both.
    std::string dir = temp_dir("qwen_model_tokens");
    std::ofstream(dir + "/config.json") << "{\"bos_token_id\": " << endoftext << ", \"eos_token_id\": " << im_end << "}";
    std::ofstream(dir + "/generation_config.json") << "{\"bos_token_id\": " << endoftext << ", \"eos_token_id\": [" << im_end << ", " << endoftext << "]}";
    ModelTokens mt = model_tokens(tok, dir);
    CHECK(mt.bos == -1);
    CHECK(mt.eos == std::vector<int32_t>{im_end, endoftext});
    CHECK_NOTHROW(check_model_tokens(mt, 151936, dir + "/config.json"));
    // a prompt is its text's ids, nothing before them
    CHECK(prompt_ids(tok, mt, "What is 12?", false) == tok.encode("What is 12?"));
}
