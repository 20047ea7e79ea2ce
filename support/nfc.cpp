// support/nfc.cpp — Unicode Normalization Form C (support/nfc.h), in three steps over the code points:
//     decompose  each code point becomes its full canonical decomposition (table), a Hangul syllable
//                S = 0xAC00 + (l * 21 + v) * 28 + t its jamo L = 0x1100 + l, V = 0x1161 + v and, when t > 0,
//                T = 0x11A7 + t
//     order      each maximal run of non-starters (combining class > 0) is sorted by class, stably
//     compose    each code point c joins the last starter S before it when nothing between them blocks it
//                (a code point of class >= class(c), or any starter) and (S, c) has a primary composite
//                (table), or S, c are Hangul L + V or LV + T
// Text whose code points are all stable (support/unicode_nfc.h) is already NFC and is returned as is.
#include "support/nfc.h"

#include <algorithm>
#include <iterator>
#include <vector>

#include "support/json.h"
#include "support/unicode_nfc.h"

namespace {

constexpr uint32_t kSBase = 0xAC00, kLBase = 0x1100, kVBase = 0x1161, kTBase = 0x11A7;
constexpr uint32_t kLCount = 19, kVCount = 21, kTCount = 28, kNCount = kVCount * kTCount, kSCount = kLCount * kNCount;
constexpr uint32_t kFirstUnstable = 0x300;  // the generator checks that nothing below is unstable
static_assert(kNfcUnstable[0].first >= kFirstUnstable, "support/unicode_nfc.h: a code point below U+0300 is unstable");

// The range holding cp in a sorted table of ranges, or nullptr.
template <size_t N>
const NfcRange* find_range(const NfcRange (&table)[N], uint32_t cp) {
    const NfcRange* it = std::upper_bound(table, table + N, cp, [](uint32_t c, const NfcRange& r) { return c < r.first; });
    return it != table && (it - 1)->last >= cp ? it - 1 : nullptr;
}

bool stable(uint32_t cp) { return cp < kFirstUnstable || !find_range(kNfcUnstable, cp); }

bool hangul_syllable(uint32_t cp) { return cp >= kSBase && cp < kSBase + kSCount; }

void decompose(uint32_t cp, std::vector<uint32_t>& out) {
    if (hangul_syllable(cp)) {
        uint32_t s = cp - kSBase;
        out.push_back(kLBase + s / kNCount);
        out.push_back(kVBase + s % kNCount / kTCount);
        if (s % kTCount) out.push_back(kTBase + s % kTCount);
        return;
    }
    const NfcDecomposition* end = std::end(kNfcDecomposition);
    const NfcDecomposition* d = std::lower_bound(std::begin(kNfcDecomposition), end, cp,
                                                 [](const NfcDecomposition& e, uint32_t c) { return e.cp < c; });
    if (d == end || d->cp != cp) out.push_back(cp);
    else out.insert(out.end(), kNfcPool + d->offset, kNfcPool + d->offset + d->length);
}

// The primary composite of a followed by b, or 0 when there is none.
uint32_t compose(uint32_t a, uint32_t b) {
    if (a >= kLBase && a < kLBase + kLCount && b >= kVBase && b < kVBase + kVCount)
        return kSBase + ((a - kLBase) * kVCount + (b - kVBase)) * kTCount;
    if (hangul_syllable(a) && (a - kSBase) % kTCount == 0 && b > kTBase && b < kTBase + kTCount) return a + (b - kTBase);
    uint64_t pair = uint64_t(a) << 32 | b;
    const NfcComposition* end = std::end(kNfcComposition);
    const NfcComposition* c = std::lower_bound(std::begin(kNfcComposition), end, pair,
                                               [](const NfcComposition& e, uint64_t p) { return e.pair < p; });
    return c != end && c->pair == pair ? c->composite : 0;
}

}  // namespace

int nfc_combining_class(uint32_t cp) {
    const NfcRange* r = cp < kFirstUnstable ? nullptr : find_range(kNfcCombiningClass, cp);
    return r ? r->value : 0;
}

bool nfc_quick_check(std::string_view text) {
    for (size_t i = 0; i < text.size();) {
        if ((unsigned char)text[i] < 0x80) { ++i; continue; }
        uint32_t cp;
        size_t bad, n = utf8_decode(text, i, cp, bad);
        if (n == 0 || !stable(cp)) return false;
        i += n;
    }
    return true;
}

std::string nfc(std::string_view text) {
    if (nfc_quick_check(text)) return std::string(text);
    std::vector<uint32_t> d;  // decomposed
    d.reserve(text.size());
    for (size_t i = 0; i < text.size();) {
        uint32_t cp;
        size_t bad, n = utf8_decode(text, i, cp, bad);
        if (n == 0) cp = 0xFFFD, n = bad;
        decompose(cp, d);
        i += n;
    }
    std::vector<uint8_t> ccc(d.size());
    for (size_t i = 0; i < d.size(); ++i) ccc[i] = uint8_t(nfc_combining_class(d[i]));
    for (size_t i = 0; i < d.size();) {  // order: sort each run of non-starters by class (insertion sort: stable)
        if (ccc[i] == 0) { ++i; continue; }
        size_t end = i;
        while (end < d.size() && ccc[end] != 0) ++end;
        for (size_t j = i + 1; j < end; ++j)
            for (size_t k = j; k > i && ccc[k - 1] > ccc[k]; --k) std::swap(ccc[k - 1], ccc[k]), std::swap(d[k - 1], d[k]);
        i = end;
    }
    std::vector<uint32_t> out;  // compose
    out.reserve(d.size());
    size_t starter = SIZE_MAX;  // the last starter's index in out
    int last = -1;              // the class of the last code point kept after it; -1: none (adjacent)
    for (size_t i = 0; i < d.size(); ++i) {
        bool blocked = last >= ccc[i] && last != -1;
        if (starter != SIZE_MAX && !blocked)
            if (uint32_t composite = compose(out[starter], d[i])) {
                out[starter] = composite;
                continue;
            }
        if (ccc[i] == 0) starter = out.size(), last = -1;
        else last = ccc[i];
        out.push_back(d[i]);
    }
    std::string result;
    result.reserve(text.size());
    for (uint32_t cp : out) append_utf8(result, cp);
    return result;
}
