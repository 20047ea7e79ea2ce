// support/json.cpp — a strict recursive-descent JSON reader and UTF-8 decoding with U+FFFD for ill-formed bytes
// (the maximal-subpart rule, as Python's errors="replace" and Rust's from_utf8_lossy do).
#include "support/json.h"

#include <sys/stat.h>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <unordered_set>

#include "support/common.h"

// ================================================================================================ JSON

const Json* Json::find(std::string_view key) const {
    for (const auto& [k, v] : object)
        if (k == key) return &v;
    return nullptr;
}

const char* json_type_name(Json::Type type) {
    static const char* names[] = {"null", "a boolean", "a number", "a string", "an array", "an object"};
    return names[type];
}

namespace {


struct JsonParser {
    std::string_view s;
    const std::string& source;
    int first_line;
    size_t i = 0;
    int depth = 0;

    [[noreturn]] void error(const std::string& what, size_t at) const {
        int line = first_line, col = 1;
        for (size_t k = 0; k < at && k < s.size(); ++k) {
            if (s[k] == '\n') ++line, col = 1;
            else ++col;
        }
        fail(source + ":" + std::to_string(line) + ":" + std::to_string(col) + ": " + what);
    }
    void skip_space() {
        while (i < s.size() && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r')) ++i;
    }
    void expect(char c) {
        if (i >= s.size() || s[i] != c) error(std::string("expected '") + c + "'" + found(), i);
        ++i;
    }
    std::string found() const {
        if (i >= s.size()) return " but the text ended";
        unsigned char c = s[i];
        if (c < 0x20 || c >= 0x7f) return "";
        return std::string(" but found '") + char(c) + "'";
    }

    Json value() {
        skip_space();
        if (i >= s.size()) error("expected a value but the text ended", i);
        if (++depth > 512) error("nesting deeper than 512 levels", i);
        Json v;
        char c = s[i];
        if (c == '{') parse_object(v);
        else if (c == '[') parse_array(v);
        else if (c == '"') v.type = Json::String, v.string = parse_string();
        else if (literal("Infinity")) v.type = Json::Number, v.number = HUGE_VAL;  // Python's json writes these
        else if (literal("-Infinity")) v.type = Json::Number, v.number = -HUGE_VAL;
        else if (literal("NaN")) v.type = Json::Number, v.number = NAN;
        else if (c == '-' || (c >= '0' && c <= '9')) parse_number(v);
        else if (literal("true")) v.type = Json::Bool, v.boolean = true;
        else if (literal("false")) v.type = Json::Bool, v.boolean = false;
        else if (literal("null")) v.type = Json::Null;
        else error("expected a value" + found(), i);
        --depth;
        return v;
    }
    bool literal(std::string_view word) {
        if (s.substr(i, word.size()) != word) return false;
        i += word.size();
        return true;
    }
    // Whether key is already among v's keys (a linear scan for a few, then a hash set).
    static bool repeated(const Json& v, std::unordered_set<std::string>& keys, const std::string& key) {
        if (v.object.size() < 8) {
            for (const auto& kv : v.object)
                if (kv.first == key) return true;
            return false;
        }
        if (keys.empty())
            for (const auto& kv : v.object) keys.insert(kv.first);
        return !keys.insert(key).second;
    }
    void parse_object(Json& v) {
        v.type = Json::Object;
        ++i;
        skip_space();
        if (i < s.size() && s[i] == '}') { ++i; return; }
        std::unordered_set<std::string> keys;  // (objects of more than 8 keys: a tokenizer's vocabulary has 128k)
        for (;;) {
            skip_space();
            if (i >= s.size() || s[i] != '"') error("expected a string key" + found(), i);
            const size_t key_at = i;
            std::string key = parse_string();
            if (repeated(v, keys, key))  // Python's json keeps the last, DeepSpeed and HF read it so: say which is meant
                error("the key \"" + key + "\" appears twice in this object (keep one)", key_at);
            skip_space();
            expect(':');
            v.object.emplace_back(std::move(key), value());
            skip_space();
            if (i < s.size() && s[i] == ',') { ++i; continue; }
            if (i < s.size() && s[i] == '}') { ++i; return; }
            error("expected ',' or '}' in an object" + found(), i);
        }
    }
    void parse_array(Json& v) {
        v.type = Json::Array;
        ++i;
        skip_space();
        if (i < s.size() && s[i] == ']') { ++i; return; }
        for (;;) {
            v.array.push_back(value());
            skip_space();
            if (i < s.size() && s[i] == ',') { ++i; continue; }
            if (i < s.size() && s[i] == ']') { ++i; return; }
            error("expected ',' or ']' in an array" + found(), i);
        }
    }
    unsigned hex4(size_t at) {
        if (at + 4 > s.size()) error("truncated \\u escape", at);
        unsigned u = 0;
        for (size_t k = at; k < at + 4; ++k) {
            char c = s[k];
            int d = (c >= '0' && c <= '9') ? c - '0' : (c >= 'a' && c <= 'f') ? c - 'a' + 10
                  : (c >= 'A' && c <= 'F') ? c - 'A' + 10 : -1;
            if (d < 0) error("bad hex digit in \\u escape", k);
            u = u * 16 + unsigned(d);
        }
        return u;
    }
    std::string parse_string() {
        size_t start = i++;
        std::string out;
        for (;;) {
            size_t run = i;  // copy plain runs in one go: most strings have no escapes
            while (i < s.size() && s[i] != '"' && s[i] != '\\' && (unsigned char)s[i] >= 0x20) ++i;
            out.append(s.data() + run, i - run);
            if (i >= s.size()) error("unterminated string", start);
            char c = s[i];
            if (c == '"') { ++i; break; }
            if ((unsigned char)c < 0x20) error("control character in a string (escape it)", i);
            char e = i + 1 < s.size() ? s[i + 1] : '\0';
            i += 2;
            switch (e) {
                case '"': out += '"'; break;
                case '\\': out += '\\'; break;
                case '/': out += '/'; break;
                case 'b': out += '\b'; break;
                case 'f': out += '\f'; break;
                case 'n': out += '\n'; break;
                case 'r': out += '\r'; break;
                case 't': out += '\t'; break;
                case 'u': {
                    uint32_t cp = hex4(i);
                    i += 4;
                    if (cp >= 0xDC00 && cp <= 0xDFFF) error("lone low surrogate in \\u escape", i - 6);
                    if (cp >= 0xD800 && cp <= 0xDBFF) {
                        if (s.substr(i, 2) != "\\u") error("high surrogate without its low half", i - 6);
                        uint32_t lo = hex4(i + 2);
                        if (lo < 0xDC00 || lo > 0xDFFF) error("high surrogate without its low half", i - 6);
                        cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                        i += 6;
                    }
                    append_utf8(out, cp);
                    break;
                }
                default: error("unknown escape in a string", i - 2);
            }
        }
        if (!utf8_valid(out)) error("string is not valid UTF-8", start);
        return out;
    }
    void parse_number(Json& v) {
        size_t start = i;
        bool integral = true;
        if (s[i] == '-') ++i;
        auto digits = [&] {
            size_t d = i;
            while (i < s.size() && s[i] >= '0' && s[i] <= '9') ++i;
            if (i == d) error("expected a digit", i);
        };
        if (i < s.size() && s[i] == '0') {
            ++i;
            if (i < s.size() && s[i] >= '0' && s[i] <= '9') error("leading zero in a number", start);
        } else {
            digits();
        }
        if (i < s.size() && s[i] == '.') ++i, digits(), integral = false;
        if (i < s.size() && (s[i] == 'e' || s[i] == 'E')) {
            ++i, integral = false;
            if (i < s.size() && (s[i] == '+' || s[i] == '-')) ++i;
            digits();
        }
        std::string text(s.substr(start, i - start));
        v.type = Json::Number;
        v.number = std::strtod(text.c_str(), nullptr);
        if (integral) {
            errno = 0;
            long long n = std::strtoll(text.c_str(), nullptr, 10);
            if (errno == 0) v.integral = true, v.integer = n;
        }
    }
};

}  // namespace

Json parse_json(std::string_view text, const std::string& source, int first_line) {
    JsonParser p{text, source, first_line};
    Json v = p.value();
    p.skip_space();
    if (p.i != text.size()) p.error("unexpected text after the JSON value", p.i);
    return v;
}

std::string read_file(const std::string& path) {
    struct stat st;
    if (stat(path.c_str(), &st) != 0) fail("cannot read " + path + ": " + std::strerror(errno));
    if (S_ISDIR(st.st_mode)) fail("cannot read " + path + ": it is a directory");
    std::ifstream in(path, std::ios::binary);
    if (!in) fail("cannot read " + path + ": " + std::strerror(errno));
    std::string text(size_t(st.st_size), '\0');
    in.read(text.data(), std::streamsize(text.size()));
    if (size_t(in.gcount()) != text.size()) fail("cannot read " + path + ": short read");
    return text;
}

Json read_json_file(const std::string& path) { return parse_json(read_file(path), path); }

std::string json_quote(std::string_view text) {
    std::string out = "\"";
    for (unsigned char c : text) {
        switch (c) {
            case '"': out += "\\\""; break;
            case '\\': out += "\\\\"; break;
            case '\n': out += "\\n"; break;
            case '\r': out += "\\r"; break;
            case '\t': out += "\\t"; break;
            default:
                if (c < 0x20) {
                    char buf[8];
                    std::snprintf(buf, sizeof buf, "\\u%04x", c);
                    out += buf;
                } else {
                    out += char(c);
                }
        }
    }
    return out + "\"";
}

// ================================================================================================ UTF-8


size_t utf8_decode(std::string_view s, size_t i, uint32_t& cp, size_t& bad) {
    unsigned char c = s[i];
    if (c < 0x80) { cp = c; return 1; }
    size_t need;
    unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte
    if (c >= 0xC2 && c <= 0xDF) need = 1, cp = c & 0x1F;
    else if (c >= 0xE0 && c <= 0xEF) need = 2, cp = c & 0x0F, lo = c == 0xE0 ? 0xA0 : 0x80, hi = c == 0xED ? 0x9F : 0xBF;
    else if (c >= 0xF0 && c <= 0xF4) need = 3, cp = c & 0x07, lo = c == 0xF0 ? 0x90 : 0x80, hi = c == 0xF4 ? 0x8F : 0xBF;
    else { bad = 1; return 0; }
    for (size_t k = 1; k <= need; ++k) {
        unsigned char b = i + k < s.size() ? (unsigned char)s[i + k] : 0;
        bool ok = k == 1 ? (b >= lo && b <= hi) : (b >= 0x80 && b <= 0xBF);
        if (!ok) { bad = k; return 0; }
        cp = (cp << 6) | (b & 0x3F);
    }
    return need + 1;
}

void append_utf8(std::string& out, uint32_t cp) {
    if (cp < 0x80) out += char(cp);
    else if (cp < 0x800) out += char(0xC0 | cp >> 6), out += char(0x80 | (cp & 0x3F));
    else if (cp < 0x10000)
        out += char(0xE0 | cp >> 12), out += char(0x80 | ((cp >> 6) & 0x3F)), out += char(0x80 | (cp & 0x3F));
    else
        out += char(0xF0 | cp >> 18), out += char(0x80 | ((cp >> 12) & 0x3F)), out += char(0x80 | ((cp >> 6) & 0x3F)),
            out += char(0x80 | (cp & 0x3F));
}

bool utf8_valid(std::string_view s) {
    for (size_t i = 0; i < s.size();) {
        uint32_t cp;
        size_t bad, n = (unsigned char)s[i] < 0x80 ? 1 : utf8_decode(s, i, cp, bad);
        if (n == 0) return false;
        i += n;
    }
    return true;
}


std::string utf8_sanitize(std::string_view bytes) {
    std::string out;
    out.reserve(bytes.size());
    size_t i = 0;
    while (i < bytes.size()) {
        size_t start = i;  // copy valid runs whole
        while (i < bytes.size()) {
            uint32_t cp;
            size_t bad;
            size_t n = (unsigned char)bytes[i] < 0x80 ? 1 : utf8_decode(bytes, i, cp, bad);
            if (n == 0) break;
            i += n;
        }
        out.append(bytes.data() + start, i - start);
        if (i < bytes.size()) {
            uint32_t cp;
            size_t bad = 1;
            utf8_decode(bytes, i, cp, bad);
            out += "\xEF\xBF\xBD";
            i += bad;
        }
    }
    return out;
}

