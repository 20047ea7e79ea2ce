// support/report.cpp — SVG charts, answer scores, progress lines and summary.json (see report.h for the math and
// the promises). The charts share one renderer: a Chart is a list of Lines on a left and an optional
// right y-axis; render() lays out title, plot box, ticks, series and a legend band under the x label.
#include "support/report.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>

#include "support/common.h"
#include "support/json.h"

namespace {
std::string format(const char* fmt, double a) {
    char buf[64];
    std::snprintf(buf, sizeof buf, fmt, a);
    return buf;
}

// A tick label with as many digits as the tick step needs, so neighbouring ticks never print alike:
// fixed point ("0.6", "1500", "10.000002") on an axis with `fixed`, else %g with the exponent
// shortened ("1.5e7", "2e-5").
std::string number_label(double v, double step, bool fixed) {
    if (std::fabs(v) < step * 1e-6) return "0";
    int step_exp = int(std::floor(std::log10(step) + 1e-9));
    if (fixed) {
        char buf[64];
        std::snprintf(buf, sizeof buf, "%.*f", std::max(0, -step_exp), v);
        return buf;
    }
    int digits = std::clamp(int(std::floor(std::log10(std::fabs(v)))) - step_exp + 1, 1, 17);
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.*g", digits, v);
    std::string s = buf;
    size_t e = s.find('e');
    if (e == std::string::npos) return s;
    std::string exponent = s.substr(e + 2);
    exponent.erase(0, std::min(exponent.find_first_not_of('0'), exponent.size() - 1));
    return s.substr(0, e) + "e" + (s[e + 1] == '-' ? "-" : "") + exponent;
}

// ---------------------------------------------------------------------------------------------- charts
struct Line {               // one series as drawn
    std::string cls;        // SVG class, e.g. "train-loss"
    std::string legend;     // e.g. "train loss"
    std::string color;      // e.g. "#1f77b4"
    Series points;          // finite points only, thinned
    bool right_axis = false;  // plotted against the right y-axis
    bool markers = false;     // a circle on every point
    bool dashed = false;
};

struct Chart {
    std::string title, x_label, y_label, y2_label;  // y2_label: the right axis (used when a line is on it)
    std::vector<Line> lines;
    bool y_from_zero = false;  // the left axis includes 0 (memory)
};

const char* const kPalette[] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                                "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"};

Series finite_points(const Series& s) {
    Series out;
    out.reserve(s.size());
    for (const auto& p : s)
        if (std::isfinite(p.first) && std::isfinite(p.second)) out.push_back(p);
    return out;
}

// [min, max] of one coordinate over the lines selected; (NaN, NaN) when there are no points.
std::pair<double, double> extent(const std::vector<Line>& lines, bool x, bool right_axis) {
    double lo = NAN, hi = NAN;
    for (const Line& l : lines) {
        if (!x && l.right_axis != right_axis) continue;
        for (const auto& p : l.points) {
            double v = x ? p.first : p.second;
            lo = std::isnan(lo) ? v : std::min(lo, v);
            hi = std::isnan(hi) ? v : std::max(hi, v);
        }
    }
    return {lo, hi};
}

// Data coordinates to pixels: [lo, hi] of the ticks onto the plot box (y grows downward in SVG).
struct Axis {
    std::vector<double> ticks;
    double lo = 0, hi = 1;
    explicit Axis(std::pair<double, double> range) {
        if (std::isnan(range.first)) range = {0, 1};
        ticks = nice_ticks(range.first, range.second);
        lo = ticks.front(), hi = ticks.back();
    }
    double to_unit(double v) const { return (v - lo) / (hi - lo); }  // hi > lo: nice_ticks widens a point
    double step() const { return (hi - lo) / double(ticks.size() - 1); }
    std::string label(double v) const {  // fixed point unless the axis needs exponents
        return number_label(v, step(), step() >= 1e-4 && std::max(std::fabs(lo), std::fabs(hi)) < 1e7);
    }
};

constexpr double kWidth = 860, kLeft = 80, kTop = 50, kPlotHeight = 320, kRowHeight = 20;

struct Box {  // the plot area in pixels
    double left, top, width, height;
    double px(const Axis& a, double v) const { return left + a.to_unit(v) * width; }
    double py(const Axis& a, double v) const { return top + (1 - a.to_unit(v)) * height; }
};

// Legend entries laid out left to right under the x label, wrapping at the plot's width: (x, row) each.
std::vector<std::pair<double, int>> legend_layout(const std::vector<Line>& lines, const Box& box) {
    std::vector<std::pair<double, int>> at;
    double x = box.left;
    int row = 0;
    for (const Line& l : lines) {
        double w = 34 + 7.0 * double(l.legend.size()) + 18;  // sample line, text at ~7 px a character, gap
        if (x > box.left && x + w > box.left + box.width) x = box.left, ++row;
        at.push_back({x, row});
        x += w;
    }
    return at;
}

void draw_points(std::string& svg, const Line& l, const Box& box, const Axis& x, const Axis& y) {
    svg += "<polyline class=\"" + l.cls + "\" fill=\"none\" stroke=\"" + l.color +
           "\" stroke-width=\"1.5\" stroke-linejoin=\"round\"" + (l.dashed ? " stroke-dasharray=\"6 3\"" : "") + " points=\"";
    for (size_t i = 0; i < l.points.size(); ++i) {
        svg += (i ? " " : "") + format("%.2f", box.px(x, l.points[i].first)) + "," + format("%.2f", box.py(y, l.points[i].second));
    }
    svg += "\"/>\n";
    if (!l.markers && l.points.size() != 1) return;  // a lone point would be invisible as a line
    svg += "<g class=\"" + l.cls + "-markers\" fill=\"" + l.color + "\">";
    for (const auto& p : l.points)
        svg += "<circle cx=\"" + format("%.2f", box.px(x, p.first)) + "\" cy=\"" + format("%.2f", box.py(y, p.second)) + "\" r=\"3.5\"/>";
    svg += "</g>\n";
}

void draw_axes(std::string& svg, const Chart& c, const Box& box, const Axis& x, const Axis& y, const Axis* y2) {
    double bottom = box.top + box.height, right = box.left + box.width;
    svg += "<g class=\"grid\" stroke=\"#e5e5e5\" stroke-width=\"1\">";
    for (double t : x.ticks) svg += "<line x1=\"" + format("%.2f", box.px(x, t)) + "\" y1=\"" + format("%.2f", box.top) + "\" x2=\"" +
                                    format("%.2f", box.px(x, t)) + "\" y2=\"" + format("%.2f", bottom) + "\"/>";
    for (double t : y.ticks) svg += "<line x1=\"" + format("%.2f", box.left) + "\" y1=\"" + format("%.2f", box.py(y, t)) + "\" x2=\"" +
                                    format("%.2f", right) + "\" y2=\"" + format("%.2f", box.py(y, t)) + "\"/>";
    svg += "</g>\n<rect class=\"frame\" x=\"" + format("%.2f", box.left) + "\" y=\"" + format("%.2f", box.top) + "\" width=\"" +
           format("%.2f", box.width) + "\" height=\"" + format("%.2f", box.height) + "\" fill=\"none\" stroke=\"#666\"/>\n";
    svg += "<g class=\"x-ticks\" text-anchor=\"middle\">";
    for (double t : x.ticks)
        svg += "<text x=\"" + format("%.2f", box.px(x, t)) + "\" y=\"" + format("%.2f", bottom + 18) + "\">" + x.label(t) + "</text>";
    svg += "</g>\n<g class=\"y-ticks\" text-anchor=\"end\">";
    for (double t : y.ticks)
        svg += "<text x=\"" + format("%.2f", box.left - 6) + "\" y=\"" + format("%.2f", box.py(y, t) + 4) + "\">" + y.label(t) + "</text>";
    svg += "</g>\n";
    svg += "<text class=\"x-label\" x=\"" + format("%.2f", box.left + box.width / 2) + "\" y=\"" + format("%.2f", bottom + 40) +
           "\" text-anchor=\"middle\">" + xml_escape(c.x_label) + "</text>\n";
    svg += "<text class=\"y-label\" transform=\"translate(" + format("%.2f", box.left - 58) + "," + format("%.2f", box.top + box.height / 2) +
           ") rotate(-90)\" text-anchor=\"middle\">" + xml_escape(c.y_label) + "</text>\n";
    if (!y2) return;
    svg += "<g class=\"y2-ticks\" text-anchor=\"start\">";
    for (double t : y2->ticks)
        svg += "<text x=\"" + format("%.2f", right + 6) + "\" y=\"" + format("%.2f", box.py(*y2, t) + 4) + "\">" + y2->label(t) + "</text>";
    svg += "</g>\n<text class=\"y2-label\" transform=\"translate(" + format("%.2f", right + 66) + "," +
           format("%.2f", box.top + box.height / 2) + ") rotate(90)\" text-anchor=\"middle\">" + xml_escape(c.y2_label) + "</text>\n";
}

void draw_legend(std::string& svg, const std::vector<Line>& lines, const Box& box, double top) {
    auto at = legend_layout(lines, box);
    svg += "<g class=\"legend\">";
    for (size_t i = 0; i < lines.size(); ++i) {
        const Line& l = lines[i];
        double x = at[i].first, y = top + at[i].second * kRowHeight;
        svg += "<line x1=\"" + format("%.2f", x) + "\" y1=\"" + format("%.2f", y) + "\" x2=\"" + format("%.2f", x + 26) + "\" y2=\"" +
               format("%.2f", y) + "\" stroke=\"" + l.color + "\" stroke-width=\"2\"" + (l.dashed ? " stroke-dasharray=\"6 3\"" : "") + "/>";
        if (l.markers)
            svg += "<circle cx=\"" + format("%.2f", x + 13) + "\" cy=\"" + format("%.2f", y) + "\" r=\"3.5\" fill=\"" + l.color + "\"/>";
        svg += "<text x=\"" + format("%.2f", x + 32) + "\" y=\"" + format("%.2f", y + 4) + "\">" + xml_escape(l.legend) + "</text>";
    }
    svg += "</g>\n";
}

// The whole SVG document for `c` (lines without points are left out).
std::string render(Chart c) {
    c.lines.erase(std::remove_if(c.lines.begin(), c.lines.end(), [](const Line& l) { return l.points.empty(); }), c.lines.end());
    bool has_right = std::any_of(c.lines.begin(), c.lines.end(), [](const Line& l) { return l.right_axis; });
    Box box{kLeft, kTop, kWidth - kLeft - (has_right ? 80 : 30), kPlotHeight};
    int legend_rows = c.lines.empty() ? 0 : legend_layout(c.lines, box).back().second + 1;
    double legend_top = box.top + box.height + 64, height = legend_top + legend_rows * kRowHeight + 6;

    std::pair<double, double> yr = extent(c.lines, false, false);
    if (c.y_from_zero && !std::isnan(yr.first)) yr.first = std::min(yr.first, 0.0), yr.second = std::max(yr.second, 0.0);
    Axis x(extent(c.lines, true, false)), y(yr), y2(extent(c.lines, false, true));

    std::string svg = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<svg xmlns=\"http://www.w3.org/2000/svg\" version=\"1.1\" width=\"" +
                      format("%.0f", kWidth) + "\" height=\"" + format("%.0f", height) + "\" viewBox=\"0 0 " + format("%.0f", kWidth) +
                      " " + format("%.0f", height) + "\" font-family=\"sans-serif\" font-size=\"12\">\n";
    svg += "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
    svg += "<text class=\"title\" x=\"" + format("%.1f", kWidth / 2) + "\" y=\"28\" text-anchor=\"middle\" font-size=\"16\">" +
           xml_escape(c.title) + "</text>\n";
    draw_axes(svg, c, box, x, y, has_right ? &y2 : nullptr);
    for (const Line& l : c.lines) draw_points(svg, l, box, x, l.right_axis ? y2 : y);
    if (c.lines.empty())
        svg += "<text class=\"no-data\" x=\"" + format("%.2f", box.left + box.width / 2) + "\" y=\"" +
               format("%.2f", box.top + box.height / 2) + "\" text-anchor=\"middle\" fill=\"#888\">no data</text>\n";
    draw_legend(svg, c.lines, box, legend_top);
    return svg + "</svg>\n";
}
}  // namespace

std::vector<double> nice_ticks(double lo, double hi, int target) {
    if (!std::isfinite(lo) || !std::isfinite(hi) || !std::isfinite(hi - lo)) lo = 0, hi = 1;
    if (lo > hi) std::swap(lo, hi);
    if (hi - lo <= 1e-12 * std::max(std::fabs(lo), std::fabs(hi))) {  // a single value: widen around it
        double pad = lo == 0 ? 1 : 0.1 * std::fabs(lo);
        lo -= pad, hi += pad;
    }
    double raw = (hi - lo) / std::max(target - 1, 1);
    double magnitude = std::pow(10.0, std::floor(std::log10(raw)));
    double f = raw / magnitude;
    double step = (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * magnitude;
    std::vector<double> ticks;
    for (double k = std::floor(lo / step); k <= std::ceil(hi / step); ++k) ticks.push_back(k * step + 0.0);  // + 0.0: no "-0"
    return ticks;
}

Series thin_series(const Series& points, size_t max_points) {
    size_t n = points.size();
    if (n <= max_points) return points;
    if (max_points < 2) return max_points ? Series{points.front()} : Series{};
    Series out;
    out.reserve(max_points);
    for (size_t i = 0; i < max_points; ++i) out.push_back(points[i * (n - 1) / (max_points - 1)]);  // i = last: n - 1
    return out;
}

std::string xml_escape(const std::string& text) {
    std::string out;
    for (char ch : text) {
        switch (ch) {
            case '&': out += "&amp;"; break;
            case '<': out += "&lt;"; break;
            case '>': out += "&gt;"; break;
            case '"': out += "&quot;"; break;
            case '\'': out += "&apos;"; break;
            default: out += ch;
        }
    }
    return out;
}

void write_loss_svg(const std::string& path, const std::string& title, const Series& train_loss, const Series& eval_loss,
                    const Series& lr) {
    Chart c{title, "step", "loss", "learning rate", {}, false};
    c.lines.push_back({"train-loss", "train loss", kPalette[0], thin_series(finite_points(train_loss), kMaxChartPoints)});
    c.lines.push_back({"eval-loss", "eval loss", kPalette[3], finite_points(eval_loss), false, true});
    c.lines.push_back({"lr", "learning rate", kPalette[2], thin_series(finite_points(lr), kMaxChartPoints), true, false, true});
    write_atomically(path, render(c));
}

void write_memory_svg(const std::string& path, const std::string& title, const std::vector<Series>& per_rank) {
    Chart c{title, "seconds", "GPU memory (GiB)", "", {}, true};
    for (size_t r = 0; r < per_rank.size(); ++r)
        c.lines.push_back({"rank-" + std::to_string(r), "rank " + std::to_string(r), kPalette[r % 10],
                           thin_series(finite_points(per_rank[r]), kMaxChartPoints), false, false, r >= 10});
    write_atomically(path, render(c));
}

// ---------------------------------------------------------------------------------------------- answers
namespace {
bool ascii_space(char c) { return c == ' ' || (c >= '\t' && c <= '\r'); }
bool ascii_punct(char c) { return c != 0 && std::strchr("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~", c) != nullptr; }

std::vector<std::string> words(const std::string& normalized) {  // normalized text is single-spaced
    std::vector<std::string> out;
    for (size_t i = 0; i < normalized.size();) {
        size_t j = normalized.find(' ', i);
        if (j == std::string::npos) j = normalized.size();
        out.push_back(normalized.substr(i, j - i));
        i = j + 1;
    }
    return out;
}
}  // namespace

std::string normalize_answer(std::string text) {
    std::string kept;  // lowercased, punctuation dropped (bytes >= 0x80 never match either test)
    for (char c : text)
        if (!ascii_punct(c)) kept += (c >= 'A' && c <= 'Z') ? char(c - 'A' + 'a') : c;
    std::string out;
    for (size_t i = 0; i < kept.size();) {
        while (i < kept.size() && ascii_space(kept[i])) ++i;
        size_t j = i;
        while (j < kept.size() && !ascii_space(kept[j])) ++j;
        std::string word = kept.substr(i, j - i);
        if (!word.empty() && word != "a" && word != "an" && word != "the") out += (out.empty() ? "" : " ") + word;
        i = j;
    }
    return out;
}

double token_f1(const std::string& prediction, const std::string& reference) {
    std::vector<std::string> pred = words(normalize_answer(prediction)), ref = words(normalize_answer(reference));
    if (pred.empty() || ref.empty()) return pred.empty() && ref.empty() ? 1.0 : 0.0;
    std::map<std::string, int64_t> left;  // reference words not yet matched
    for (const std::string& w : ref) ++left[w];
    int64_t common = 0;
    for (const std::string& w : pred)
        if (left[w] > 0) --left[w], ++common;
    if (common == 0) return 0.0;
    double precision = double(common) / double(pred.size()), recall = double(common) / double(ref.size());
    return 2 * precision * recall / (precision + recall);
}

bool exact_match(const std::string& prediction, const std::string& reference) {
    return normalize_answer(prediction) == normalize_answer(reference);
}

void AnswerScore::add(const std::string& prediction, const std::string& reference) {
    f1 += token_f1(prediction, reference);
    exact += exact_match(prediction, reference) ? 1 : 0;
    ++n;
}
double AnswerScore::mean_f1() const { return n ? f1 / double(n) : NAN; }
double AnswerScore::exact_rate() const { return n ? exact / double(n) : NAN; }

// ---------------------------------------------------------------------------------------------- progress
std::string format_duration(double seconds) {
    if (!std::isfinite(seconds) || seconds < 0) return "?";
    double s = std::round(seconds);
    char buf[64];
    if (s < 60) std::snprintf(buf, sizeof buf, "%.0fs", s);
    else if (s < 3600) std::snprintf(buf, sizeof buf, "%.0fm%02.0fs", std::floor(s / 60), std::fmod(s, 60));
    else if (s < 86400) std::snprintf(buf, sizeof buf, "%.0fh%02.0fm", std::floor(s / 3600), std::floor(std::fmod(s, 3600) / 60));
    else std::snprintf(buf, sizeof buf, "%.0fd%02.0fh", std::floor(s / 86400), std::floor(std::fmod(s, 86400) / 3600));
    return buf;
}

double eta_seconds(double done, double total, double elapsed) {
    if (std::isnan(done) || std::isnan(total) || std::isnan(elapsed) || done <= 0) return NAN;
    if (done >= total) return 0;
    return elapsed * (total - done) / done;
}

Progress::Progress(std::string label, double total, Units units, bool enabled, Clock clock, Printer print, double interval_s)
    : label_(std::move(label)), total_(total), units_(units), enabled_(enabled), clock_(clock ? std::move(clock) : Clock(wall_seconds)),
      print_(print ? std::move(print) : Printer([](const std::string& line) {
          std::printf("%s\n", line.c_str());
          std::fflush(stdout);
      })),
      interval_s_(interval_s) {
    start_s_ = last_print_s_ = clock_();
}

std::string Progress::amount(double done, bool with_total) const {
    if (units_ == Units::Items)
        return "(" + format("%.0f", done) + (with_total && total_ > 0 ? "/" + format("%.0f", total_) : "") + ")";
    double scale = std::max(total_, done);
    const char* unit = scale >= double(1 << 30) ? "GiB" : scale >= double(1 << 20) ? "MiB" : scale >= 1024 ? "KiB" : "B";
    double div = scale >= double(1 << 30) ? double(1 << 30) : scale >= double(1 << 20) ? double(1 << 20) : scale >= 1024 ? 1024 : 1;
    const char* fmt = div == 1 ? "%.0f" : "%.1f";
    return "(" + format(fmt, done / div) + (with_total && total_ > 0 ? "/" + format(fmt, total_ / div) : "") + " " + unit + ")";
}

void Progress::update(double done) {
    done_ = done;
    if (!enabled_ || finished_) return;
    double now = clock_();
    if (now - last_print_s_ < interval_s_) return;
    last_print_s_ = now;
    double elapsed = now - start_s_;
    std::string line = label_ + ": ";
    if (total_ > 0) line += format("%.0f", std::floor(std::clamp(100 * done / total_, 0.0, 100.0))) + "% ";
    line += amount(done, true) + " " + format_duration(elapsed) + " elapsed";
    if (total_ > 0) line += ", ETA " + format_duration(eta_seconds(done, total_, elapsed));
    print_(line);
    ++lines_;
}

void Progress::finish() {
    if (finished_) return;
    finished_ = true;
    if (!enabled_) return;
    double elapsed = clock_() - start_s_;
    if (lines_ == 0 && elapsed < interval_s_) return;  // a short phase stays quiet
    print_(label_ + ": done " + amount(total_ > 0 ? total_ : done_, false) + " in " + format_duration(elapsed));
    ++lines_;
}

// ---------------------------------------------------------------------------------------------- summary
namespace {
std::string json_number(double v) {  // shortest of %.15g / %.17g that reads back exactly; null if not finite
    if (!std::isfinite(v)) return "null";
    std::string s = format("%.15g", v);
    return std::strtod(s.c_str(), nullptr) == v ? s : format("%.17g", v);
}
}  // namespace

void write_summary_json(const std::string& path, const RunSummary& s) {
    std::string eval = "[";
    for (size_t i = 0; i < s.eval_losses.size(); ++i) eval += (i ? ", " : "") + json_number(s.eval_losses[i]);
    eval += "]";
    auto integer = [](int64_t v) { return std::to_string(v); };
    auto boolean = [](bool v) { return std::string(v ? "true" : "false"); };
    const std::pair<const char*, std::string> fields[] = {
        {"title", json_quote(s.title)},
        {"world_size", integer(s.world_size)},
        {"zero_stage", integer(s.zero_stage)},
        {"offload", boolean(s.offload)},
        {"checkpoint_activations", boolean(s.checkpoint_activations)},
        {"lora_rank", integer(s.lora_rank)},
        {"final_train_loss", json_number(s.final_train_loss)},
        {"mean_train_loss", json_number(s.mean_train_loss)},
        {"eval_losses", eval},
        {"steps", integer(s.steps)},
        {"steps_per_epoch", integer(s.steps_per_epoch)},
        {"train_samples_per_s", json_number(s.train_samples_per_s)},
        {"global_train_samples_per_s", json_number(s.global_train_samples_per_s)},
        {"eval_samples_per_s", json_number(s.eval_samples_per_s)},
        {"tokens_per_s", json_number(s.tokens_per_s)},
        {"tflops", json_number(s.tflops)},
        {"gpu_peak_gib", json_number(s.gpu_peak_gib)},
        {"gpu_mean_gib", json_number(s.gpu_mean_gib)},
        {"gpu_min_gib", json_number(s.gpu_min_gib)},
        {"gpu_device_peak_gib", json_number(s.gpu_device_peak_gib)},
        {"gpu_device_mean_gib", json_number(s.gpu_device_mean_gib)},
        {"seconds", json_number(s.seconds)},
    };
    std::vector<std::pair<const char*, std::string>> all(std::begin(fields), std::end(fields));
    if (s.comm_step > 0) {  // one step's collectives per rank: {"all_gather": bytes, "reduce_scatter": ..., "all_reduce": ...}
        auto by_kind = [](const Traffic& t) {
            static const char* keys[kCollectives] = {"all_gather", "reduce_scatter", "all_reduce"};
            std::string o = "{";
            for (int k = 0; k < kCollectives; ++k) o += std::string(k ? ", " : "") + "\"" + keys[k] + "\": " + json_number(t.volume_bytes(Collective(k)));
            return o + "}";
        };
        all.insert(all.end(), {{"parameters", json_number(s.parameters)},
                               {"comm_step", integer(s.comm_step)},
                               {"comm_bytes", by_kind(s.comm)},
                               {"comm_formula_bytes", by_kind(s.comm_formula)},
                               {"comm_psi", json_number(s.comm.volume_elements() / s.parameters)},
                               {"comm_formula_psi", json_number(s.comm_formula.volume_elements() / s.parameters)},
                               {"comm_wire_bytes", json_number(s.comm.wire_bytes())},
                               {"comm_padding_bytes", json_number(s.comm_padding_bytes)}});
    }
    std::string text = "{\n";
    for (size_t i = 0; i < all.size(); ++i) text += std::string("  \"") + all[i].first + "\": " + all[i].second + (i + 1 < all.size() ? ",\n" : "\n");
    write_atomically(path, text + "}\n");
}

// ---------------------------------------------------------------------------------------------- the run's log
RunLog::~RunLog() {
    if (csv_) std::fclose(csv_);
    if (mem_csv_) std::fclose(mem_csv_);
}

void RunLog::open(const Setup& setup) {
    s_ = setup;
    result.steps = s_.steps, result.steps_per_epoch = s_.steps_per_epoch;
    // A resumed run appends to the logs it finds in OUT; a new OUT (or a fresh run) starts them with a header.
    auto open_log = [&](const std::string& path, const char* header) {
        bool append = s_.start_step > 0 && exists(path);
        std::FILE* f = std::fopen(path.c_str(), append ? "a" : "w");
        if (!f) fail("cannot write " + path);
        if (!append) std::fprintf(f, "%s\n", header);
        return f;
    };
    if (s_.rank == 0) csv_ = open_log(s_.out + "/train_log.csv", "step,epoch,loss,lr,grad_norm,tokens_per_s,tflops,step_ms,gpu_gib,peak_gib,eval_loss,"
                                                        "all_gather_bytes,reduce_scatter_bytes,all_reduce_bytes");
    mem_csv_ = open_log(s_.out + "/memory_rank" + std::to_string(s_.rank) + ".csv", "step,seconds,rank_gpu_gib");
    if (s_.rank == 0 && !s_.tensorboard_dir.empty()) tensorboard_.open(s_.tensorboard_dir);
}

void RunLog::start() { train_start_ = wall_seconds(); }

void RunLog::add_step(const StepRecord& r) {
    window_.ms += r.ms, window_.loss_sum += r.loss_sum, window_.targets += r.targets, ++window_.steps;
    window_.tokens += r.tokens, window_.rows += r.rows;
    for (int k = 0; k < kCollectives; ++k) window_.comm_bytes[k] += r.comm.volume_bytes(Collective(k));
    last_ = r;
    result.comm = r.comm, result.comm_step = r.step;
    result.final_loss = r.loss;
    loss_.push_back({double(r.step), r.loss});  // every step, for OUT/loss.svg
    lr_.push_back({double(r.step), r.lr});
}

bool RunLog::line_due(int64_t step, bool eval) const { return step % s_.log_every == 0 || step == s_.steps || eval; }

void RunLog::line(bool eval, double eval_loss, double gpu_gib, double gpu_in_use_gib) {
    int64_t step = last_.step;
    double ms = window_.ms;
    if (eval) result.eval_losses.push_back(eval_loss);
    timed_ms_ += ms, timed_tokens_ += window_.tokens, timed_rows_ += window_.rows;
    double tps = window_.tokens / (ms / 1e3), tf = tps * s_.flops_per_token / 1e12;
    double elapsed = wall_seconds() - train_start_;
    result.peak_gib = std::max(result.peak_gib, gpu_gib), result.mean_gib += gpu_gib, ++samples_;
    result.min_gib = std::isnan(result.min_gib) ? gpu_gib : std::min(result.min_gib, gpu_gib);
    std::fprintf(mem_csv_, "%lld,%.2f,%.3f\n", (long long)step, elapsed, gpu_gib);
    std::fflush(mem_csv_);
    memory_.push_back(elapsed), memory_.push_back(gpu_gib);
    double loss = window_.loss_sum / std::max(1.0, window_.targets);
    if (eval) eval_loss_.push_back({double(step), eval_loss});
    double eta = eta_seconds(double(step - s_.start_step), double(s_.steps - s_.start_step), elapsed);
    if (s_.rank == 0) {
        std::printf("step %6lld/%lld  epoch %5.2f  loss %.4f  lr %.3e  grad-norm %.3f  %8.0f tok/s/GPU  %6.1f TFLOP/s", (long long)step,
                    (long long)s_.steps, double(step) / double(s_.steps_per_epoch), loss, last_.lr, last_.grad_norm, tps, tf);
        if (s_.peak_flops > 0) std::printf("  MFU %4.1f%%", 100 * tf * 1e12 / s_.peak_flops);
        std::printf("  %6.1f ms/step  GPU %.1f GiB (peak %.1f)  %s elapsed, ETA %s", ms / double(window_.steps), gpu_gib, result.peak_gib,
                    format_duration(elapsed).c_str(), format_duration(eta).c_str());
        if (!std::isnan(eval_loss)) std::printf("  eval-loss %.4f", eval_loss);
        std::printf("\n");
        std::fflush(stdout);
        std::fprintf(csv_, "%lld,%.4f,%.6f,%.6e,%.6f,%.1f,%.2f,%.2f,%.3f,%.3f,%s", (long long)step,
                     double(step) / double(s_.steps_per_epoch), loss, last_.lr, last_.grad_norm, tps, tf, ms / double(window_.steps), gpu_gib,
                     result.peak_gib, std::isnan(eval_loss) ? "" : std::to_string(eval_loss).c_str());
        for (int k = 0; k < kCollectives; ++k) std::fprintf(csv_, ",%.15g", window_.comm_bytes[k] / double(window_.steps));
        std::fprintf(csv_, "\n");
        std::fflush(csv_);
        tensorboard_.scalars(step, {{"train/loss", loss}, {"train/learning_rate", last_.lr}, {"train/grad_norm", last_.grad_norm},
                                    {"train/epoch", double(step) / double(s_.steps_per_epoch)}, {"train/tokens_per_second", tps},
                                    {"train/tflops", tf}, {"gpu/rank_memory_gib", gpu_gib}, {"gpu/in_use_gib", gpu_in_use_gib},
                                    {"eval/loss", eval_loss}});
    }
    window_ = Window();
}

void RunLog::add_eval_time(double seconds, double rows) { eval_seconds_ += seconds, eval_rows_ += rows; }

void RunLog::finish(double global_rows, const MemoryStats& rank_memory, const MemoryStats& gpu_memory) {
    double timed_s = timed_ms_ > 0 ? timed_ms_ / 1e3 : wall_seconds() - train_start_;
    result.tokens_per_s = timed_tokens_ / timed_s;
    result.samples_per_s = timed_rows_ / timed_s;
    result.tflops = result.tokens_per_s * s_.flops_per_token / 1e12;
    result.mean_gib = samples_ > 0 ? result.mean_gib / double(samples_) : NAN;
    if (eval_seconds_ > 0) result.eval_samples_per_s = eval_rows_ / eval_seconds_;
    result.seconds = wall_seconds() - train_start_;
    // HF's definitions: train_loss is the mean of every step's loss; train_samples_per_second counts every
    // rank's rows over the run's wall time (evaluation included)
    double sum = 0;
    for (const auto& point : loss_) sum += point.second;
    result.mean_loss = loss_.empty() ? NAN : sum / double(loss_.size());
    result.global_samples_per_s = global_rows / result.seconds;
    constexpr double kGiB = double(1 << 30);
    if (rank_memory.samples > 0)
        result.peak_gib = std::max(result.peak_gib, rank_memory.peak / kGiB), result.mean_gib = rank_memory.mean / kGiB,
        result.min_gib = rank_memory.min / kGiB;
    if (gpu_memory.samples > 0) result.gpu_device_peak_gib = gpu_memory.peak / kGiB, result.gpu_device_mean_gib = gpu_memory.mean / kGiB;
}

void RunLog::write_charts(const std::string& title, const std::vector<std::vector<double>>& memory_per_rank) const {
    if (s_.rank != 0) return;
    write_loss_svg(s_.out + "/loss.svg", title, loss_, eval_loss_, lr_);
    if (memory_per_rank.size() < 2) return;
    std::vector<Series> per_rank;
    for (const std::vector<double>& m : memory_per_rank) {
        per_rank.emplace_back();
        for (size_t i = 0; i + 1 < m.size(); i += 2) per_rank.back().push_back({m[i], m[i + 1]});
    }
    write_memory_svg(s_.out + "/memory.svg", "GPU memory per rank (GiB): " + title, per_rank);
}

namespace {
// The summary's rows for one step's collectives per rank: the bytes of each kind and the volume in Psi,
// measured beside the formula, and what the ring has each rank send.
void print_comm_rows(const RunResult& r) {
    auto kinds = [](const Traffic& t) {
        return format("%.3f", t.volume_bytes(Collective::all_gather) / 1e9) + " / " + format("%.3f", t.volume_bytes(Collective::reduce_scatter) / 1e9) +
               " / " + format("%.3f", t.volume_bytes(Collective::all_reduce) / 1e9);
    };
    std::string formula = r.comm == r.comm_formula ? " (formula: the same)" : " (formula " + kinds(r.comm_formula) + ")";
    std::printf("| collectives per step per rank (step %lld): all-gather / reduce-scatter / all-reduce | %s GB%s |\n", (long long)r.comm_step,
                kinds(r.comm).c_str(), r.parameters > 0 ? formula.c_str() : "");
    if (r.parameters <= 0) return;
    double padding = r.comm_formula.volume_bytes() - r.comm_unpadded.volume_bytes();
    std::printf("| the same in Psi (%s parameters); the ring sends from each rank | %.4g Psi (formula %.4g Psi, padding of shards %.2g%%); %.4g GB |\n",
                thousands(int64_t(r.parameters)).c_str(), r.comm.volume_elements() / r.parameters, r.comm_formula.volume_elements() / r.parameters,
                100 * padding / std::max(1.0, r.comm_formula.volume_bytes()), r.comm.wire_bytes() / 1e9);
}
}  // namespace

void print_summary(const RunResult& r, const std::string& title) {
    std::printf("\n%s\n| metric | value |\n|---|---|\n", title.c_str());
    std::printf("| final train loss (the last step's) | %.4f |\n", r.final_loss);
    std::printf("| train loss, mean over the run (HF's train_loss) | %.4f |\n", r.mean_loss);
    for (size_t i = 0; i < r.eval_losses.size(); ++i) std::printf("| eval loss %zu | %.4f |\n", i + 1, r.eval_losses[i]);
    std::printf("| steps (per epoch) | %lld (%lld) |\n", (long long)r.steps, (long long)r.steps_per_epoch);
    std::printf("| train samples/s per GPU | %.1f |\n| eval samples/s per GPU | %.1f |\n", r.samples_per_s, r.eval_samples_per_s);
    std::printf("| train samples/s, all GPUs over the run's wall time (HF's train_samples_per_second) | %.1f |\n", r.global_samples_per_s);
    std::printf("| tokens/s per GPU | %.0f |\n| TFLOP/s per GPU | %.1f |\n", r.tokens_per_s, r.tflops);
    std::printf("| GPU memory peak / mean / min (this rank, sampled every 0.1 s) | %.2f / %.2f / %.2f GiB |\n", r.peak_gib, r.mean_gib, r.min_gib);
    std::printf("| GPU memory in use, whole GPU as nvidia-smi shows it, peak / mean | %.2f / %.2f GiB |\n", r.gpu_device_peak_gib,
                r.gpu_device_mean_gib);
    if (r.comm_step > 0) print_comm_rows(r);
    if (r.answers_after.n > 0)
        std::printf("| eval answers: token-F1 before -> after | %.3f -> %.3f |\n| eval answers: exact match before -> after | %.1f%% -> %.1f%% |\n",
                    r.answers_before.mean_f1(), r.answers_after.mean_f1(), 100 * r.answers_before.exact_rate(), 100 * r.answers_after.exact_rate());
    std::printf("| time | %s |\n\n", format_duration(r.seconds).c_str());
}
