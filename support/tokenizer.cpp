// support/tokenizer.cpp — the three BPE families of tokenizer.h, read from an HF tokenizer.json. Encoding is
//     segments = text split at added tokens (leftmost-longest; an added token becomes its id)
//     llama3:  pieces = split(segment) by the Llama-3 pattern; ids += bpe(bytes(piece)) for each piece
//     qwen3:   pieces = split(nfc(segment)) by Qwen's pattern (support/nfc.h); ids += bpe(bytes(piece))
//     llama2:  s = normalize(segment)        Prepend "▁" (to a non-empty segment), Replace " " -> "▁"
//              pieces = s, or Metaspace's split of s before each "▁"; ids += bpe(symbols(piece))
//              where symbols(piece) is each character's token, or <0xNN> per UTF-8 byte (byte fallback)
// and bpe starts from those symbols and repeatedly merges the adjacent pair with the lowest merge rank,
// leftmost first, until no adjacent pair has a rank (Sennrich et al. 2016). Every segment is normalized on
// its own, so "a<s>b" is "▁a", <s>, "▁b" (HF's AddedVocabulary::extract_and_normalize).
// Decoding: llama3 and qwen3 join the bytes of the tokens; llama2 runs the file's decoder chain (Replace
// "▁" -> " ", ByteFallback, Fuse, Strip one leading space; or Metaspace), as HF's decoders do.
#include "support/tokenizer.h"

#include <algorithm>
#include <cctype>
#include <queue>
#include <unistd.h>

#include "support/common.h"
#include "support/json.h"
#include "support/nfc.h"
#include "support/unicode_table.h"

// ================================================================================================ helpers

namespace {

// The Llama-3 pre-tokenizer pattern, as tokenizer.json stores it. Its alternatives, tried in order at
// each position (the first that matches wins; the whole text is covered by matches):
//   1 (?i:'s|'t|'re|'ve|'m|'ll|'d)    English contractions, any case
//   2 [^\r\n\p{L}\p{N}]?\p{L}+         a word, with at most one leading non-letter (" the", "$x")
//   3 \p{N}{1,3}                        numbers, in groups of up to three digits (Qwen: \p{N}, one digit)
//   4  ?[^\s\p{L}\p{N}]+[\r\n]*        punctuation runs, with one leading space and trailing newlines
//   5 \s*[\r\n]+                        whitespace up to and including the last newline of its run
//   6 \s+(?!\S)                         whitespace, leaving the last space to lead the next word
//   7 \s+                               any other whitespace
const char* kLlama3Pattern =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
    "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const char* kQwenPattern =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
    "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

enum : uint8_t { kLetter = 1, kNumber = 2, kSpace = 4, kNewline = 8 };

bool is_white_space(uint32_t cp) {  // Unicode White_Space, what \s matches
    return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
           (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F ||
           cp == 0x3000;
}

uint8_t char_class(uint32_t cp) {
    if (cp == '\r' || cp == '\n') return kSpace | kNewline;
    if (cp < 0x80) {  // ASCII first, without a call: this runs for every character
        if (cp == ' ' || (cp >= 0x09 && cp <= 0x0D)) return kSpace;
        if ((cp | 0x20) >= 'a' && (cp | 0x20) <= 'z') return kLetter;
        return cp >= '0' && cp <= '9' ? kNumber : 0;
    }
    if (is_white_space(cp)) return kSpace;
    size_t lo = 0, hi = sizeof(kUnicodeRanges) / sizeof(kUnicodeRanges[0]);
    while (lo < hi) {  // the last range with first <= cp
        size_t mid = (lo + hi) / 2;
        if (kUnicodeRanges[mid].first <= cp) lo = mid + 1;
        else hi = mid;
    }
    if (lo == 0 || kUnicodeRanges[lo - 1].last < cp) return 0;
    return kUnicodeRanges[lo - 1].cls == 1 ? kLetter : kNumber;
}

struct CodePoint {
    uint32_t cp;
    uint32_t offset;  // byte offset in the text
    uint8_t cls;
};

// Length (in code points) of the match of the Llama-3 pattern at c[k] (alternatives as listed above), or of
// Qwen's with digits = 1.
size_t match_at(const std::vector<CodePoint>& c, size_t k, size_t digits) {
    size_t n = c.size();
    auto has = [&](size_t j, uint8_t bits) { return j < n && (c[j].cls & bits); };
    auto run = [&](size_t j, auto pred) { while (j < n && pred(c[j])) ++j; return j; };
    auto lower = [&](size_t j) -> uint32_t {
        if (j >= n) return 0;
        uint32_t cp = c[j].cp;
        if (cp == 0x17F) return 's';  // LATIN SMALL LETTER LONG S case-folds to 's'
        return cp < 0x80 ? (cp | 0x20) : cp;
    };
    if (c[k].cp == '\'') {  // 1
        uint32_t a = lower(k + 1), b = lower(k + 2);
        if (a == 's' || a == 't' || a == 'm' || a == 'd') return 2;
        if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return 3;
    }
    size_t j = k;  // 2
    if (!has(k, kLetter | kNumber | kNewline) && has(k + 1, kLetter)) j = k + 1;
    if (has(j, kLetter)) return run(j, [](const CodePoint& p) { return p.cls & kLetter; }) - k;
    if (has(k, kNumber)) return std::min(digits, run(k, [](const CodePoint& p) { return p.cls & kNumber; }) - k);
    auto punct = [](const CodePoint& p) { return !(p.cls & (kSpace | kLetter | kNumber)); };  // 4
    j = (c[k].cp == ' ' && k + 1 < n && punct(c[k + 1])) ? k + 1 : k;
    if (punct(c[j])) {
        j = run(j, punct);
        return run(j, [](const CodePoint& p) { return p.cls & kNewline; }) - k;
    }
    size_t end = run(k, [](const CodePoint& p) { return p.cls & kSpace; });  // c[k] is white space here
    for (size_t m = end; m > k; --m)  // 5: through the last newline of the run
        if (c[m - 1].cls & kNewline) return m - k;
    if (end == n || end - 1 == k) return end - k;  // 6 at the end of the text, else 7 for one space
    return end - 1 - k;                               // 6: leave the last space to the next piece
}

// GPT-2's byte-level alphabet: printable Latin-1 bytes stand for themselves, the other 68 bytes are
// shifted to code points 256.., so every token is a printable string.
std::vector<uint32_t> byte_to_code_point() {
    std::vector<uint32_t> table(256);
    uint32_t next = 256;
    for (uint32_t b = 0; b < 256; ++b) {
        bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        table[b] = printable ? b : next++;
    }
    return table;
}

const Json& field(const Json& object, const char* key, Json::Type type, const std::string& where) {
    const Json* v = object.find(key);
    if (!v) fail(where + ": missing field \"" + key + "\"");
    if (v->type != type)
        fail(where + ": field \"" + key + "\" must be " + json_type_name(type) + ", not " + json_type_name(v->type));
    return *v;
}

const char* kReplacement = "\xEF\xBF\xBD";  // U+FFFD

// Bytes of a token spelled in the byte-level alphabet; false if a character is outside it.
bool byte_level_bytes(std::string_view spelling, std::string& bytes) {
    static const std::vector<int32_t> cp_to_byte = [] {
        std::vector<int32_t> t(512, -1);
        std::vector<uint32_t> table = byte_to_code_point();
        for (int b = 0; b < 256; ++b) t[table[size_t(b)]] = b;
        return t;
    }();
    bytes.clear();
    for (size_t i = 0; i < spelling.size();) {
        uint32_t cp;
        size_t bad, n = utf8_decode(spelling, i, cp, bad);
        if (n == 0 || cp >= 512 || cp_to_byte[cp] < 0) return false;
        bytes += char(cp_to_byte[cp]);
        i += n;
    }
    return true;
}

bool flag(const Json& object, const char* key, bool otherwise) {
    const Json* v = object.find(key);
    return v && v->type == Json::Bool ? v->boolean : otherwise;
}

std::string type_of(const Json* component) {  // a normalizer's, pre-tokenizer's or decoder's "type"
    if (!component || component->type == Json::Null) return "none";
    const Json* t = component->find("type");
    return t && t->is_string() ? t->string : "without a type";
}

// The steps of a component that is either one step or a "Sequence" of them under `list_key`.
std::vector<const Json*> steps_of(const Json* component, const char* list_key, const std::string& where) {
    std::vector<const Json*> steps;
    if (type_of(component) == "none") return steps;
    if (type_of(component) != "Sequence") return {component};
    for (const Json& step : field(*component, list_key, Json::Array, where).array) steps.push_back(&step);
    return steps;
}

// A Replace step's literal pattern ({"String": ...}); regex patterns are not implemented.
std::string replace_pattern(const Json& step, const std::string& where) {
    const Json* pattern = step.find("pattern");
    const Json* literal = pattern ? pattern->find("String") : nullptr;
    if (!literal || !literal->is_string()) fail(where + ": unsupported Replace pattern (only {\"String\": ...})");
    return literal->string;
}

std::string replace_all(std::string_view s, const std::string& from, const std::string& to) {
    std::string out;
    size_t i = 0;
    for (size_t j; !from.empty() && (j = s.find(from, i)) != std::string_view::npos; i = j + from.size())
        out.append(s.substr(i, j - i)), out += to;
    out.append(s.substr(i));
    return out;
}

bool starts_with(std::string_view s, std::string_view prefix) { return s.substr(0, prefix.size()) == prefix; }

// White space (Unicode White_Space, Rust's \s) just before byte i / at byte i: its length, or 0.
size_t space_before(std::string_view s, size_t i) {
    if (i == 0) return 0;
    size_t j = i - 1;
    while (j > 0 && (static_cast<unsigned char>(s[j]) & 0xC0) == 0x80) --j;  // back to the lead byte
    uint32_t cp;
    size_t bad, n = utf8_decode(s, j, cp, bad);
    return n == i - j && is_white_space(cp) ? n : 0;
}
size_t space_at(std::string_view s, size_t i) {
    uint32_t cp;
    size_t bad, n = i < s.size() ? utf8_decode(s, i, cp, bad) : 0;
    return n && is_white_space(cp) ? n : 0;
}

}  // namespace

std::vector<std::string_view> Tokenizer::split(std::string_view text) const {
    std::vector<CodePoint> c;
    c.reserve(text.size());
    for (size_t i = 0; i < text.size();) {
        uint32_t cp;
        size_t bad, n = (unsigned char)text[i] < 0x80 ? (cp = (unsigned char)text[i], 1) : utf8_decode(text, i, cp, bad);
        if (n == 0) cp = 0xFFFD, n = bad;  // callers pass sanitized text; stay safe anyway
        c.push_back({cp, uint32_t(i), char_class(cp)});
        i += n;
    }
    std::vector<std::string_view> pieces;
    for (size_t k = 0; k < c.size();) {
        size_t len = match_at(c, k, digits_);
        size_t begin = c[k].offset, end = k + len < c.size() ? c[k + len].offset : text.size();
        pieces.push_back(text.substr(begin, end - begin));
        k += len;
    }
    return pieces;
}

// ================================================================================================ loading

Tokenizer Tokenizer::load(const std::string& path) {
    Json file = read_json_file(path);
    if (file.type != Json::Object) fail(path + ": not a tokenizer.json (expected a JSON object)");
    const Json& model = field(file, "model", Json::Object, path);
    std::string model_type = type_of(&model);
    if (model_type != "BPE")
        fail(path + ": unsupported tokenizer model " + model_type +
             " (this reader implements BPE: Llama-3 and Qwen byte-level, Llama-2 SentencePiece-style)");
    for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"})
        if (const Json* v = model.find(key); v && v->type != Json::Null && !(v->is_string() && v->string.empty()))
            fail(path + ": unsupported BPE option " + key);
    if (const Json* v = model.find("dropout"); v && v->type == Json::Number && v->number != 0)
        fail(path + ": unsupported BPE option dropout (encoding would be random)");

    Tokenizer tok;
    tok.path_ = path;
    tok.ignore_merges_ = flag(model, "ignore_merges", false);
    std::string pre = type_of(file.find("pre_tokenizer"));
    if (pre == "none" || pre == "Metaspace") tok.family_ = TokenizerFamily::llama2, tok.load_llama2(path, file);
    else tok.load_byte_level(path, file);  // llama3 or qwen3; fails on any other pre_tokenizer
    std::vector<bool> seen;  // the ids given so far
    for (const auto& [spelling, id] : field(model, "vocab", Json::Object, path + ": model").object) {
        if (!id.is_int()) fail(path + ": vocabulary entry " + json_quote(spelling) + " has no integer id");
        std::string key = tok.key_of(spelling);
        tok.assign(id.integer, key, spelling, seen);
        tok.vocab_.emplace(std::move(key), int32_t(id.integer));
    }
    tok.index_symbols(path, model);
    tok.load_merges(path, model);
    tok.load_added(path, file, seen);
    for (size_t id = 0; id < seen.size(); ++id)
        if (!seen[id]) fail(path + ": id " + std::to_string(id) + " is missing (ids must be contiguous)");
    return tok;
}

// How vocab_ keys a token the file spells so: byte-level its bytes (the alphabet undone), llama2 as is.
std::string Tokenizer::key_of(const std::string& spelling) const {
    std::string bytes;
    if (family_ == TokenizerFamily::llama2) return spelling;
    if (!byte_level_bytes(spelling, bytes))
        fail(path_ + ": vocabulary entry " + json_quote(spelling) + " is not in the byte-level alphabet");
    return bytes;
}

void Tokenizer::assign(int64_t id, std::string key, const std::string& name, std::vector<bool>& seen) {
    if (id < 0 || id >= (1 << 24)) fail(path_ + ": token " + json_quote(name) + " has an id out of range");
    if (size_t(id) >= token_.size()) token_.resize(size_t(id) + 1), seen.resize(size_t(id) + 1);
    if (seen[size_t(id)]) fail(path_ + ": id " + std::to_string(id) + " is used twice");
    seen[size_t(id)] = true;
    token_[size_t(id)] = std::move(key);
}

// merges[rank] = "left right" (or ["left", "right"]): the pair (left, right) merges into left+right.
void Tokenizer::load_merges(const std::string& path, const Json& model) {
    const Json& merges = field(model, "merges", Json::Array, path + ": model");
    for (size_t rank = 0; rank < merges.array.size(); ++rank) {
        const Json& m = merges.array[rank];
        std::string left, right;
        if (m.is_string()) {
            size_t space = m.string.find(' ');
            if (space == std::string::npos) fail(path + ": merge " + json_quote(m.string) + " has no space");
            left = m.string.substr(0, space), right = m.string.substr(space + 1);
        } else if (m.type == Json::Array && m.array.size() == 2 && m.array[0].is_string() && m.array[1].is_string()) {
            left = m.array[0].string, right = m.array[1].string;
        } else {
            fail(path + ": merge " + std::to_string(rank) + " is neither \"a b\" nor [\"a\", \"b\"]");
        }
        std::string lk = key_of(left), rk = key_of(right);
        auto l = vocab_.find(lk), r = vocab_.find(rk), lr = vocab_.find(lk + rk);
        if (l == vocab_.end() || r == vocab_.end() || lr == vocab_.end())
            fail(path + ": merge " + json_quote(left + " " + right) + " names a token not in the vocabulary");
        uint64_t key = uint64_t(uint32_t(l->second)) << 32 | uint32_t(r->second);
        merges_[key] = {int32_t(rank), lr->second};  // a repeated pair keeps its last rank, as HF's map does
    }
}

// Added tokens: their ids (a vocabulary entry's own, as <s> in Llama 2, or new ones) and how they match.
void Tokenizer::load_added(const std::string& path, const Json& file, std::vector<bool>& seen) {
    if (const Json* added = file.find("added_tokens"); added && added->type == Json::Array) {
        for (const Json& a : added->array) {
            const Json& content = field(a, "content", Json::String, path + ": added_tokens");
            const Json& id = field(a, "id", Json::Number, path + ": added_tokens");
            if (content.string.empty()) fail(path + ": an added token is empty");
            if (!id.is_int()) fail(path + ": added token " + json_quote(content.string) + " has no integer id");
            if (flag(a, "single_word", false))
                fail(path + ": added token " + json_quote(content.string) + " is single_word, which this reader does not implement");
            bool known = size_t(id.integer) < seen.size() && seen[size_t(id.integer)] && token_[size_t(id.integer)] == content.string;
            if (!known) assign(id.integer, content.string, content.string, seen);
            AddedToken t{content.string, int32_t(id.integer), flag(a, "special", false), false, flag(a, "lstrip", false),
                         flag(a, "rstrip", false)};
            t.normalized = flag(a, "normalized", !t.special);
            if (t.normalized) t.content = normalize(t.content);  // matched, and decoded (HF 0.23), in normalized form
            std::string bytes;  // byte-level: HF's decoder maps a token in the alphabet to its bytes, else keeps it
            if (byte_level()) token_[size_t(t.id)] = byte_level_bytes(t.content, bytes) ? bytes : t.content;
            else if (t.normalized) token_[size_t(t.id)] = t.content;
            (t.normalized ? added_normalized_ : added_).tokens.push_back(t);
            added_ids_[content.string] = t.id;
        }
    }
    for (AddedSet* set : {&added_, &added_normalized_}) {
        std::stable_sort(set->tokens.begin(), set->tokens.end(),
                         [](const AddedToken& a, const AddedToken& b) { return a.content.size() > b.content.size(); });
        for (const AddedToken& a : set->tokens) set->first[(unsigned char)a.content[0]] = true;
    }
}

// Byte-level BPE: the pre-tokenizer is Split(pattern, Isolated) then ByteLevel (no prefix space, no regex of
// its own); the pattern and the normalizer name the family:
//   llama3  Llama 3's pattern and no normalizer;
//   qwen3   Qwen's pattern (one digit a piece) and the NFC normalizer.
void Tokenizer::load_byte_level(const std::string& path, const Json& file) {
    const Json* pre = file.find("pre_tokenizer");
    const Json* regex = nullptr;
    if (const Json* list = pre->find("pretokenizers"); list && list->type == Json::Array && list->array.size() == 2) {
        const Json &split = list->array[0], &bytes = list->array[1];
        const Json* pattern = split.find("pattern");
        const Json* behavior = split.find("behavior");
        bool isolated = behavior && behavior->is_string() && behavior->string == "Isolated" && !flag(split, "invert", false);
        bool plain = type_of(&bytes) == "ByteLevel" && !flag(bytes, "add_prefix_space", true) && !flag(bytes, "use_regex", true);
        regex = pattern && type_of(&split) == "Split" && isolated && plain ? pattern->find("Regex") : nullptr;
    }
    if (regex && regex->is_string() && regex->string == kLlama3Pattern) family_ = TokenizerFamily::llama3, digits_ = 3;
    else if (regex && regex->is_string() && regex->string == kQwenPattern) family_ = TokenizerFamily::qwen3, digits_ = 1;
    else
        fail(path + ": unsupported pre_tokenizer " + type_of(pre) +
             " (this reader implements Split with Llama 3's or Qwen's pattern + ByteLevel, and Llama 2's Metaspace or none)");
    bool qwen = family_ == TokenizerFamily::qwen3;
    std::string normalizer = type_of(file.find("normalizer"));
    if (normalizer != (qwen ? "NFC" : "none"))
        fail(path + ": unsupported normalizer " + normalizer + " with " +
             (qwen ? "Qwen's pattern (Qwen has NFC)" : "Llama 3's pattern (Llama 3 has none)"));
}

// Llama 2: a Prepend/Replace normalizer or a Metaspace pre-tokenizer, and a decoder chain.
void Tokenizer::load_llama2(const std::string& path, const Json& file) {
    for (const Json* n : steps_of(file.find("normalizer"), "normalizers", path + ": normalizer")) {
        std::string type = type_of(n);
        if (type == "Prepend") normalizer_.push_back({Step::prepend, field(*n, "prepend", Json::String, path + ": Prepend").string, ""});
        else if (type == "Replace")
            normalizer_.push_back({Step::replace, replace_pattern(*n, path), field(*n, "content", Json::String, path + ": Replace").string});
        else fail(path + ": unsupported normalizer " + type + " (this reader implements Prepend and Replace, as Llama 2 has)");
    }
    if (const Json* pre = file.find("pre_tokenizer"); type_of(pre) == "Metaspace") {
        metaspace_ = true;
        metaspace_char_ = field(*pre, "replacement", Json::String, path + ": Metaspace").string;
        metaspace_split_ = flag(*pre, "split", true);
        const Json* scheme = pre->find("prepend_scheme");
        std::string s = scheme && scheme->is_string() ? scheme->string : "always";
        if (!flag(*pre, "add_prefix_space", true)) s = "never";
        if (s != "first" && s != "always" && s != "never") fail(path + ": unknown Metaspace prepend_scheme " + s);
        metaspace_prepend_ = s == "first" ? Prepend::first : s == "always" ? Prepend::always : Prepend::never;
    }
    if (normalizer_.empty() && !metaspace_)
        fail(path + ": unsupported tokenizer.json: a BPE with neither a pre_tokenizer nor a SentencePiece-style "
                    "normalizer (Prepend/Replace) or Metaspace");
    has_decoder_ = type_of(file.find("decoder")) != "none";
    for (const Json* d : steps_of(file.find("decoder"), "decoders", path + ": decoder")) {
        std::string type = type_of(d), where = path + ": decoder " + type;
        if (type == "Replace") decoder_.push_back({Step::replace, replace_pattern(*d, path), field(*d, "content", Json::String, where).string});
        else if (type == "ByteFallback") decoder_.push_back({Step::byte_fallback, "", ""});
        else if (type == "Fuse") decoder_.push_back({Step::fuse, "", ""});
        else if (type == "Strip") {
            const Json &start = field(*d, "start", Json::Number, where), &stop = field(*d, "stop", Json::Number, where);
            decoder_.push_back({Step::strip, field(*d, "content", Json::String, where).string, "", int(start.integer), int(stop.integer)});
        } else if (type == "Metaspace") {
            const Json* scheme = d->find("prepend_scheme");
            bool never = (scheme && scheme->is_string() && scheme->string == "never") || !flag(*d, "add_prefix_space", true);
            decoder_.push_back({Step::metaspace, field(*d, "replacement", Json::String, where).string, "", never ? 0 : 1});
        } else {
            fail(path + ": unsupported decoder " + type + " (this reader implements Replace, ByteFallback, Fuse, Strip, Metaspace)");
        }
    }
}

// The first symbols of BPE. Byte-level: the token of each byte. llama2: the token of each character, the
// <0xNN> tokens of byte fallback, and the unknown token.
void Tokenizer::index_symbols(const std::string& path, const Json& model) {
    for (int b = 0; b < 256; ++b) {
        char name[8];
        std::snprintf(name, sizeof name, "<0x%02X>", b);
        auto it = vocab_.find(byte_level() ? std::string(1, char(b)) : std::string(name));
        if (byte_level() && it == vocab_.end()) fail(path + ": vocabulary lacks the token for byte " + std::to_string(b));
        byte_id_[b] = it != vocab_.end() && (byte_level() || flag(model, "byte_fallback", false)) ? it->second : -1;
    }
    if (byte_level()) return;
    for (const auto& [token, id] : vocab_) {
        uint32_t cp;
        size_t bad;
        if (!token.empty() && utf8_decode(token, 0, cp, bad) == token.size()) char_id_[cp] = id;
    }
    if (const Json* unk = model.find("unk_token"); unk && unk->is_string()) {
        auto it = vocab_.find(unk->string);
        if (it == vocab_.end()) fail(path + ": unk_token " + json_quote(unk->string) + " is not in the vocabulary");
        unk_id_ = it->second;
    }
    fuse_unk_ = flag(model, "fuse_unk", false);
    const std::string& m = metaspace_char_;
    words_ = true;
    for (const std::string& token : token_) {
        size_t lead = 0;
        while (token.compare(lead, m.size(), m) == 0) lead += m.size();
        words_ = words_ && token.find(m, lead) == std::string::npos;
    }
}

// ================================================================================================ encoding

std::vector<Tokenizer::Span> Tokenizer::find_added(std::string_view s, const AddedSet& set, bool specials) const {
    std::vector<Span> spans;
    size_t start = 0;  // the end of the last match
    for (size_t i = 0; i < s.size();) {
        const AddedToken* match = nullptr;
        if (set.first[(unsigned char)s[i]])
            for (const AddedToken& a : set.tokens)  // longest first: the leftmost-longest match
                if (a.content[0] == s[i] && s.compare(i, a.content.size(), a.content) == 0) { match = &a; break; }
        if (!match) { ++i; continue; }
        size_t begin = i, end = i + match->content.size();
        if (!specials && match->special) { i = end; continue; }  // HF skips the match, and the text it covers stays text
        if (match->lstrip) while (size_t n = begin > start ? space_before(s, begin) : 0) begin -= n;
        if (match->rstrip) while (size_t n = space_at(s, end)) end += n;
        if (begin > start) spans.push_back({start, begin, -1});
        spans.push_back({begin, end, match->id});
        start = i = end;
    }
    if (start < s.size()) spans.push_back({start, s.size(), -1});
    return spans;
}

std::vector<int32_t> Tokenizer::encode(std::string_view text) const { return encode_with(text, true); }
std::vector<int32_t> Tokenizer::encode_ordinary(std::string_view text) const { return encode_with(text, false); }

std::vector<int32_t> Tokenizer::encode_with(std::string_view text, bool specials) const {
    std::string clean = utf8_sanitize(text);  // as Python would hand HF the text (errors="replace")
    std::string_view s = clean;
    std::vector<int32_t> ids;
    for (const Span& span : find_added(s, added_, specials)) {
        if (span.id >= 0) ids.push_back(span.id);
        else encode_segment(s.substr(span.begin, span.end - span.begin), span.begin, specials, ids);
    }
    return ids;
}

// One segment between added tokens: normalize, split out the added tokens that match normalized text,
// then pre-tokenize and BPE. `offset`: where the segment starts in the text (Metaspace's "first").
void Tokenizer::encode_segment(std::string_view segment, size_t offset, bool specials, std::vector<int32_t>& out) const {
    bool unchanged = family_ == TokenizerFamily::llama3 || (family_ == TokenizerFamily::qwen3 && nfc_quick_check(segment));
    if (unchanged && added_normalized_.tokens.empty()) {  // the common case, without a copy
        for (std::string_view piece : split(segment)) bpe_byte_level(piece, out);
        return;
    }
    std::string normalized = normalize(segment);
    std::string_view s = normalized;
    for (const Span& span : find_added(s, added_normalized_, specials)) {
        std::string_view part = s.substr(span.begin, span.end - span.begin);
        if (span.id >= 0) out.push_back(span.id);
        else if (byte_level()) for (std::string_view piece : split(part)) bpe_byte_level(piece, out);
        else pre_tokenize_llama2(part, offset + span.begin, out);
    }
}

// The segment as the file's normalizer leaves it: qwen3 NFC; llama2 its Prepend and Replace steps; llama3 none.
std::string Tokenizer::normalize(std::string_view text) const {
    if (family_ == TokenizerFamily::qwen3) return nfc(text);
    std::string s(text);
    for (const Step& step : normalizer_) {
        if (step.kind == Step::prepend && !s.empty()) s = step.a + s;
        if (step.kind == Step::replace) s = replace_all(s, step.a, step.b);
    }
    return s;
}

// The Metaspace pre-tokenizer (when the file has one): spaces become "▁", a "▁" is prepended (always, or
// only to the text's first segment), and the text splits before each "▁". Then BPE on each piece.
void Tokenizer::pre_tokenize_llama2(std::string_view text, size_t offset, std::vector<int32_t>& out) const {
    if (!metaspace_) return bpe_words(text, out);
    std::string s = replace_all(text, " ", metaspace_char_);
    if (!starts_with(s, metaspace_char_) &&
        (metaspace_prepend_ == Prepend::always || (metaspace_prepend_ == Prepend::first && offset == 0)))
        s = metaspace_char_ + s;
    if (!metaspace_split_) return bpe_words(s, out);
    std::string_view v = s;
    size_t begin = 0;
    for (size_t j = v.find(metaspace_char_, 1); j != std::string_view::npos; j = v.find(metaspace_char_, j + 1))
        bpe_llama2(v.substr(begin, j - begin), out), begin = j;
    bpe_llama2(v.substr(begin), out);
}

// BPE of a whole normalized segment (Llama 2 has no pre-tokenizer: one segment is one BPE word). When no
// vocabulary entry has a "▁" after another character (checked at load: ▁ only leads a token), no merge can
// join a symbol ending in another character to one starting with "▁", and merges never interact across
// such a boundary; so BPE of the pieces cut before each such "▁" gives the same ids, and they are cached.
void Tokenizer::bpe_words(std::string_view text, std::vector<int32_t>& out) const {
    if (!words_) return bpe_llama2(text, out);
    const std::string& m = metaspace_char_;
    size_t begin = 0;
    for (size_t j = text.find(m, 1); j != std::string_view::npos; j = text.find(m, j + m.size()))
        if (j < m.size() || text.compare(j - m.size(), m.size(), m) != 0)  // not within a run of "▁"
            bpe_llama2(text.substr(begin, j - begin), out), begin = j;
    bpe_llama2(text.substr(begin), out);
}

void Tokenizer::bpe_byte_level(std::string_view piece, std::vector<int32_t>& out) const {
    std::string key(piece);
    if (ignore_merges_) {
        if (auto it = vocab_.find(key); it != vocab_.end()) { out.push_back(it->second); return; }
    }
    if (auto it = cache_.find(key); it != cache_.end()) {
        out.insert(out.end(), it->second.begin(), it->second.end());
        return;
    }
    std::vector<int32_t> symbols(piece.size());
    for (size_t i = 0; i < piece.size(); ++i) symbols[i] = byte_id_[(unsigned char)piece[i]];
    merge(symbols);
    out.insert(out.end(), symbols.begin(), symbols.end());
    if (cache_.size() > 200000) cache_.clear();
    cache_.emplace(std::move(key), std::move(symbols));
}

// Each character starts as its own token; one with no token becomes its UTF-8 bytes as <0xNN> tokens
// (byte fallback), else the unknown token. As in HF's BPE::merge_word, an unknown token waits until the
// next character that has a token (or the end), so consecutive ones fuse with fuse_unk, and byte-fallback
// symbols in between come before it.
void Tokenizer::bpe_llama2(std::string_view piece, std::vector<int32_t>& out) const {
    if (ignore_merges_) {
        if (auto it = vocab_.find(std::string(piece)); it != vocab_.end()) { out.push_back(it->second); return; }
    }
    bool cached = piece.size() < 256;  // a long piece (a segment the vocabulary does not let us cut) is not cached
    if (cached) {
        if (auto it = cache_.find(std::string(piece)); it != cache_.end()) {
            out.insert(out.end(), it->second.begin(), it->second.end());
            return;
        }
    }
    std::vector<int32_t> symbols;
    symbols.reserve(piece.size());
    bool unk = false;  // an unknown token is waiting
    for (size_t i = 0; i < piece.size();) {
        uint32_t cp;
        size_t bad, n = utf8_decode(piece, i, cp, bad);
        if (n == 0) cp = 0xFFFD, n = bad;  // callers pass sanitized text
        bool bytes = true;
        for (size_t k = i; k < i + n; ++k) bytes = bytes && byte_id_[(unsigned char)piece[k]] >= 0;
        if (auto it = char_id_.find(cp); it != char_id_.end()) {
            if (unk) symbols.push_back(unk_id_), unk = false;
            symbols.push_back(it->second);
        } else if (bytes) {
            for (size_t k = i; k < i + n; ++k) symbols.push_back(byte_id_[(unsigned char)piece[k]]);
        } else if (unk_id_ >= 0) {
            if (unk && !fuse_unk_) symbols.push_back(unk_id_);
            unk = true;
        }  // no unknown token at all: HF drops the character
        i += n;
    }
    if (unk) symbols.push_back(unk_id_);
    merge(symbols);
    out.insert(out.end(), symbols.begin(), symbols.end());
    if (!cached) return;
    if (cache_.size() > 200000) cache_.clear();
    cache_.emplace(std::string(piece), std::move(symbols));
}

// BPE: symbols in a linked list; a min-heap of candidate merges (rank, position) pops the lowest rank,
// leftmost first; an entry whose pair has changed since it was pushed is stale and skipped.
void Tokenizer::merge(std::vector<int32_t>& id) const {
    int n = int(id.size());
    if (n < 2) return;
    std::vector<int32_t> next(id.size()), prev(id.size());
    for (int i = 0; i < n; ++i) prev[i] = i - 1, next[i] = i + 1 < n ? i + 1 : -1;
    struct Candidate { int32_t rank, pos, left, right; };
    auto later = [](const Candidate& a, const Candidate& b) { return a.rank != b.rank ? a.rank > b.rank : a.pos > b.pos; };
    std::priority_queue<Candidate, std::vector<Candidate>, decltype(later)> heap(later);
    auto consider = [&](int pos) {
        if (pos < 0 || next[pos] < 0) return;
        auto it = merges_.find(uint64_t(uint32_t(id[pos])) << 32 | uint32_t(id[next[pos]]));
        if (it != merges_.end()) heap.push({it->second.first, pos, id[pos], id[next[pos]]});
    };
    for (int i = 0; i + 1 < n; ++i) consider(i);
    while (!heap.empty()) {
        Candidate c = heap.top();
        heap.pop();
        int q = next[c.pos];
        if (id[c.pos] != c.left || q < 0 || id[q] != c.right) continue;  // stale: a neighbour merged first
        id[c.pos] = merges_.at(uint64_t(uint32_t(c.left)) << 32 | uint32_t(c.right)).second;
        id[q] = -1;
        next[c.pos] = next[q];
        if (next[q] >= 0) prev[next[q]] = c.pos;
        consider(prev[c.pos]);
        consider(c.pos);
    }
    int kept = 0;
    for (int i = 0; i >= 0; i = next[i]) id[kept++] = id[i];
    id.resize(size_t(kept));
}

// ================================================================================================ decoding

std::string Tokenizer::decode(const std::vector<int32_t>& ids) const {
    for (int32_t id : ids)
        if (id < 0 || id >= vocab_size()) fail("token id " + std::to_string(id) + " is outside the vocabulary (" + path_ + ")");
    if (family_ == TokenizerFamily::llama2) return decode_llama2(ids);
    std::string bytes;
    for (int32_t id : ids) bytes += token_[size_t(id)];
    return utf8_sanitize(bytes);
}

// The file's decoder chain, step by step over the list of token strings, then joined (HF's decoders).
std::string Tokenizer::decode_llama2(const std::vector<int32_t>& ids) const {
    std::vector<std::string> t;
    for (int32_t id : ids) t.push_back(token_[size_t(id)]);
    for (const Step& step : decoder_) {
        std::vector<std::string> next;
        if (step.kind == Step::replace)
            for (std::string& s : t) s = replace_all(s, step.a, step.b);
        if (step.kind == Step::byte_fallback) {  // a run of <0xNN>: its bytes if UTF-8, else one U+FFFD per byte
            std::string run;
            auto flush = [&] {
                if (utf8_valid(run)) { if (!run.empty()) next.push_back(run); }
                else for (size_t k = 0; k < run.size(); ++k) next.push_back(kReplacement);
                run.clear();
            };
            for (std::string& s : t) {
                bool hex = s.size() == 6 && starts_with(s, "<0x") && s[5] == '>' && std::isxdigit((unsigned char)s[3]) &&
                           std::isxdigit((unsigned char)s[4]);
                if (hex) run += char(std::stoi(s.substr(3, 2), nullptr, 16));
                else flush(), next.push_back(std::move(s));
            }
            flush();
            t.swap(next);
        }
        if (step.kind == Step::fuse) {
            std::string all;
            for (const std::string& s : t) all += s;
            t.assign(1, all);
        }
        if (step.kind == Step::strip)
            for (std::string& s : t) {
                size_t begin = 0, end = s.size(), w = step.a.size();
                for (int k = 0; k < step.start && begin + w <= end && s.compare(begin, w, step.a) == 0; ++k) begin += w;
                for (int k = 0; k < step.stop && end >= begin + w && s.compare(end - w, w, step.a) == 0; ++k) end -= w;
                s = s.substr(begin, end - begin);
            }
        if (step.kind == Step::metaspace)
            for (size_t i = 0; i < t.size(); ++i) t[i] = replace_all(t[i], step.a, i == 0 && step.start ? "" : " ");
    }
    std::string text;
    for (size_t i = 0; i < t.size(); ++i) text += (i && !has_decoder_ ? " " : "") + t[i];  // no decoder: HF joins with spaces
    return text;
}

// ================================================================================================ lookups

int32_t Tokenizer::special_id(const std::string& content) const {
    auto it = added_ids_.find(content);
    if (it == added_ids_.end()) fail(path_ + ": the tokenizer has no special token " + content);
    return it->second;
}

int32_t Tokenizer::token_id(std::string_view token) const {
    if (auto it = added_ids_.find(std::string(token)); it != added_ids_.end()) return it->second;
    std::string key(token);
    if (byte_level() && !byte_level_bytes(token, key)) return -1;
    auto it = vocab_.find(key);
    return it == vocab_.end() ? -1 : it->second;
}
