// test/test_report.cpp — report.h: answer scores on hand-made answers (F1 computed by hand), the charts
// read back by a small XML well-formedness checker (itself tested on broken documents) with every series
// found, its points counted and mapped linearly from the data, non-finite points skipped; ticks, thinning,
// durations, ETA, Progress with an injected clock, summary.json through parse_json, bench/collect.py on two
// run directories and on a malformed summary, and the run's log (its lines and CSV rows computed by hand).
#include "test.h"

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <ctime>
#include <fstream>
#include <map>

#include "data.h"
#include "support/json.h"
#include "support/report.h"

namespace {
// ---------------------------------------------------------------------------------------------- XML
// One element as read: name, attributes and its own text, entities decoded.
struct XmlElement {
    std::string name;
    std::map<std::string, std::string> attrs;
    std::string text;
    std::string attr(const std::string& key) const {
        auto it = attrs.find(key);
        return it == attrs.end() ? "" : it->second;
    }
};

// A well-formedness checker for what the charts write: an optional <?xml ...?> declaration, comments,
// one root element, tags balanced and nested, names valid, every attribute quoted and unique, every
// entity known (&amp; &lt; &gt; &quot; &apos; &#N; &#xN;), no '<' in an attribute value. read_xml
// returns the elements in document order, or throws XmlError naming what is wrong and where.
struct XmlError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

class XmlReader {
  public:
    explicit XmlReader(const std::string& text) : s_(text) {}
    std::vector<XmlElement> document() {
        if (starts("<?xml")) skip_past("?>", "unterminated XML declaration");
        misc();
        if (!starts("<") || starts("</")) bad("expected the root element");
        element();
        misc();
        if (i_ != s_.size()) bad("text after the root element");
        return std::move(out_);
    }

  private:
    [[noreturn]] void bad(const std::string& what) const { throw XmlError(what + " at byte " + std::to_string(i_)); }
    bool starts(const char* p) const { return s_.compare(i_, std::strlen(p), p) == 0; }
    void skip_past(const char* end, const char* what) {
        size_t e = s_.find(end, i_);
        if (e == std::string::npos) bad(what);
        i_ = e + std::strlen(end);
    }
    void spaces() {
        while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\n' || s_[i_] == '\t' || s_[i_] == '\r')) ++i_;
    }
    void misc() {  // whitespace and comments outside the root
        for (spaces(); starts("<!--"); spaces()) skip_past("-->", "unterminated comment");
    }
    std::string name() {
        auto first = [](char c) { return std::isalpha(static_cast<unsigned char>(c)) || c == '_' || c == ':'; };
        if (i_ >= s_.size() || !first(s_[i_])) bad("expected a name");
        size_t b = i_;
        while (i_ < s_.size() && (first(s_[i_]) || std::isdigit(static_cast<unsigned char>(s_[i_])) || s_[i_] == '-' || s_[i_] == '.')) ++i_;
        return s_.substr(b, i_ - b);
    }
    std::string entity() {  // at '&'
        size_t semi = s_.find(';', i_);
        if (semi == std::string::npos || semi - i_ > 12) bad("'&' that starts no entity");
        std::string e = s_.substr(i_ + 1, semi - i_ - 1);
        static const std::map<std::string, std::string> named = {{"amp", "&"}, {"lt", "<"}, {"gt", ">"}, {"quot", "\""}, {"apos", "'"}};
        if (named.count(e)) {
            i_ = semi + 1;
            return named.at(e);
        }
        bool hex = e.size() > 2 && e[0] == '#' && e[1] == 'x';
        std::string digits = e.substr(hex ? 2 : 1);
        if (e.size() < 2 || e[0] != '#' || digits.empty() ||
            digits.find_first_not_of(hex ? "0123456789abcdefABCDEF" : "0123456789") != std::string::npos)
            bad("unknown entity &" + e + ";");
        unsigned long cp = std::strtoul(digits.c_str(), nullptr, hex ? 16 : 10);
        if (cp == 0 || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) bad("entity &" + e + "; is not a character");
        std::string out;
        append_utf8(out, uint32_t(cp));
        i_ = semi + 1;
        return out;
    }
    std::string chars_until(char end) {  // text or an attribute value up to `end` (not consumed)
        std::string out;
        while (i_ < s_.size() && s_[i_] != end) {
            if (s_[i_] == '<') bad("'<' inside an attribute value");
            if (s_[i_] == '&') out += entity();
            else out += s_[i_++];
        }
        return out;
    }
    void element() {  // at '<'
        ++i_;
        XmlElement el;
        el.name = name();
        for (;;) {
            size_t before = i_;
            spaces();
            if (starts("/>")) {
                i_ += 2;
                out_.push_back(el);
                return;
            }
            if (starts(">")) break;
            if (i_ == before) bad("expected a space before attribute");
            std::string key = name();
            spaces();
            if (!starts("=")) bad("expected '=' after attribute " + key);
            ++i_;
            spaces();
            char quote = i_ < s_.size() ? s_[i_] : 0;
            if (quote != '"' && quote != '\'') bad("attribute " + key + " is not quoted");
            ++i_;
            std::string value = chars_until(quote);
            if (i_ >= s_.size()) bad("attribute " + key + " is not closed");
            ++i_;
            if (!el.attrs.emplace(key, value).second) bad("duplicate attribute " + key);
        }
        ++i_;
        size_t index = out_.size();
        out_.push_back(el);
        for (;;) {
            out_[index].text += chars_until('<');
            if (i_ >= s_.size()) bad("<" + el.name + "> is not closed");
            if (starts("<!--")) {
                skip_past("-->", "unterminated comment");
            } else if (starts("</")) {
                i_ += 2;
                std::string closing = name();
                spaces();
                if (!starts(">")) bad("expected '>'");
                ++i_;
                if (closing != el.name) bad("</" + closing + "> closes <" + el.name + ">");
                return;
            } else {
                element();
            }
        }
    }

    const std::string& s_;
    size_t i_ = 0;
    std::vector<XmlElement> out_;
};

std::vector<XmlElement> read_xml(const std::string& text) { return XmlReader(text).document(); }

std::vector<const XmlElement*> with_class(const std::vector<XmlElement>& doc, const std::string& name, const std::string& cls) {
    std::vector<const XmlElement*> out;
    for (const XmlElement& e : doc)
        if (e.name == name && e.attr("class") == cls) out.push_back(&e);
    return out;
}

const XmlElement& only(const std::vector<XmlElement>& doc, const std::string& name, const std::string& cls) {
    auto found = with_class(doc, name, cls);
    CAPTURE(cls);
    REQUIRE(found.size() == 1);
    return *found[0];
}

Series points_of(const XmlElement& polyline) {  // "x,y x,y ..." (pixels)
    Series out;
    const std::string& s = polyline.attr("points");
    for (size_t i = 0; i < s.size();) {
        char* end = nullptr;
        double x = std::strtod(s.c_str() + i, &end);
        REQUIRE(*end == ',');
        double y = std::strtod(end + 1, &end);
        out.push_back({x, y});
        i = size_t(end - s.c_str());
        while (i < s.size() && s[i] == ' ') ++i;
    }
    return out;
}

// Every number the chart places (coordinates, sizes, points) is finite: no NaN leaked into the drawing.
void check_coordinates_finite(const std::vector<XmlElement>& doc) {
    for (const XmlElement& e : doc) {
        for (const char* key : {"x", "y", "x1", "y1", "x2", "y2", "cx", "cy", "r"}) {
            if (!e.attrs.count(key)) continue;
            CAPTURE(e.name);
            CAPTURE(key);
            CHECK(std::isfinite(std::strtod(e.attr(key).c_str(), nullptr)));
        }
        if (e.name == "polyline")
            for (auto p : points_of(e)) CHECK((std::isfinite(p.first) && std::isfinite(p.second)));
    }
}

// The affine map data -> pixels of one coordinate (x or y), fitted on the points with the smallest and
// largest data value (well conditioned); pixels(v) = p0 + scale·(v − d0).
struct Affine {
    double d0 = 0, p0 = 0, scale = 0;
    double operator()(double v) const { return p0 + scale * (v - d0); }
};
Affine fit_affine(const Series& data, const Series& pixels, bool x) {
    auto coord = [x](const std::pair<double, double>& p) { return x ? p.first : p.second; };
    auto by = [&](const auto& a, const auto& b) { return coord(a) < coord(b); };
    size_t lo = size_t(std::min_element(data.begin(), data.end(), by) - data.begin());
    size_t hi = size_t(std::max_element(data.begin(), data.end(), by) - data.begin());
    Affine f{coord(data[lo]), coord(pixels[lo]), 0};
    if (coord(data[hi]) > f.d0) f.scale = (coord(pixels[hi]) - f.p0) / (coord(data[hi]) - f.d0);
    return f;
}

// Pixels must be one affine map of the data per coordinate; %.2f output rounds each pixel by up to
// 0.005 px, so the bound is 0.02 px (three roundings: the point and the two that fit the map).
void check_affine(const Series& data, const Series& pixels) {
    REQUIRE(data.size() == pixels.size());
    REQUIRE(data.size() >= 2);
    for (bool x : {true, false}) {
        Affine f = fit_affine(data, pixels, x);
        for (size_t i = 0; i < data.size(); ++i) {
            CAPTURE(x);
            CAPTURE(i);
            CHECK(std::fabs((x ? pixels[i].first : pixels[i].second) - f(x ? data[i].first : data[i].second)) < 0.02);
        }
    }
}

// The children named `child` of the group with class `cls`: the reader lists elements in document
// order, and the charts' groups hold one kind of element, so they are the run right after the group.
std::vector<const XmlElement*> children(const std::vector<XmlElement>& doc, const std::string& cls, const std::string& child) {
    std::vector<const XmlElement*> out;
    bool inside = false;
    for (const XmlElement& el : doc) {
        if (el.name == child && inside) out.push_back(&el);
        else inside = el.name == "g" && el.attr("class") == cls;
    }
    return out;
}
size_t markers_of(const std::vector<XmlElement>& doc, const std::string& cls) { return children(doc, cls, "circle").size(); }

// The labels of a tick group, e.g. "y-ticks": at least two, all different.
void check_tick_labels(const std::vector<XmlElement>& doc, const std::string& cls) {
    std::vector<std::string> labels;
    for (const XmlElement* e : children(doc, cls, "text")) labels.push_back(e->text);
    CAPTURE(cls);
    CHECK(labels.size() >= 2);
    std::sort(labels.begin(), labels.end());
    CHECK(std::adjacent_find(labels.begin(), labels.end()) == labels.end());
}

std::string texts(const std::vector<XmlElement>& doc) {  // every element's text, one per line
    std::string out;
    for (const XmlElement& e : doc) out += e.text + "\n";
    return out;
}

uint64_t fresh_seed() { return uint64_t(time(nullptr)) * 2654435761ull; }

// Random finite (x, y) points, x increasing from 0; `bad` of them then get a NaN or ±inf coordinate.
Series random_series(Rng& rng, size_t n, double y_lo, double y_hi, size_t bad, size_t* bad_count) {
    Series s;
    double x = 0;
    for (size_t i = 0; i < n; ++i, x += 1 + rng.below(3)) s.push_back({x, y_lo + (y_hi - y_lo) * rng.uniform()});
    const double poison[] = {NAN, INFINITY, -INFINITY};
    std::vector<bool> hit(n, false);
    for (size_t k = 0; k < bad; ++k) {
        size_t i = rng.below(n);
        (rng.below(4) == 0 ? s[i].first : s[i].second) = poison[rng.below(3)];
        hit[i] = true;
    }
    *bad_count = size_t(std::count(hit.begin(), hit.end(), true));
    return s;
}

Series finite_only(const Series& s) {
    Series out;
    for (auto p : s)
        if (std::isfinite(p.first) && std::isfinite(p.second)) out.push_back(p);
    return out;
}

// Runs a shell command; returns its stdout+stderr, sets `status` to its exit status.
std::string run_command(const std::string& command, int& status) {
    std::FILE* p = popen((command + " 2>&1").c_str(), "r");
    REQUIRE(p);
    std::string out;
    char buf[4096];
    for (size_t n; (n = std::fread(buf, 1, sizeof buf, p)) > 0;) out.append(buf, n);
    int raw = pclose(p);
    status = WIFEXITED(raw) ? WEXITSTATUS(raw) : -1;
    return out;
}

std::vector<std::string> lines_of(const std::string& text) {
    std::vector<std::string> out;
    for (size_t i = 0; i < text.size();) {
        size_t j = text.find('\n', i);
        if (j == std::string::npos) j = text.size();
        out.push_back(text.substr(i, j - i));
        i = j + 1;
    }
    return out;
}

std::vector<std::string> cells(const std::string& row) {  // "| a | b |" -> {"a", "b"}
    std::vector<std::string> out;
    size_t i = row.find('|');
    while (i != std::string::npos) {
        size_t j = row.find('|', i + 1);
        if (j == std::string::npos) break;
        std::string c = row.substr(i + 1, j - i - 1);
        c.erase(0, c.find_first_not_of(' '));
        c.erase(c.find_last_not_of(' ') + 1);
        out.push_back(c);
        i = j;
    }
    return out;
}
}  // namespace

// ---------------------------------------------------------------------------------------------- answers
TEST_CASE("report: answer scores on hand-made answers") {
    // exact, after case, punctuation and articles
    CHECK(exact_match("A sheltered port.", "a sheltered PORT"));
    CHECK(token_f1("A sheltered port.", "a sheltered PORT") == 1.0);
    CHECK_FALSE(exact_match("a sheltered port", "a sheltered harbor"));
    // partial: pred {cat sat on mat} vs ref {cat sat on red mat}: P = 4/4, R = 4/5, F1 = 2·0.8/1.8 = 8/9
    CHECK(token_f1("The cat sat on the mat", "a cat sat on a red mat") == doctest::Approx(8.0 / 9).epsilon(1e-12));
    CHECK(token_f1("a cat sat on a red mat", "The cat sat on the mat") == doctest::Approx(8.0 / 9).epsilon(1e-12));
    // repeated words count once each: pred {port port port} vs ref {port of call}: 1 common, P = R = 1/3
    CHECK(token_f1("port port port", "port of call") == doctest::Approx(1.0 / 3).epsilon(1e-12));
    // pred {ship} vs ref {large ship at sea}: P = 1, R = 1/4, F1 = 2·0.25/1.25 = 0.4
    CHECK(token_f1("the ship", "a large ship, at sea") == doctest::Approx(0.4).epsilon(1e-12));
    CHECK(token_f1("harbor", "a sheltered port") == 0.0);
    // articles and punctuation ignored; words that only start like an article kept
    CHECK(normalize_answer("The  Harbor, an (old)\tport!  ") == "harbor old port");
    CHECK(normalize_answer("Theater an-other anthem") == "theater another anthem");
    CHECK(normalize_answer("don't stop.") == "dont stop");
    CHECK(normalize_answer("A") == "");
    // empty: both empty (also after normalization) = 1; one empty = 0
    CHECK(token_f1("", "") == 1.0);
    CHECK(token_f1("The.", " a ") == 1.0);
    CHECK(exact_match("", "the"));
    CHECK(token_f1("", "port") == 0.0);
    CHECK(token_f1("port", "") == 0.0);
    CHECK(token_f1("the", "port") == 0.0);
    // UTF-8: only ASCII letters change case, other bytes kept
    CHECK(normalize_answer("Ünïcode CAFÉ — 東京, Straße!") == "Ünïcode cafÉ — 東京 straße");
    CHECK(token_f1("CAFÉ 東京", "cafÉ 東京") == 1.0);
    CHECK(token_f1("café", "cafÉ") == 0.0);
}

TEST_CASE("report: normalization keeps random UTF-8 valid and every non-ASCII byte") {
    uint64_t seed = fresh_seed();
    CAPTURE(seed);
    for (uint64_t k = 0; k < 50; ++k) {
        std::string text = random_text(seed + k, 1 + k * 7);
        std::string n = normalize_answer(text);
        CHECK(utf8_valid(n));
        std::string high_in, high_out;
        for (char c : text) if (static_cast<unsigned char>(c) >= 0x80) high_in += c;
        for (char c : n) if (static_cast<unsigned char>(c) >= 0x80) high_out += c;
        CHECK(high_in == high_out);
        CHECK(normalize_answer(n) == n);  // idempotent
        CHECK(token_f1(text, text) == 1.0);
        double f = token_f1(text, random_text(seed + k + 1000, 1 + k * 5));
        CHECK((f >= 0 && f <= 1));
    }
}

TEST_CASE("report: AnswerScore averages") {
    AnswerScore s;
    CHECK(std::isnan(s.mean_f1()));
    CHECK(std::isnan(s.exact_rate()));
    s.add("A sheltered port.", "a sheltered port");  // F1 1, exact
    s.add("The cat sat on the mat", "a cat sat on a red mat");  // F1 8/9
    s.add("harbor", "a sheltered port");  // F1 0
    CHECK(s.n == 3);
    CHECK(s.mean_f1() == doctest::Approx((1 + 8.0 / 9) / 3).epsilon(1e-12));
    CHECK(s.exact_rate() == doctest::Approx(1.0 / 3).epsilon(1e-12));
}

// ---------------------------------------------------------------------------------------------- charts
TEST_CASE("report: the XML checker rejects each kind of broken document") {
    CHECK(read_xml("<?xml version=\"1.0\"?>\n<!-- c --><a x='1' y=\"&lt;&#233;&#x1F600;\"><b/>t &amp; u<c></c></a>\n").size() == 3);
    CHECK(read_xml("<a y=\"&lt;&#233;&#x1F600;\"/>")[0].attr("y") == "<\xC3\xA9\xF0\x9F\x98\x80");
    struct Case { const char* text; const char* message; };
    const Case cases[] = {
        {"", "expected the root element"},
        {"<a><b></a></b>", "</a> closes <b>"},
        {"<a>", "<a> is not closed"},
        {"<a x=1/>", "attribute x is not quoted"},
        {"<a x=\"1/>", "attribute x is not closed"},
        {"<a x=\"1\" x=\"2\"/>", "duplicate attribute x"},
        {"<a x=\"<\"/>", "'<' inside an attribute value"},
        {"<a>&bogus;</a>", "unknown entity &bogus;"},
        {"<a>AT&T</a>", "'&' that starts no entity"},
        {"<a>&#xD800;</a>", "is not a character"},
        {"<a/><b/>", "text after the root element"},
        {"<a x=\"1\"y=\"2\"/>", "expected a space before attribute"},
        {"<1a/>", "expected a name"},
    };
    for (const Case& c : cases) {
        CAPTURE(c.text);
        CHECK_THROWS_WITH_AS(read_xml(c.text), doctest::Contains(c.message), XmlError);
    }
}

TEST_CASE("report: nice ticks step by 1, 2 or 5 and cover the range") {
    Rng rng(fresh_seed());
    for (int k = 0; k < 500; ++k) {
        double lo = (rng.uniform() - 0.5) * std::pow(10.0, double(rng.below(12)) - 4);
        double hi = lo + std::max(rng.uniform() * std::pow(10.0, double(rng.below(14)) - 6), 1e-8 * std::fabs(lo));
        std::vector<double> t = nice_ticks(lo, hi);
        CAPTURE(lo);
        CAPTURE(hi);
        REQUIRE(t.size() >= 2);
        CHECK(t.size() <= 12);
        CHECK(t.front() <= lo);
        CHECK(t.back() >= hi);
        double step = t[1] - t[0];
        for (size_t i = 1; i < t.size(); ++i) CHECK(std::fabs((t[i] - t[i - 1]) - step) <= 1e-9 * std::max(std::fabs(t[i]), step));
        double mantissa = step / std::pow(10.0, std::floor(std::log10(step)));  // 10 when step is 1e(k+1) less an ulp
        CAPTURE(step);
        bool one_two_five = false;
        for (double m : {1.0, 2.0, 5.0, 10.0}) one_two_five |= std::fabs(mantissa - m) < 1e-6;
        CHECK(one_two_five);
    }
    auto same = [](const std::vector<double>& got, const std::vector<double>& want) {
        REQUIRE(got.size() == want.size());
        for (size_t i = 0; i < got.size(); ++i) CHECK(got[i] == doctest::Approx(want[i]).epsilon(1e-12));
    };
    same(nice_ticks(0, 10), {0, 2, 4, 6, 8, 10});
    same(nice_ticks(0.13, 0.87), {0, 0.2, 0.4, 0.6, 0.8, 1});
    same(nice_ticks(3.2e-5, 9.9e-4), {0, 2e-4, 4e-4, 6e-4, 8e-4, 1e-3});
    same(nice_ticks(0, 1234567), {0, 5e5, 1e6, 1.5e6});
    for (double v : {0.0, 2.5, -3e-4, 1e6}) {  // a single value is widened around itself
        std::vector<double> t = nice_ticks(v, v);
        CAPTURE(v);
        CHECK(t.front() < v);
        CHECK(t.back() > v);
    }
    CHECK(nice_ticks(NAN, 1) == nice_ticks(0, 1));
}

TEST_CASE("report: thin_series keeps the first and last point") {
    Series s;
    for (int i = 0; i < 100003; ++i) s.push_back({double(i), double(i % 7)});
    Series t = thin_series(s, 2000);
    REQUIRE(t.size() == 2000);
    CHECK(t.front() == s.front());
    CHECK(t.back() == s.back());
    for (size_t i = 1; i < t.size(); ++i) CHECK(t[i].first > t[i - 1].first);
    CHECK(thin_series(Series(s.begin(), s.begin() + 2000), 2000).size() == 2000);
    CHECK(thin_series(s, 1) == Series{s.front()});
    CHECK(thin_series(s, 0).empty());
}

TEST_CASE("report: the loss chart is well-formed SVG with every series, non-finite points skipped") {
    uint64_t seed = fresh_seed();
    CAPTURE(seed);
    Rng rng(seed);
    size_t bad_train = 0, bad_eval = 0, bad_lr = 0;
    Series train = random_series(rng, 500, 1.5, 4.0, 9, &bad_train);
    Series eval = random_series(rng, 6, 1.8, 3.5, 1, &bad_eval);
    Series lr = random_series(rng, 500, 0, 2e-4, 0, &bad_lr);
    std::string title = "loss <tiny> & \"LoRA\" 'r=8' — café 東京";
    std::string path = temp_dir("report_loss") + "/loss.svg";
    write_loss_svg(path, title, train, eval, lr);
    CHECK(access((path + ".tmp").c_str(), F_OK) != 0);  // renamed into place
    std::vector<XmlElement> doc = read_xml(read_file(path));
    REQUIRE(!doc.empty());
    CHECK(doc[0].name == "svg");
    CHECK(doc[0].attr("xmlns") == "http://www.w3.org/2000/svg");
    CHECK(only(doc, "text", "title").text == title);
    CHECK(only(doc, "text", "x-label").text == "step");
    CHECK(only(doc, "text", "y-label").text == "loss");
    CHECK(only(doc, "text", "y2-label").text == "learning rate");
    check_coordinates_finite(doc);
    for (const char* ticks : {"x-ticks", "y-ticks", "y2-ticks"}) check_tick_labels(doc, ticks);

    const XmlElement &t = only(doc, "polyline", "train-loss"), &e = only(doc, "polyline", "eval-loss"), &l = only(doc, "polyline", "lr");
    CHECK(points_of(t).size() == 500 - bad_train);
    CHECK(points_of(e).size() == 6 - bad_eval);
    CHECK(points_of(l).size() == 500);
    check_affine(finite_only(train), points_of(t));
    check_affine(finite_only(lr), points_of(l));
    CHECK(markers_of(doc, "eval-loss-markers") == 6 - bad_eval);
    CHECK(with_class(doc, "g", "train-loss-markers").empty());
    // The three series are told apart by colour, and the legend names each.
    CHECK(t.attr("stroke") != e.attr("stroke"));
    CHECK(t.attr("stroke") != l.attr("stroke"));
    CHECK(e.attr("stroke") != l.attr("stroke"));
    std::string all = texts(doc);
    for (const char* name : {"train loss\n", "eval loss\n", "learning rate\n"}) CHECK(all.find(name) != std::string::npos);
    // Train and eval loss share the left axis: the same loss maps to the same pixel row.
    Affine train_y = fit_affine(finite_only(train), points_of(t), false);
    Series ed = finite_only(eval), ep = points_of(e);
    for (size_t i = 0; i < ed.size(); ++i) CHECK(std::fabs(ep[i].second - train_y(ed[i].second)) < 0.05);
}

TEST_CASE("report: the eval markers are one circle per finite eval point") {
    std::string path = temp_dir("report_markers") + "/loss.svg";
    write_loss_svg(path, "m", {{0, 3}, {10, 2}}, {{0, 3.1}, {5, NAN}, {10, 2.2}, {15, 2.0}}, {});
    std::vector<XmlElement> doc = read_xml(read_file(path));
    CHECK(markers_of(doc, "eval-loss-markers") == 3);
    CHECK(points_of(only(doc, "polyline", "eval-loss")).size() == 3);
    CHECK(with_class(doc, "polyline", "lr").empty());  // no lr: no series, no right axis
    CHECK(with_class(doc, "text", "y2-label").empty());
}

TEST_CASE("report: loss chart edge cases: empty, one point, constant, all NaN, a million steps, I/O error") {
    std::string dir = temp_dir("report_edges");
    SUBCASE("empty") {
        write_loss_svg(dir + "/empty.svg", "empty", {}, {}, {});
        std::vector<XmlElement> doc = read_xml(read_file(dir + "/empty.svg"));
        CHECK(with_class(doc, "polyline", "train-loss").empty());
        CHECK(only(doc, "text", "no-data").text == "no data");
        check_coordinates_finite(doc);
    }
    SUBCASE("one point and a constant series") {
        write_loss_svg(dir + "/one.svg", "one", {{7, 2.0}}, {}, {{0, 1e-3}, {5, 1e-3}, {9, 1e-3}});
        std::vector<XmlElement> doc = read_xml(read_file(dir + "/one.svg"));
        CHECK(points_of(only(doc, "polyline", "train-loss")).size() == 1);
        CHECK(with_class(doc, "g", "train-loss-markers").size() == 1);  // a lone point gets a marker
        CHECK(points_of(only(doc, "polyline", "lr")).size() == 3);
        check_coordinates_finite(doc);
    }
    SUBCASE("a nearly constant series far from zero: tick labels still differ") {
        Series train;
        for (int i = 0; i < 100; ++i) train.push_back({1e6 + i, 1000 + 1e-7 * i});
        write_loss_svg(dir + "/flat.svg", "flat", train, {}, {});
        std::vector<XmlElement> doc = read_xml(read_file(dir + "/flat.svg"));
        check_tick_labels(doc, "x-ticks");
        check_tick_labels(doc, "y-ticks");
        check_affine(train, points_of(only(doc, "polyline", "train-loss")));
    }
    SUBCASE("all NaN") {
        write_loss_svg(dir + "/nan.svg", "nan", {{0, NAN}, {1, NAN}}, {{NAN, 1}}, {});
        std::vector<XmlElement> doc = read_xml(read_file(dir + "/nan.svg"));
        CHECK(with_class(doc, "polyline", "train-loss").empty());
        CHECK(with_class(doc, "polyline", "eval-loss").empty());
        CHECK(texts(doc).find("train loss") == std::string::npos);  // nor in the legend
        check_coordinates_finite(doc);
    }
    SUBCASE("a million steps") {
        Series train;
        for (int i = 0; i < 1000000; ++i) train.push_back({double(i), 2 + std::sin(i * 0.001)});
        write_loss_svg(dir + "/big.svg", "big", train, {{0, 3}, {999999, 1}}, {});
        std::string text = read_file(dir + "/big.svg");
        CHECK(text.size() < 200000);
        std::vector<XmlElement> doc = read_xml(text);
        Series t = points_of(only(doc, "polyline", "train-loss")), e = points_of(only(doc, "polyline", "eval-loss"));
        CHECK(t.size() == kMaxChartPoints);
        CHECK(t.front().first == e.front().first);  // first and last step kept
        CHECK(t.back().first == e.back().first);
        std::vector<std::string> x_labels;
        for (const XmlElement* label : children(doc, "x-ticks", "text")) x_labels.push_back(label->text);
        CHECK(x_labels == std::vector<std::string>{"0", "200000", "400000", "600000", "800000", "1000000"});
    }
    SUBCASE("a path that cannot be written") {
        std::string bad = dir + "/missing/loss.svg";
        CHECK_THROWS_WITH_AS(write_loss_svg(bad, "x", {{0, 1}}, {}, {}), doctest::Contains(("cannot write " + bad).c_str()), Error);
        CHECK_THROWS_WITH_AS(write_memory_svg(bad, "x", {}), doctest::Contains(bad.c_str()), Error);
    }
}

TEST_CASE("report: the memory chart has one line per rank") {
    uint64_t seed = fresh_seed();
    CAPTURE(seed);
    Rng rng(seed);
    std::vector<Series> ranks(3);
    std::vector<size_t> bad(3);
    for (size_t r = 0; r < 3; ++r) ranks[r] = random_series(rng, 10 + rng.below(200), 5 + r, 20 + r, r == 1 ? 4 : 0, &bad[r]);
    std::string path = temp_dir("report_memory") + "/memory.svg";
    write_memory_svg(path, "GPU memory, stage 3 & offload", ranks);
    std::vector<XmlElement> doc = read_xml(read_file(path));
    check_coordinates_finite(doc);
    std::string all = texts(doc);
    for (size_t r = 0; r < 3; ++r) {
        CAPTURE(r);
        const XmlElement& line = only(doc, "polyline", "rank-" + std::to_string(r));
        CHECK(points_of(line).size() == ranks[r].size() - bad[r]);
        check_affine(finite_only(ranks[r]), points_of(line));
        CHECK(all.find("rank " + std::to_string(r) + "\n") != std::string::npos);
    }
    CHECK(with_class(doc, "polyline", "rank-3").empty());
    check_tick_labels(doc, "x-ticks");
    check_tick_labels(doc, "y-ticks");
    CHECK(only(doc, "polyline", "rank-0").attr("stroke") != only(doc, "polyline", "rank-1").attr("stroke"));
    CHECK(only(doc, "polyline", "rank-1").attr("stroke") != only(doc, "polyline", "rank-2").attr("stroke"));
    CHECK(only(doc, "text", "title").text == "GPU memory, stage 3 & offload");

    write_memory_svg(path, "none", {});
    CHECK(only(read_xml(read_file(path)), "text", "no-data").text == "no data");
}

// ---------------------------------------------------------------------------------------------- progress
TEST_CASE("report: format_duration and eta_seconds") {
    const std::pair<double, const char*> durations[] = {
        {0, "0s"}, {0.4, "0s"}, {42, "42s"}, {59.4, "59s"}, {59.6, "1m00s"}, {185, "3m05s"}, {3599.4, "59m59s"},
        {3600, "1h00m"}, {3720, "1h02m"}, {10799, "2h59m"}, {86399.6, "1d00h"}, {183600, "2d03h"}, {1e7, "115d17h"},
        {-1, "?"}, {NAN, "?"}, {INFINITY, "?"}, {-INFINITY, "?"}};
    for (auto [seconds, text] : durations) {
        CAPTURE(seconds);
        CHECK(format_duration(seconds) == text);
    }
    CHECK(eta_seconds(5, 10, 3) == doctest::Approx(3).epsilon(1e-12));
    CHECK(eta_seconds(1, 4, 2) == doctest::Approx(6).epsilon(1e-12));
    CHECK(std::isnan(eta_seconds(0, 10, 3)));
    CHECK(std::isnan(eta_seconds(-1, 10, 3)));
    CHECK(std::isnan(eta_seconds(NAN, 10, 3)));
    CHECK(std::isnan(eta_seconds(5, 10, NAN)));
    CHECK(eta_seconds(10, 10, 5) == 0);
    CHECK(eta_seconds(12, 10, 5) == 0);
    Rng rng(fresh_seed());
    for (int k = 0; k < 100; ++k) {  // the rate so far, extrapolated: done/elapsed == (total-done)/eta
        double total = 1 + rng.uniform() * 1e6, done = total * (0.01 + 0.98 * rng.uniform()), elapsed = 0.1 + rng.uniform() * 1e4;
        CHECK(eta_seconds(done, total, elapsed) * done / elapsed == doctest::Approx(total - done).epsilon(1e-9));
    }
}

TEST_CASE("report: Progress prints after the interval, at most once per interval, with the right numbers") {
    double now = 100;
    std::vector<std::string> lines;
    auto clock = [&] { return now; };
    auto print = [&](const std::string& line) { lines.push_back(line); };
    const double GiB = double(1 << 30);

    Progress p("loading model", 12 * GiB, Progress::Units::Bytes, true, clock, print);
    now = 101.9, p.update(1 * GiB);
    CHECK(lines.empty());  // not before 2 s
    now = 102.0, p.update(5.4 * GiB);
    REQUIRE(lines.size() == 1);
    CHECK(lines[0] == "loading model: 45% (5.4/12.0 GiB) 2s elapsed, ETA 2s");  // 2·6.6/5.4 = 2.4 s
    now = 103.5, p.update(7 * GiB);
    CHECK(lines.size() == 1);  // 1.5 s since the last line
    now = 104.0, p.update(9 * GiB);
    REQUIRE(lines.size() == 2);
    CHECK(lines[1] == "loading model: 75% (9.0/12.0 GiB) 4s elapsed, ETA 1s");  // 4·3/9 = 1.3 s
    now = 107.2, p.finish();
    REQUIRE(lines.size() == 3);
    CHECK(lines[2] == "loading model: done (12.0 GiB) in 7s");
    p.finish(), p.update(12 * GiB);
    CHECK(lines.size() == 3);
    CHECK(p.lines_printed() == 3);

    lines.clear(), now = 0;
    Progress items("tokenizing", 1000, Progress::Units::Items, true, clock, print);
    now = 3, items.update(250);
    REQUIRE(lines.size() == 1);
    CHECK(lines[0] == "tokenizing: 25% (250/1000) 3s elapsed, ETA 9s");

    lines.clear(), now = 0;
    Progress mib("reading", 300.0 * (1 << 20), Progress::Units::Bytes, true, clock, print);
    now = 2, mib.update(100.0 * (1 << 20));
    REQUIRE(lines.size() == 1);
    CHECK(lines[0] == "reading: 33% (100.0/300.0 MiB) 2s elapsed, ETA 4s");

    Rng rng(fresh_seed());  // the percentage is floor(100·done/total)
    for (int k = 0; k < 50; ++k) {
        lines.clear(), now = 0;
        double total = 1 + double(rng.below(100000)), done = double(rng.below(uint64_t(total) + 1));
        Progress r("x", total, Progress::Units::Items, true, clock, print);
        now = 2.5, r.update(done);
        REQUIRE(lines.size() == 1);
        CHECK(lines[0].rfind("x: " + std::to_string(int(std::floor(100 * done / total))) + "% (", 0) == 0);
    }
}

TEST_CASE("report: Progress is silent for a short phase and when disabled") {
    double now = 0;
    std::vector<std::string> lines;
    auto clock = [&] { return now; };
    auto print = [&](const std::string& line) { lines.push_back(line); };
    {
        Progress quick("tokenizing", 100, Progress::Units::Items, true, clock, print);
        for (int i = 1; i <= 100; ++i) now = i * 0.019, quick.update(i);
        quick.finish();
        CHECK(lines.empty());
    }
    {
        now = 0;
        Progress slow_no_updates("saving", 100, Progress::Units::Items, true, clock, print);
        now = 5, slow_no_updates.finish();
        REQUIRE(lines.size() == 1);
        CHECK(lines[0] == "saving: done (100) in 5s");
    }
    lines.clear();
    {
        now = 0;
        Progress other_rank("loading model", 1e9, Progress::Units::Bytes, false, clock, print);
        for (int i = 1; i <= 10; ++i) now = i * 3, other_rank.update(i * 1e8);
        other_rank.finish();
        CHECK(lines.empty());
        CHECK(other_rank.lines_printed() == 0);
    }
    {
        now = 0;
        Progress unknown("scanning", 0, Progress::Units::Items, true, clock, print);  // no total: no % nor ETA
        now = 2, unknown.update(40);
        REQUIRE(lines.size() == 1);
        CHECK(lines[0] == "scanning: (40) 2s elapsed");
    }
}

// ---------------------------------------------------------------------------------------------- summary
TEST_CASE("report: summary.json parses and has every key") {
    Rng rng(fresh_seed());
    RunSummary s;
    s.title = "fine-tuning \"summary\" — é\n";
    s.world_size = 1 + int64_t(rng.below(64)), s.zero_stage = int64_t(rng.below(4)), s.offload = true;
    s.checkpoint_activations = rng.below(2), s.lora_rank = int64_t(rng.below(64));
    s.final_train_loss = 1 + rng.uniform(), s.mean_train_loss = 2 + rng.uniform();
    s.eval_losses = {2 + rng.uniform(), NAN, 1.5 + rng.uniform()};
    s.steps = int64_t(rng.below(100000)), s.steps_per_epoch = int64_t(rng.below(1000));
    s.train_samples_per_s = 1000 * rng.uniform(), s.eval_samples_per_s = 1000 * rng.uniform();
    s.global_train_samples_per_s = 8000 * rng.uniform();
    s.tokens_per_s = 1e6 * rng.uniform(), s.tflops = NAN;  // unknown: written as null
    s.gpu_device_peak_gib = 80 * rng.uniform(), s.gpu_device_mean_gib = NAN;
    s.gpu_peak_gib = 80 * rng.uniform(), s.gpu_mean_gib = 40 * rng.uniform(), s.gpu_min_gib = INFINITY;
    s.seconds = 1e5 * rng.uniform();
    std::string path = temp_dir("report_summary") + "/summary.json";
    write_summary_json(path, s);
    Json j = read_json_file(path);
    REQUIRE(j.type == Json::Object);
    const char* keys[] = {"title", "world_size", "zero_stage", "offload", "checkpoint_activations", "lora_rank",
                          "final_train_loss", "mean_train_loss", "eval_losses", "steps", "steps_per_epoch", "train_samples_per_s",
                          "global_train_samples_per_s", "eval_samples_per_s", "tokens_per_s", "tflops", "gpu_peak_gib", "gpu_mean_gib",
                          "gpu_min_gib", "gpu_device_peak_gib", "gpu_device_mean_gib", "seconds"};
    REQUIRE(j.object.size() == sizeof keys / sizeof keys[0]);
    for (size_t i = 0; i < j.object.size(); ++i) CHECK(j.object[i].first == keys[i]);
    CHECK(j.find("title")->string == s.title);
    CHECK(j.find("world_size")->integer == s.world_size);
    CHECK(j.find("zero_stage")->integer == s.zero_stage);
    CHECK(j.find("offload")->boolean);
    CHECK(j.find("checkpoint_activations")->boolean == s.checkpoint_activations);
    CHECK(j.find("lora_rank")->integer == s.lora_rank);
    CHECK(j.find("final_train_loss")->number == s.final_train_loss);  // exact: written to round-trip
    CHECK(j.find("mean_train_loss")->number == s.mean_train_loss);
    CHECK(j.find("global_train_samples_per_s")->number == s.global_train_samples_per_s);
    CHECK(j.find("gpu_device_peak_gib")->number == s.gpu_device_peak_gib);
    CHECK(j.find("gpu_device_mean_gib")->type == Json::Null);
    REQUIRE(j.find("eval_losses")->array.size() == 3);
    CHECK(j.find("eval_losses")->array[0].number == s.eval_losses[0]);
    CHECK(j.find("eval_losses")->array[1].type == Json::Null);
    CHECK(j.find("eval_losses")->array[2].number == s.eval_losses[2]);
    CHECK(j.find("steps")->integer == s.steps);
    CHECK(j.find("steps_per_epoch")->integer == s.steps_per_epoch);
    CHECK(j.find("train_samples_per_s")->number == s.train_samples_per_s);
    CHECK(j.find("eval_samples_per_s")->number == s.eval_samples_per_s);
    CHECK(j.find("tokens_per_s")->number == s.tokens_per_s);
    CHECK(j.find("tflops")->type == Json::Null);
    CHECK(j.find("gpu_peak_gib")->number == s.gpu_peak_gib);
    CHECK(j.find("gpu_mean_gib")->number == s.gpu_mean_gib);
    CHECK(j.find("gpu_min_gib")->type == Json::Null);
    CHECK(j.find("seconds")->number == s.seconds);
    CHECK_THROWS_WITH_AS(write_summary_json("/nonexistent_dir/summary.json", s),
                         doctest::Contains("cannot write /nonexistent_dir/summary.json"), Error);

    // a step's collectives, measured and the formula: the paper's bytes by kind (all-reduce twice), in Psi
    s.parameters = double(1000 + rng.below(1000)), s.comm_step = 1 + int64_t(rng.below(100)), s.comm_padding_bytes = double(rng.below(64));
    s.comm.ranks = s.comm_formula.ranks = 4;
    int64_t ag = 4 * int64_t(1 + rng.below(5000)), rs = 4 * int64_t(1 + rng.below(5000)), ar = int64_t(1 + rng.below(5000));
    s.comm.add(Collective::all_gather, ag, 2), s.comm.add(Collective::reduce_scatter, rs, 4), s.comm.add(Collective::all_reduce, ar, 4);
    s.comm_formula = s.comm;
    s.comm_formula.add(Collective::all_gather, 4, 2);
    write_summary_json(path, s);
    j = read_json_file(path);
    const char* comm_keys[] = {"parameters", "comm_step", "comm_bytes", "comm_formula_bytes", "comm_psi", "comm_formula_psi", "comm_wire_bytes",
                               "comm_padding_bytes"};
    REQUIRE(j.object.size() == sizeof keys / sizeof keys[0] + sizeof comm_keys / sizeof comm_keys[0]);
    for (size_t i = 0; i < sizeof comm_keys / sizeof comm_keys[0]; ++i) CHECK(j.object[sizeof keys / sizeof keys[0] + i].first == comm_keys[i]);
    CHECK(j.find("comm_step")->integer == s.comm_step);
    CHECK(j.find("comm_bytes")->find("all_gather")->number == double(2 * ag));
    CHECK(j.find("comm_bytes")->find("reduce_scatter")->number == double(4 * rs));
    CHECK(j.find("comm_bytes")->find("all_reduce")->number == double(2 * 4 * ar));
    CHECK(j.find("comm_formula_bytes")->find("all_gather")->number == double(2 * ag + 8));
    CHECK(j.find("comm_psi")->number == doctest::Approx(double(ag + rs + 2 * ar) / s.parameters));
    CHECK(j.find("comm_formula_psi")->number == doctest::Approx(double(ag + 4 + rs + 2 * ar) / s.parameters));
    CHECK(j.find("comm_wire_bytes")->number == doctest::Approx(0.75 * double(2 * ag + 4 * rs + 8 * ar)));
    CHECK(j.find("comm_padding_bytes")->number == s.comm_padding_bytes);
}

// ---------------------------------------------------------------------------------------------- the run's log
namespace {
// Runs `fn` with stdout going to a file; returns what it printed.
template <class Fn>
std::string captured_stdout(const std::string& path, Fn fn) {
    std::fflush(stdout);
    int saved = dup(1), fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    REQUIRE(saved >= 0);
    REQUIRE(fd >= 0);
    dup2(fd, 1);
    fn();
    std::fflush(stdout);
    dup2(saved, 1);
    close(fd), close(saved);
    return read_file(path);
}

StepRecord step_record(int64_t step, double loss_sum, double targets, double tokens, double ms, int64_t gathered = 0) {
    StepRecord r;
    r.step = step, r.loss_sum = loss_sum, r.targets = targets, r.loss = loss_sum / targets;
    r.tokens = tokens, r.rows = 4, r.ms = ms, r.lr = 1e-3f, r.grad_norm = 2;
    r.comm.ranks = 2;
    r.comm.add(Collective::all_gather, gathered, 2), r.comm.add(Collective::reduce_scatter, 10, 4), r.comm.add(Collective::all_reduce, 1, 4);
    return r;
}
}  // namespace

TEST_CASE("report: the run's log prints each window's line and CSV rows, and a resumed run appends") {
    std::string dir = temp_dir("runlog");
    RunLog::Setup s;
    s.out = dir, s.rank = 0, s.log_every = 2, s.steps = 4, s.steps_per_epoch = 2;
    s.flops_per_token = 1e9, s.peak_flops = 1e13;
    RunResult result;
    std::string printed = captured_stdout(dir + "/stdout.txt", [&] {
        RunLog log;
        log.open(s);
        log.start();
        // steps 1-2: 20 nats over 10 targets, 200 tokens in 100 ms; steps 3-4: 6 over 4, 100 tokens in 50 ms
        log.add_step(step_record(1, 10, 5, 100, 50, 100));  // all-gathers of 200 and 300 bytes: 250 a step
        CHECK(!log.line_due(1, false));
        log.add_step(step_record(2, 10, 5, 100, 50, 150));
        REQUIRE(log.line_due(2, false));
        log.line(false, NAN, 1.5, 3.0);
        log.add_step(step_record(3, 3, 2, 50, 25));
        CHECK(!log.line_due(3, false));
        CHECK(log.line_due(3, true));  // an evaluation always gets a line
        log.add_step(step_record(4, 3, 2, 50, 25));
        REQUIRE(log.line_due(4, false));  // the last step
        log.line(true, 1.25, 2.5, 3.5);
        log.add_eval_time(0.5, 10);
        CHECK(log.timed_rows() == 16);
        log.finish(48, MemoryStats(), MemoryStats());  // no samples over time: the lines' samples stand
        log.write_charts("a run", {log.memory_samples()});
        result = log.result;
        // memory sampled over time, when there is some, replaces the lines' samples
        MemoryStats rank{3.0 * double(1 << 30), 2.25 * double(1 << 30), 1.0 * double(1 << 30), 20};
        MemoryStats gpu{4.0 * double(1 << 30), 3.5 * double(1 << 30), 3.0 * double(1 << 30), 20};
        log.finish(48, rank, gpu);
        CHECK(log.result.peak_gib == 3.0);
        CHECK(log.result.mean_gib == 2.25);
        CHECK(log.result.min_gib == 1.0);
        CHECK(log.result.gpu_device_peak_gib == 4.0);
        CHECK(log.result.gpu_device_mean_gib == 3.5);
    });
    CAPTURE(printed);
    std::vector<std::string> out = lines_of(printed);
    REQUIRE(out.size() == 2);
    CHECK(out[0].rfind("step      2/4  epoch  1.00  loss 2.0000  lr 1.000e-03  grad-norm 2.000      2000 tok/s/GPU     2.0 TFLOP/s  "
                       "MFU 20.0%    50.0 ms/step  GPU 1.5 GiB (peak 1.5)  ", 0) == 0);
    CHECK(out[0].find("eval-loss") == std::string::npos);
    CHECK(out[1].rfind("step      4/4  epoch  2.00  loss 1.5000  lr 1.000e-03  grad-norm 2.000      2000 tok/s/GPU     2.0 TFLOP/s  "
                       "MFU 20.0%    25.0 ms/step  GPU 2.5 GiB (peak 2.5)  ", 0) == 0);
    CHECK(out[1].size() > 18);
    CHECK(out[1].substr(out[1].size() - 18) == "  eval-loss 1.2500");
    std::vector<std::string> csv = lines_of(read_file(dir + "/train_log.csv"));
    REQUIRE(csv.size() == 3);
    CHECK(csv[0] == "step,epoch,loss,lr,grad_norm,tokens_per_s,tflops,step_ms,gpu_gib,peak_gib,eval_loss,all_gather_bytes,"
                    "reduce_scatter_bytes,all_reduce_bytes");
    CHECK(csv[1] == "2,1.0000,2.000000,1.000000e-03,2.000000,2000.0,2.00,50.00,1.500,1.500,,250,40,8");
    CHECK(csv[2] == "4,2.0000,1.500000,1.000000e-03,2.000000,2000.0,2.00,25.00,2.500,2.500,1.250000,0,40,8");
    std::vector<std::string> memory = lines_of(read_file(dir + "/memory_rank0.csv"));
    REQUIRE(memory.size() == 3);
    CHECK(memory[0] == "step,seconds,rank_gpu_gib");
    CHECK(memory[1].rfind("2,", 0) == 0);
    CHECK(memory[2].substr(memory[2].size() - 6) == ",2.500");
    // the run's numbers: 300 tokens and 16 rows in 150 ms of logged steps; memory sampled at each line
    CHECK(result.final_loss == 1.5);
    CHECK(result.mean_loss == doctest::Approx((2.0 + 2.0 + 1.5 + 1.5) / 4));  // HF's train_loss: every step's loss
    CHECK(result.global_samples_per_s == doctest::Approx(48 / result.seconds));
    CHECK(std::isnan(result.gpu_device_peak_gib));
    CHECK(result.steps == 4);
    CHECK(result.steps_per_epoch == 2);
    CHECK(result.tokens_per_s == doctest::Approx(2000));
    CHECK(result.samples_per_s == doctest::Approx(16 / 0.15));
    CHECK(result.tflops == doctest::Approx(2.0));
    CHECK(result.peak_gib == 2.5);
    CHECK(result.mean_gib == 2.0);
    CHECK(result.min_gib == 1.5);
    CHECK(result.eval_samples_per_s == 20);
    CHECK(result.comm_step == 4);  // the last step's collectives
    CHECK(result.comm == step_record(4, 3, 2, 50, 25).comm);
    REQUIRE(result.eval_losses.size() == 1);
    CHECK(result.eval_losses[0] == 1.25);
    CHECK(access((dir + "/loss.svg").c_str(), R_OK) == 0);
    CHECK(access((dir + "/memory.svg").c_str(), R_OK) != 0);  // one rank: no memory chart

    // resumed after step 4: the logs are continued, not restarted
    s.start_step = 4, s.steps = 6;
    captured_stdout(dir + "/stdout.txt", [&] {
        RunLog log;
        log.open(s);
        log.start();
        log.add_step(step_record(5, 2, 2, 10, 10));
        log.add_step(step_record(6, 2, 2, 10, 10));
        log.line(false, NAN, 1.0, NAN);
        log.write_charts("a run", {{0.5, 1.0}, {0.5, 2.0}});
    });
    csv = lines_of(read_file(dir + "/train_log.csv"));
    REQUIRE(csv.size() == 4);
    CHECK(csv[3].rfind("6,3.0000,1.000000,", 0) == 0);
    CHECK(lines_of(read_file(dir + "/memory_rank0.csv")).size() == 4);
    CHECK(access((dir + "/memory.svg").c_str(), R_OK) == 0);  // two ranks' samples: the memory chart
    // a fresh run in the same directory starts the logs again
    s.start_step = 0;
    {
        RunLog log;
        log.open(s);
    }
    CHECK(lines_of(read_file(dir + "/train_log.csv")).size() == 1);
    // another rank writes only its memory log
    s.rank = 1;
    std::string quiet = captured_stdout(dir + "/stdout.txt", [&] {
        RunLog log;
        log.open(s);
        log.start();
        log.add_step(step_record(2, 2, 2, 10, 10));
        log.line(false, NAN, 1.0, NAN);
    });
    CHECK(quiet.empty());
    CHECK(lines_of(read_file(dir + "/memory_rank1.csv")).size() == 2);
}

TEST_CASE("report: the summary table shows the last step's collectives beside the formula") {
    RunResult r;
    r.steps = 3, r.comm_step = 3, r.parameters = 1e9;
    r.comm.ranks = 4;  // 2 GB all-gathered, 4 GB reduce-scattered, an 8-byte all-reduce: 2 Psi; the ring sends 3/4
    r.comm.add(Collective::all_gather, 1000000000, 2), r.comm.add(Collective::reduce_scatter, 1000000000, 4), r.comm.add(Collective::all_reduce, 1, 4);
    r.comm_formula = r.comm, r.comm_unpadded = r.comm;
    r.comm_unpadded.elements[0] -= 100, r.comm_unpadded.bytes[0] -= 200;
    std::string dir = temp_dir("summary_comm");
    std::string same = captured_stdout(dir + "/a.txt", [&] { print_summary(r, "run summary"); });
    CAPTURE(same);
    CHECK(same.find("| collectives per step per rank (step 3): all-gather / reduce-scatter / all-reduce | 2.000 / 4.000 / 0.000 GB "
                    "(formula: the same) |") != std::string::npos);
    CHECK(same.find("| the same in Psi (1,000,000,000 parameters); the ring sends from each rank | 2 Psi (formula 2 Psi, padding of shards "
                    "3.3e-06%); 4.5 GB |") != std::string::npos);
    r.comm_formula.calls[1] += 1;  // one call more, the same bytes: not the same traffic
    std::string differs = captured_stdout(dir + "/b.txt", [&] { print_summary(r, "run summary"); });
    CHECK(differs.find("| 2.000 / 4.000 / 0.000 GB (formula 2.000 / 4.000 / 0.000) |") != std::string::npos);
    r.comm_step = 0;  // nothing measured: no rows
    CHECK(captured_stdout(dir + "/c.txt", [&] { print_summary(r, "run summary"); }).find("collectives") == std::string::npos);
}

TEST_CASE("report: bench/collect.py makes the workshop table, and names a malformed summary") {
    if (std::system("python3 -c pass > /dev/null 2>&1") != 0) return skip_test("no python3");
    REQUIRE(access("bench/collect.py", R_OK) == 0);
    std::string root = temp_dir("report_collect");
    std::string a = temp_dir("report_collect/stage0_1gpu"), b = temp_dir("report_collect/stage3_offload_2gpu");
    RunSummary s;
    s.title = "fine-tuning summary", s.world_size = 1, s.zero_stage = 0, s.lora_rank = 8;
    s.final_train_loss = 1.23456, s.mean_train_loss = 1.75, s.eval_losses = {2.5}, s.steps = 200, s.steps_per_epoch = 100;
    s.train_samples_per_s = 123.45, s.global_train_samples_per_s = 111.25, s.eval_samples_per_s = 456.78, s.tokens_per_s = 5e4, s.tflops = 12.5;
    s.gpu_peak_gib = 12.345, s.gpu_mean_gib = 10.5, s.gpu_min_gib = 8, s.seconds = 3725;
    s.gpu_device_peak_gib = 20.25, s.gpu_device_mean_gib = 19.5;
    s.parameters = 1e9, s.comm_step = 200, s.comm.ranks = 2;  // 1.5e9 elements: 1.5 Psi; 3 GB of all-gather, 0.5 GB of all-reduce
    s.comm.add(Collective::all_gather, 1500000000, 2), s.comm.add(Collective::all_reduce, 62500000, 4);
    s.comm_formula = s.comm;
    s.comm_formula.add(Collective::reduce_scatter, 500000000, 4);  // the formula says 2.125 Psi
    write_summary_json(a + "/summary.json", s);
    // A summary from another writer: keys missing, one null, several evaluations.
    std::ofstream(b + "/summary.json") << R"({"world_size": 2, "zero_stage": 3, "offload": true, "final_train_loss": 0.5,
        "eval_losses": [2.5, 2.25, 2.125], "steps_per_epoch": 50, "train_samples_per_s": null, "seconds": 42})";
    int status = -1;
    std::string out = run_command("python3 bench/collect.py " + a + " " + b + "/ --out " + root + "/table.md", status);
    CAPTURE(out);
    CHECK(status == 0);
    std::vector<std::string> rows = lines_of(out);
    REQUIRE(rows.size() == 4);
    CHECK(cells(rows[0]) == std::vector<std::string>{"run", "GPUs", "ZeRO stage", "offload", "final train loss",
                                                     "train loss, mean (HF)", "eval loss", "train samples/s per GPU",
                                                     "train samples/s, all GPUs (HF)", "eval samples/s", "steps/epoch",
                                                     "GPU memory peak / mean / min (GiB)", "whole GPU peak / mean (GiB)",
                                                     "collectives/step (Psi, measured / formula)",
                                                     "GB/step: all-gather / reduce-scatter / all-reduce", "time"});
    CHECK(cells(rows[2]) == std::vector<std::string>{"stage0_1gpu", "1", "0", "no", "1.2346", "1.7500", "2.5000", "123.5", "111.2", "456.8",
                                                     "100", "12.35 / 10.50 / 8.00", "20.25 / 19.50", "1.62 / 2.12",
                                                     "3.000 / 0.000 / 0.500", "1h02m"});
    CHECK(cells(rows[3]) == std::vector<std::string>{"stage3_offload_2gpu", "2", "3", "yes", "0.5000", "—",
                                                     "2.1250 (2.5000, 2.2500, 2.1250)", "—", "—", "—", "50", "— / — / —", "— / —", "—", "—",
                                                     "42s"});
    CHECK(read_file(root + "/table.md") == out);

    std::string broken = temp_dir("report_collect/broken");
    std::ofstream(broken + "/summary.json") << "{\"world_size\": 2,";
    out = run_command("python3 bench/collect.py " + a + " " + broken, status);
    CHECK(status == 1);
    CHECK(lines_of(out).size() == 1);
    CHECK(out.rfind("error: " + broken + "/summary.json is not valid JSON", 0) == 0);

    std::string empty = temp_dir("report_collect/no_summary");
    out = run_command("python3 bench/collect.py " + empty, status);
    CHECK(status == 1);
    CHECK(out.rfind("error: cannot read " + empty + "/summary.json", 0) == 0);

    std::ofstream(broken + "/summary.json") << "{\"steps\": \"many\"}";
    out = run_command("python3 bench/collect.py " + broken, status);
    CHECK(status == 1);
    CHECK(out.find("\"steps\" should be a number") != std::string::npos);
    std::ofstream(broken + "/summary.json") << "{\"comm_bytes\": {\"all_gather\": 1}}";
    out = run_command("python3 bench/collect.py " + broken, status);
    CHECK(status == 1);
    CHECK(out.find("\"comm_bytes\" should be an object of numbers: all_gather, reduce_scatter, all_reduce") != std::string::npos);
}
