// support/nfc.h — Unicode Normalization Form C (UAX #15), the normalizer of Qwen's tokenizer.json, as Hugging
// Face `tokenizers` 0.23 applies it (Unicode 9.0.0 tables, generated into support/unicode_nfc.h).
#pragma once
#include <cstdint>
#include <string>
#include <string_view>

// The NFC form of UTF-8 text: canonical decomposition, canonical ordering by combining class, canonical
// composition. Each ill-formed byte sequence becomes U+FFFD (callers pass sanitized text).
std::string nfc(std::string_view text);

// True when nfc(text) == text is known without normalizing: every code point is stable (combining class 0,
// unchanged by NFC, composing with nothing before it).
bool nfc_quick_check(std::string_view text);

int nfc_combining_class(uint32_t cp);  // canonical combining class (0 for starters and unknown code points)
