// support/nfc.cpp — Unicode Normalization Form C (support/nfc.h), in three steps over the code points:
//     decompose  each code point becomes its full canonical decomposition (table), a Hangul syllable
//                S = 0xAC00 + (l * 21 + v) * 28 + t its jamo L = 0x1100 + l, V = 0x1161 + v and, when t > 0,
//                T = 0x11A7 + t
//     order      each maximal run of non-starters (combining class > 0) is sorted by class, stably
//     compose    each code point c joins the last starter S before it when nothing between them blocks it
//                (a code point of class >= class(c), or any starter) and (S, c) has a primary composite
//                (table), or S, c are Hangul L + V or LV + T
// Stable code points (support/unicode_nfc.h) are copied as they are: NFC works on the windows around the others.
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

// Appends the NFC form of `window`, which holds unstable code points: decompose, order, compose.
void normalize_window(std::string_view window, std::string& out) {
    struct Char { uint32_t cp; uint8_t ccc; };
    std::vector<uint32_t> cps;  // decompose
    for (size_t i = 0; i < window.size();) {
        uint32_t cp;
        size_t bad, n = utf8_decode(window, i, cp, bad);
        if (n == 0) cp = 0xFFFD, n = bad;
        decompose(cp, cps);
        i += n;
    }
    std::vector<Char> d(cps.size());
    for (size_t i = 0; i < cps.size(); ++i) d[i] = {cps[i], uint8_t(nfc_combining_class(cps[i]))};
    for (size_t i = 0; i < d.size();) {  // order: sort each run of non-starters by class, stably
        size_t end = i;
        while (end < d.size() && d[end].ccc != 0) ++end;
        std::stable_sort(d.begin() + i, d.begin() + end, [](const Char& a, const Char& b) { return a.ccc < b.ccc; });
        i = end == i ? i + 1 : end;
    }
    std::vector<uint32_t> composed;  // compose
    size_t starter = SIZE_MAX;  // the last starter's index in composed
    int last = -1;              // the class of the last code point kept after it; -1: none (adjacent)
    for (const Char& c : d) {
        bool blocked = last != -1 && last >= c.ccc;
        if (starter != SIZE_MAX && !blocked)
            if (uint32_t composite = compose(composed[starter], c.cp)) {
                composed[starter] = composite;
                continue;
            }
        if (c.ccc == 0) starter = composed.size(), last = -1;
        else last = c.ccc;
        composed.push_back(c.cp);
    }
    for (uint32_t cp : composed) append_utf8(out, cp);
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

// A stable code point is a boundary: nothing before it reorders or composes with it or anything after it.
// So runs of stable code points are copied, and each window from the last stable code point before an
// unstable one up to the next stable one is normalized on its own.
std::string nfc(std::string_view text) {
    std::string out;
    out.reserve(text.size());
    size_t copied = 0;    // text[0, copied) is in out
    size_t boundary = 0;  // where the last stable code point starts
    for (size_t i = 0; i < text.size();) {
        uint32_t cp = (unsigned char)text[i];
        size_t bad = 1, n = cp < 0x80 ? 1 : utf8_decode(text, i, cp, bad);
        if (n && stable(cp)) { boundary = i, i += n; continue; }
        size_t end = i + (n ? n : bad);
        while (end < text.size()) {
            cp = (unsigned char)text[end];
            n = cp < 0x80 ? 1 : utf8_decode(text, end, cp, bad);
            if (n && stable(cp)) break;
            end += n ? n : bad;
        }
        out.append(text.substr(copied, boundary - copied));
        normalize_window(text.substr(boundary, end - boundary), out);
        copied = boundary = i = end;
    }
    out.append(text.substr(copied));
    return out;
}
