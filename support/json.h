// support/json.h — a strict JSON reader (RFC 8259, plus Python's Infinity and NaN; errors name
// FILE:LINE:COL) and UTF-8 helpers. Used for tokenizer.json, config.json, safetensors headers, JSONL rows,
// PEFT and DeepSpeed configs.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

// A parsed JSON value. Objects keep their keys in file order.
struct Json {
    enum Type { Null, Bool, Number, String, Array, Object };
    Type type = Null;
    bool boolean = false;
    double number = 0;
    bool integral = false;  // the literal had no fraction or exponent and fits int64
    int64_t integer = 0;
    std::string string;
    std::vector<Json> array;
    std::vector<std::pair<std::string, Json>> object;

    const Json* find(std::string_view key) const;  // nullptr when absent (or not an object)
    bool is_string() const { return type == String; }
    bool is_int() const { return type == Number && integral; }
};

const char* json_type_name(Json::Type type);

// Parses `text` strictly (RFC 8259: no comments, no trailing commas; and no key twice in one object, which
// Python keeps the last of and DeepSpeed and HF read so), with one extension: the literals
// Infinity, -Infinity and NaN that Python's json module writes for non-finite floats (accelerate's
// DeepSpeed config holds "steps_per_print": Infinity). Errors name `source:LINE:COL`.
Json parse_json(std::string_view text, const std::string& source, int first_line = 1);
Json read_json_file(const std::string& path);
std::string json_quote(std::string_view text);  // a JSON string literal for `text`

std::string read_file(const std::string& path);  // whole file; fails naming the path

// Replaces every ill-formed UTF-8 subsequence by U+FFFD (maximal-subpart rule, as Python's
// errors="replace" and Rust's from_utf8_lossy do). Valid text is returned unchanged.
std::string utf8_sanitize(std::string_view bytes);

// Decodes one code point at s[i]: returns its byte length, or 0 with `bad` = the length of the ill-formed
// maximal subpart to replace by one U+FFFD.
size_t utf8_decode(std::string_view s, size_t i, uint32_t& cp, size_t& bad);
bool utf8_valid(std::string_view s);
void append_utf8(std::string& out, uint32_t cp);  // the UTF-8 bytes of one code point
