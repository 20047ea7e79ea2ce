// tokenizer.cpp — the Llama-3 tokenizer (see tokenizer.h). Encoding a text is
//     pieces = split(text)                 (the pre-tokenizer pattern, below)
//     ids    = concat over pieces of bpe(bytes(piece))
// where bpe starts from one token per byte and repeatedly merges the adjacent pair with the lowest merge
// rank, leftmost first, until no adjacent pair has a rank (Sennrich et al. 2016). Added (special) tokens
// are matched in the text first, leftmost-longest, and never split.
#include "tokenizer.h"

#include <algorithm>
#include <queue>

#include "common.h"
#include "json.h"
#include "unicode_table.h"

// ================================================================================================ BPE

namespace {

// The Llama-3 pre-tokenizer pattern, as tokenizer.json stores it. Its alternatives, tried in order at
// each position (the first that matches wins; the whole text is covered by matches):
//   1 (?i:'s|'t|'re|'ve|'m|'ll|'d)    English contractions, any case
//   2 [^\r\n\p{L}\p{N}]?\p{L}+         a word, with at most one leading non-letter (" the", "$x")
//   3 \p{N}{1,3}                        numbers, in groups of up to three digits
//   4  ?[^\s\p{L}\p{N}]+[\r\n]*        punctuation runs, with one leading space and trailing newlines
//   5 \s*[\r\n]+                        whitespace up to and including the last newline of its run
//   6 \s+(?!\S)                         whitespace, leaving the last space to lead the next word
//   7 \s+                               any other whitespace
const char* kLlama3Pattern =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
    "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

enum : uint8_t { kLetter = 1, kNumber = 2, kSpace = 4, kNewline = 8 };

bool is_white_space(uint32_t cp) {  // Unicode White_Space, what \s matches
    return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
           (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F ||
           cp == 0x3000;
}

uint8_t char_class(uint32_t cp) {
    if (cp == '\r' || cp == '\n') return kSpace | kNewline;
    if (is_white_space(cp)) return kSpace;
    if (cp < 0x80) {
        if ((cp | 0x20) >= 'a' && (cp | 0x20) <= 'z') return kLetter;
        return cp >= '0' && cp <= '9' ? kNumber : 0;
    }
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

// Length (in code points) of the match of the Llama-3 pattern at c[k] (alternatives as listed above).
size_t match_at(const std::vector<CodePoint>& c, size_t k) {
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
    if (has(k, kNumber)) return std::min<size_t>(3, run(k, [](const CodePoint& p) { return p.cls & kNumber; }) - k);
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
        size_t len = match_at(c, k);
        size_t begin = c[k].offset, end = k + len < c.size() ? c[k + len].offset : text.size();
        pieces.push_back(text.substr(begin, end - begin));
        k += len;
    }
    return pieces;
}

Tokenizer Tokenizer::load(const std::string& path) {
    Json file = read_json_file(path);
    std::string where = path;
    if (file.type != Json::Object) fail(path + ": not a tokenizer.json (expected a JSON object)");
    const Json& model = field(file, "model", Json::Object, where);
    const Json* type = model.find("type");
    if (!type || !type->is_string() || type->string != "BPE")
        fail(path + ": unsupported tokenizer model (only byte-level BPE, as Llama 3 uses)");
    const Json* normalizer = file.find("normalizer");
    if (normalizer && normalizer->type != Json::Null) fail(path + ": unsupported normalizer (Llama 3 has none)");
    const Json* pre = file.find("pre_tokenizer");
    bool llama3 = false;
    if (pre && pre->type == Json::Object) {
        const Json* list = pre->find("pretokenizers");
        if (list && list->type == Json::Array && list->array.size() == 2) {
            const Json* pattern = list->array[0].find("pattern");
            const Json* regex = pattern ? pattern->find("Regex") : nullptr;
            const Json* byte_level = list->array[1].find("type");
            llama3 = regex && regex->is_string() && regex->string == kLlama3Pattern && byte_level &&
                     byte_level->is_string() && byte_level->string == "ByteLevel";
        }
    }
    if (!llama3) fail(path + ": unsupported pre_tokenizer (this reader implements the Llama-3 split pattern)");

    Tokenizer tok;
    tok.path_ = path;
    const Json* ignore = model.find("ignore_merges");
    tok.ignore_merges_ = ignore && ignore->type == Json::Bool && ignore->boolean;

    std::vector<int32_t> cp_to_byte(512, -1);
    std::vector<uint32_t> table = byte_to_code_point();
    for (int b = 0; b < 256; ++b) cp_to_byte[table[b]] = b;
    auto to_bytes = [&](const std::string& token) {
        std::string bytes;
        for (size_t i = 0; i < token.size();) {
            uint32_t cp;
            size_t bad, n = utf8_decode(token, i, cp, bad);
            if (n == 0 || cp >= 512 || cp_to_byte[cp] < 0)
                fail(path + ": vocabulary entry " + json_quote(token) + " is not in the byte-level alphabet");
            bytes += char(cp_to_byte[cp]);
            i += n;
        }
        return bytes;
    };

    const std::string in_model = where + ": model";
    const Json& vocab = field(model, "vocab", Json::Object, in_model);
    std::vector<std::string> id_to_bytes;
    std::vector<bool> seen;
    auto assign = [&](int64_t id, std::string bytes, const std::string& name) {
        if (id < 0 || id >= (1 << 24)) fail(path + ": token " + json_quote(name) + " has an id out of range");
        if (size_t(id) >= id_to_bytes.size()) id_to_bytes.resize(size_t(id) + 1), seen.resize(size_t(id) + 1);
        if (seen[size_t(id)]) fail(path + ": id " + std::to_string(id) + " is used twice");
        seen[size_t(id)] = true;
        id_to_bytes[size_t(id)] = std::move(bytes);
    };
    for (const auto& [token, id] : vocab.object) {
        if (!id.is_int()) fail(path + ": vocabulary entry " + json_quote(token) + " has no integer id");
        std::string bytes = to_bytes(token);
        assign(id.integer, bytes, token);
        tok.bytes_to_id_.emplace(std::move(bytes), int32_t(id.integer));
    }
    for (int b = 0; b < 256; ++b) {
        auto it = tok.bytes_to_id_.find(std::string(1, char(b)));
        if (it == tok.bytes_to_id_.end()) fail(path + ": vocabulary lacks the token for byte " + std::to_string(b));
        tok.byte_id_[b] = it->second;
    }

    const Json& merges = field(model, "merges", Json::Array, in_model);
    for (size_t rank = 0; rank < merges.array.size(); ++rank) {
        const Json& m = merges.array[rank];
        std::string left, right;
        if (m.is_string()) {  // "left right"
            size_t space = m.string.find(' ');
            if (space == std::string::npos) fail(path + ": merge " + json_quote(m.string) + " has no space");
            left = m.string.substr(0, space), right = m.string.substr(space + 1);
        } else if (m.type == Json::Array && m.array.size() == 2 && m.array[0].is_string() && m.array[1].is_string()) {
            left = m.array[0].string, right = m.array[1].string;  // ["left", "right"]
        } else {
            fail(path + ": merge " + std::to_string(rank) + " is neither \"a b\" nor [\"a\", \"b\"]");
        }
        std::string lb = to_bytes(left), rb = to_bytes(right);
        auto l = tok.bytes_to_id_.find(lb), r = tok.bytes_to_id_.find(rb), lr = tok.bytes_to_id_.find(lb + rb);
        if (l == tok.bytes_to_id_.end() || r == tok.bytes_to_id_.end() || lr == tok.bytes_to_id_.end())
            fail(path + ": merge " + json_quote(left + " " + right) + " names a token not in the vocabulary");
        uint64_t key = uint64_t(uint32_t(l->second)) << 32 | uint32_t(r->second);
        tok.merges_.emplace(key, std::make_pair(int32_t(rank), lr->second));  // the first (lowest) rank wins
    }

    if (const Json* added = file.find("added_tokens"); added && added->type == Json::Array) {
        const std::string in_added = where + ": added_tokens";
        for (const Json& a : added->array) {
            const Json& content = field(a, "content", Json::String, in_added);
            const Json& id = field(a, "id", Json::Number, in_added);
            if (content.string.empty()) fail(path + ": an added token is empty");
            if (!id.is_int()) fail(path + ": added token " + json_quote(content.string) + " has no integer id");
            if (size_t(id.integer) < seen.size() && seen[size_t(id.integer)] &&
                id_to_bytes[size_t(id.integer)] == content.string)
                continue;  // already a vocabulary entry
            assign(id.integer, content.string, content.string);
            tok.added_.emplace_back(content.string, int32_t(id.integer));
        }
    }
    std::stable_sort(tok.added_.begin(), tok.added_.end(),
                     [](const auto& a, const auto& b) { return a.first.size() > b.first.size(); });
    for (const auto& a : tok.added_) tok.added_first_[(unsigned char)a.first[0]] = true;
    for (size_t id = 0; id < seen.size(); ++id)
        if (!seen[id]) fail(path + ": id " + std::to_string(id) + " is missing (ids must be contiguous)");
    tok.id_to_bytes_ = std::move(id_to_bytes);
    return tok;
}

void Tokenizer::bpe(std::string_view piece, std::vector<int32_t>& out) const {
    std::string key(piece);
    if (ignore_merges_) {
        if (auto it = bytes_to_id_.find(key); it != bytes_to_id_.end()) { out.push_back(it->second); return; }
    }
    if (auto it = cache_.find(key); it != cache_.end()) {
        out.insert(out.end(), it->second.begin(), it->second.end());
        return;
    }
    // Symbols in a linked list over byte positions; a min-heap of candidate merges (rank, position).
    int n = int(piece.size());
    std::vector<int32_t> id(n), next(n), prev(n);
    for (int i = 0; i < n; ++i) id[i] = byte_id_[(unsigned char)piece[i]], prev[i] = i - 1, next[i] = i + 1 < n ? i + 1 : -1;
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
    std::vector<int32_t> result;
    for (int i = 0; i >= 0 && n > 0; i = next[i]) result.push_back(id[i]);
    out.insert(out.end(), result.begin(), result.end());
    if (cache_.size() > 200000) cache_.clear();
    cache_.emplace(std::move(key), std::move(result));
}

void Tokenizer::encode_text(std::string_view text, std::vector<int32_t>& out) const {
    for (std::string_view piece : split(text)) bpe(piece, out);
}

std::vector<int32_t> Tokenizer::encode_ordinary(std::string_view text) const {
    std::string clean = utf8_sanitize(text);
    std::vector<int32_t> ids;
    encode_text(clean, ids);
    return ids;
}

std::vector<int32_t> Tokenizer::encode(std::string_view text) const {
    std::string clean = utf8_sanitize(text);
    std::string_view s = clean;
    std::vector<int32_t> ids;
    size_t start = 0;
    for (size_t i = 0; i < s.size();) {
        const std::pair<std::string, int32_t>* match = nullptr;
        if (!added_first_[(unsigned char)s[i]]) { ++i; continue; }
        for (const auto& a : added_)  // longest first: the leftmost-longest match
            if (a.first[0] == s[i] && s.compare(i, a.first.size(), a.first) == 0) { match = &a; break; }
        if (!match) { ++i; continue; }
        encode_text(s.substr(start, i - start), ids);
        ids.push_back(match->second);
        i += match->first.size();
        start = i;
    }
    encode_text(s.substr(start), ids);
    return ids;
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids) const {
    std::string bytes;
    for (int32_t id : ids) {
        if (id < 0 || id >= vocab_size()) fail("token id " + std::to_string(id) + " is outside the vocabulary (" + path_ + ")");
        bytes += id_to_bytes_[size_t(id)];
    }
    return utf8_sanitize(bytes);
}

int32_t Tokenizer::special_id(const std::string& content) const {
    for (const auto& a : added_)
        if (a.first == content) return a.second;
    fail(path_ + ": the tokenizer has no special token " + content);
}
