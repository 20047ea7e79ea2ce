// support/report.h — what a run shows a person besides its log lines: SVG charts (loss and learning rate per
// step; GPU memory per rank over time), SQuAD-style answer scores (exact match and token F1), progress
// lines with an ETA for long phases, and the run summary (summary.json) that bench/collect.py turns into
// the workshop table. Knows nothing of CUDA, MPI, the model or ZeRO: callers hand it numbers and text.
//
// Charts are plain SVG 1.1 that any browser opens. Each series is one element whose class names it, so a
// script (or a test) can find it: `polyline.train-loss`, `polyline.eval-loss` (+ `g.eval-loss-markers`),
// `polyline.lr`, `polyline.rank-0`, `polyline.rank-1`, ... Non-finite points are skipped; a series
// with nothing left is left out (legend included).
//
// Answer scores follow the SQuAD v1.1 evaluation script:
//   normalize(s) = collapse_whitespace(drop_articles(drop_ascii_punctuation(ascii_lowercase(s))))
//   F1 = 2·P·R / (P + R),  P = |pred ∩ ref| / |pred|,  R = |pred ∩ ref| / |ref|   (∩ of token multisets)
#pragma once
#include <cmath>
#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

// ---------------------------------------------------------------------------------------------- charts
using Series = std::vector<std::pair<double, double>>;  // (x, y) points in x order

// Loss chart: train loss per step (line), eval loss per evaluation (line + markers), both on the left
// axis; the learning rate on a right axis. x is the optimizer step. The train series is thinned to at
// most kMaxChartPoints (first and last kept). Written atomically (path.tmp, then rename).
void write_loss_svg(const std::string& path, const std::string& title, const Series& train_loss,
                    const Series& eval_loss, const Series& lr);

// Memory chart: one line per rank, (seconds since start, GiB in use), legend "rank 0", "rank 1", ...
// Each rank's series is thinned to at most kMaxChartPoints. Written atomically.
void write_memory_svg(const std::string& path, const std::string& title, const std::vector<Series>& per_rank);

constexpr size_t kMaxChartPoints = 2000;

// Axis ticks at a "nice" step (1, 2 or 5 × 10^k) covering [lo, hi] with about `target` ticks; the first
// tick is <= lo and the last >= hi. A degenerate range (lo == hi) is widened around its value first.
std::vector<double> nice_ticks(double lo, double hi, int target = 6);

// At most `max_points` of `points`, evenly spaced by index, the first and last always kept.
Series thin_series(const Series& points, size_t max_points);

std::string xml_escape(const std::string& text);  // & < > " ' as entities

// ---------------------------------------------------------------------------------------------- answers
std::string normalize_answer(std::string text);  // see the top of this file; non-ASCII bytes kept as is
double token_f1(const std::string& prediction, const std::string& reference);  // both empty: 1; one: 0
bool exact_match(const std::string& prediction, const std::string& reference);  // normalized equality

// Running means over an eval set: add() one (prediction, reference) pair at a time.
struct AnswerScore {
    double f1 = 0, exact = 0;  // sums over the pairs added (exact: count of exact matches)
    int64_t n = 0;             // pairs added
    void add(const std::string& prediction, const std::string& reference);
    double mean_f1() const;     // in [0, 1]; NaN when n == 0
    double exact_rate() const;  // in [0, 1]; NaN when n == 0
};

// ---------------------------------------------------------------------------------------------- progress
// "42s", "3m05s", "1h02m", "2d03h" (rounded to the second, then truncated to the two units shown);
// "?" for a negative, NaN or infinite duration.
std::string format_duration(double seconds);

// Seconds left at the average rate so far: elapsed · (total − done) / done. NaN when done <= 0 (no rate
// yet) or an input is NaN; 0 when done >= total.
double eta_seconds(double done, double total, double elapsed);

// Progress of one long phase (loading a model, tokenizing a corpus), as lines such as
//   loading model: 45% (5.4/12.0 GiB) 3s elapsed, ETA 4s
// update() prints at most once per `interval_s` and never before `interval_s` has passed since the
// start, so a phase that finishes within it prints nothing at all; finish() prints the closing line
//   loading model: done (12.0 GiB) in 7s
// only when an earlier line was printed or the phase took at least `interval_s`. A Progress built with
// enabled = false (ranks other than 0) never prints.
class Progress {
  public:
    enum class Units { Items, Bytes };  // counts print as "450/1000" or "5.4/12.0 GiB" (KiB/MiB/GiB by total)
    using Clock = std::function<double()>;                    // monotonic seconds; default wall_seconds()
    using Printer = std::function<void(const std::string&)>;  // one line without '\n'; default: stdout, flushed

    Progress(std::string label, double total, Units units = Units::Items, bool enabled = true, Clock clock = nullptr,
             Printer print = nullptr, double interval_s = 2.0);
    void update(double done);  // `done` of `total` finished so far
    void finish();             // the closing line (see above); later calls do nothing
    int lines_printed() const { return lines_; }

  private:
    std::string amount(double done, bool with_total) const;  // "(5.4/12.0 GiB)" or "(450/1000)"

    std::string label_;
    double total_;      // items or bytes
    Units units_;
    bool enabled_;
    Clock clock_;
    Printer print_;
    double interval_s_;
    double start_s_;            // clock at construction
    double last_print_s_;       // clock at the last line printed (start_s_ before any)
    double done_ = 0;           // the last update's value
    int lines_ = 0;
    bool finished_ = false;
};

// ---------------------------------------------------------------------------------------------- summary
// The run's numbers, written to OUT/summary.json for bench/collect.py. Unknown numbers stay NaN and are
// written as null (collect.py prints them as "—").
struct RunSummary {
    std::string title;                   // e.g. "fine-tuning summary"
    int64_t world_size = 1;              // GPUs (ranks)
    int64_t zero_stage = 0;              // 0..3
    bool offload = false;                // optimizer state and step on the CPU
    bool checkpoint_activations = false;
    int64_t lora_rank = 0;               // 0 = full fine-tuning
    double final_train_loss = NAN;       // nats per target token, the last logged value
    double mean_train_loss = NAN;        // HF's train_loss: the mean of every step's loss over the run
    std::vector<double> eval_losses;     // nats per target token, one per evaluation, in order
    int64_t steps = 0;                   // optimizer steps run
    int64_t steps_per_epoch = 0;         // optimizer steps in one epoch
    double train_samples_per_s = NAN;    // rows per second per GPU, training steps only
    double global_train_samples_per_s = NAN;  // HF's train_samples_per_second: rows of all GPUs / the run's wall time
    double eval_samples_per_s = NAN;     // rows per second per GPU, evaluation only
    double tokens_per_s = NAN;           // per GPU
    double tflops = NAN;                 // TFLOP/s per GPU (model FLOPs)
    double gpu_peak_gib = NAN, gpu_mean_gib = NAN, gpu_min_gib = NAN;  // this rank's GiB on its GPU, sampled over time
    double gpu_device_peak_gib = NAN, gpu_device_mean_gib = NAN;       // the whole GPU's GiB in use (nvidia-smi's figure)
    double seconds = NAN;                // wall time of the run
};

// Writes `s` as one JSON object (keys in the order above), atomically; fails naming the path.
void write_summary_json(const std::string& path, const RunSummary& s);
