// support/report.h — what a run shows a person: SVG charts (loss and learning rate per step; GPU memory per
// rank over time), SQuAD-style answer scores (exact match and token F1), progress lines with an ETA for long
// phases, the run summary (summary.json) that bench/collect.py turns into the workshop table, and the run's
// log (RunLog: the progress line of each step window, train_log.csv, memory_rankR.csv, the summary table).
// Knows nothing of CUDA, MPI, the model or ZeRO: callers hand it numbers and text (a step's collectives as
// distributed/traffic.h counts them: plain numbers too).
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
#include <cstdio>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "distributed/traffic.h"
#include "support/tensorboard.h"

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
    // One step's collectives per rank (traffic.h): measured at step comm_step (the last) and the formula
    // (ZeroStore::traffic); written as bytes per kind (the paper's volume), the volume in Psi, the ring's
    // bytes sent, and what padding shards to a multiple of the ranks adds to the formula. parameters: Psi.
    double parameters = NAN;
    int64_t comm_step = 0;               // 0: nothing measured (the comm keys are left out)
    Traffic comm, comm_formula;
    double comm_padding_bytes = NAN;
};

// Writes `s` as one JSON object (keys in the order above), atomically; fails naming the path.
void write_summary_json(const std::string& path, const RunSummary& s);

// ---------------------------------------------------------------------------------------------- the run's log
// What a training run shows a person and leaves in OUT besides the model: a progress line every `log_every`
// steps (and at each evaluation and the last step), the same numbers in OUT/train_log.csv (rank 0) and
// OUT/memory_rankR.csv (every rank), the points of OUT/loss.svg and OUT/memory.svg, and the end-of-run
// numbers (RunResult) for the summary table and summary.json. The trainer hands it each step's numbers as
// it reads them back; the steps since the last line form a window whose time, tokens and loss it reports,
// and the bytes its collectives moved per step, by kind (train_log.csv's last three columns: the paper's
// volume, the mean over the window's steps).

// The end-of-run numbers: the summary table (print_summary) and OUT/summary.json.
struct RunResult {
    double final_loss = NAN, tokens_per_s = 0, samples_per_s = 0, tflops = 0, peak_gib = 0, mean_gib = 0, min_gib = NAN;
    double eval_samples_per_s = NAN, seconds = 0;
    double mean_loss = NAN, global_samples_per_s = NAN;           // HF's train_loss and train_samples_per_second
    double gpu_device_peak_gib = NAN, gpu_device_mean_gib = NAN;  // the whole GPU (nvidia-smi's figure)
    int64_t steps = 0, steps_per_epoch = 0;
    std::vector<double> eval_losses;
    AnswerScore answers_before, answers_after;  // greedy answers to the eval questions (--score-answers)
    // The collectives of the last step (traffic.h), and beside them what the trainer expects: the formula for
    // the stage (ZeroStore::traffic), the same without the padding of shards, and the model's parameters (Psi).
    int64_t comm_step = 0;
    Traffic comm, comm_formula, comm_unpadded;
    double parameters = 0;  // 0: no formula (the summary table shows the measured figures alone)
};

// Memory sampled over time (bytes): its peak, mean and minimum over `samples` samples.
struct MemoryStats {
    double peak = 0, mean = NAN, min = NAN;
    int64_t samples = 0;
};

// One optimizer step, as the trainer read it back from the GPU.
struct StepRecord {
    int64_t step = 0;
    double loss = 0;                   // mean cross-entropy over the step's target tokens (all ranks)
    double loss_sum = 0, targets = 0;  // its sum and the number of target tokens (all ranks)
    double tokens = 0, rows = 0;       // real (non-padding) tokens and rows of this rank
    double ms = 0;                     // its time on the GPU
    float lr = 0;                      // the learning rate it used
    double grad_norm = 0;              // the global gradient norm, before clipping
    Traffic comm;                      // what this rank's collectives moved during the step
};

class RunLog {
  public:
    struct Setup {
        std::string out;                         // OUT
        int rank = 0;                            // rank 0 prints and writes train_log.csv
        int log_every = 10;                      // steps per progress line
        int64_t steps = 0, steps_per_epoch = 0;  // the run's length
        int64_t start_step = 0;                  // steps done before (a resumed run)
        double flops_per_token = 0;              // model FLOPs per trained token (for TFLOP/s)
        double peak_flops = 0;                   // this GPU's peak bf16 FLOP/s (MFU; 0: unknown, not printed)
        std::string tensorboard_dir;             // rank 0 writes TensorBoard event files there ("": none)
    };
    RunLog() = default;
    ~RunLog();
    RunLog(const RunLog&) = delete;
    RunLog& operator=(const RunLog&) = delete;

    void open(const Setup& setup);  // the CSVs with their headers; a resumed run appends to those it finds
    void start();                   // the training clock starts
    void add_step(const StepRecord& r);            // into the window; the final loss; the loss and LR points
    bool line_due(int64_t step, bool eval) const;  // every log_every steps, at an evaluation, at the last step
    // The progress line of the window (with the eval loss when `eval`), its CSV rows and TensorBoard
    // scalars, and a memory sample of this rank (`gpu_gib`; `gpu_in_use_gib`: the whole GPU); the next
    // window starts empty.
    void line(bool eval, double eval_loss, double gpu_gib, double gpu_in_use_gib);
    void add_eval_time(double seconds, double rows);  // for the eval samples/s
    double timed_rows() const { return timed_rows_; }  // this rank's rows in the timed steps so far
    // The run's rates, time and memory into `result`: `global_rows` (every rank's rows), and memory sampled
    // over time (this rank's, the whole GPU's) where there are samples, else the log lines' samples.
    void finish(double global_rows, const MemoryStats& rank_memory, const MemoryStats& gpu_memory);
    // OUT/loss.svg and, with several ranks, OUT/memory.svg from each rank's memory_samples(); rank 0 writes.
    void write_charts(const std::string& title, const std::vector<std::vector<double>>& memory_per_rank) const;
    const std::vector<double>& memory_samples() const { return memory_; }  // (seconds, GiB) pairs of this rank
    RunResult result;

  private:
    struct Window {
        double ms = 0, loss_sum = 0, targets = 0, tokens = 0, rows = 0;
        double comm_bytes[kCollectives] = {};  // the paper's volume, per kind
        int64_t steps = 0;
    };
    Setup s_;
    std::FILE* csv_ = nullptr;      // OUT/train_log.csv (rank 0)
    std::FILE* mem_csv_ = nullptr;  // OUT/memory_rankR.csv
    TensorBoardWriter tensorboard_; // OUT/tensorboard (rank 0)
    Window window_;                 // the steps since the last line
    StepRecord last_;               // the last step added
    double timed_ms_ = 0, timed_tokens_ = 0, timed_rows_ = 0;  // every window logged so far
    double train_start_ = 0, eval_seconds_ = 0, eval_rows_ = 0;
    int64_t samples_ = 0;           // memory samples taken (for the mean)
    Series loss_, eval_loss_, lr_;  // for OUT/loss.svg
    std::vector<double> memory_;    // (seconds, GiB) pairs, for OUT/memory.svg
};

// The end-of-run table: final train loss, eval losses, steps, rates, GPU memory, answer scores, time.
void print_summary(const RunResult& r, const std::string& title);
