// support/options.h — what a run is asked to do: the command-line flags and a DeepSpeed JSON config (its keys
// mapped onto the same options, read as DeepSpeed and HF's Trainer read them; flags given on the command
// line win). Every bad value is one `fail()` naming the flag, or the file and key path. Knows nothing of
// the GPU. The flags are options.cpp; the config reader is deepspeed_config.cpp.
#pragma once
#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include "adamw.h"
#include "distributed/world.h"
#include "zero3.h"

extern const char* kUsage;  // ./train --help

// --micro-batch x --seq: the model counts a micro-batch's tokens (its rows) in a 32-bit int.
constexpr int64_t kMaxTokensPerMicroBatch = (1LL << 31) - 1;

struct Options {
    std::string model, preset, adapter, tokenizer, data, eval_data, out = "out", config_file;
    int lora_rank = 16;
    float lora_alpha = 32, lora_dropout = 0;
    std::string lora_targets = "all";
    bool lora_folded = false;  // --lora-layout folded: each adapter's s B inside its base weight's padded rows (lora.h with_lora_slots)
    double eval_fraction = 0;
    int seq = 1024, micro_batch = 8, grad_accum = 1, steps = 0, epochs = 0, warmup_steps = -1;
    float lr = 2e-4f, weight_decay = 0.0f, clip = 1.0f, beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f;
    float warmup_min_lr = 0.0f, min_ratio = 0.0001f, warmup_min_ratio = 0.0f;
    std::string schedule = "warmup-cosine";  // this trainer's kinds, or DeepSpeed's (adamw.h: Schedule)
    std::string warmup_type = "log";          // DeepSpeed's schedules: "log" or "linear"
    int64_t schedule_steps = 0;               // scheduler.params.total_num_steps; 0: the run's length
    bool warmup_absent = false;               // warmup_steps is DeepSpeed's default: the config's scheduler has no warmup_num_steps
    bool train_on_prompt = false, chat_template = false, pack = true, dry_run = false;
    int log_every = 10, eval_every = 0, sample = 3;
    bool score_answers = false;   // greedy answers to every eval question, scored before and after training
    int profile = 0;              // steps to measure by kernel family (after 2 warm-up steps); 0: off
    uint64_t seed = 1234;
    ZeroOptions zero;
    Transport comm = Transport::automatic;
    bool checkpoint_activations = false;
    int save_every = 0;
    std::string resume;           // "auto": OUT/checkpoints/latest if present
    bool overwrite = false;       // a new run may replace a previous run's outputs in OUT (the default job: always)
    double check_timeout = 600;   // seconds a rank that has checked its inputs waits for the others (mpirun)
    double comm_timeout = 600;    // seconds any wait on the GPU or the other ranks may last (the watchdog; comms_timeout)
    bool check_collectives = false;  // compare every step's sequence of collectives across ranks (a debug aid)
    bool merge = false;           // LoRA: also write the base with the adapters merged to OUT/model (HF)
    std::string tensorboard_dir;  // event files; "" = OUT/tensorboard (a config's tensorboard.output_path)
    // A step on paper (distributed/traffic.h): the bytes each rank sends and the time they take.
    int plan_ranks = 0;           // --ranks N with --dry-run: plan for N ranks without starting them
    int nodes = 0;                // --nodes M with --dry-run: the ranks spread over M nodes (0: this launch's)
    double interconnect_GBps = 0; // --interconnect (config: interconnect_GBps): bus bandwidth; 0: by the nodes
    double tflops = 0;            // --tflops: what one GPU sustains; 0: 45% of its bf16 peak
    std::set<std::string> given;  // flags given on the command line
    std::vector<std::string> config_notes;  // what the config resolved and which keys have no effect (the plan)
};

// Parses the flags (then --config, whose keys yield to flags); `world` ranks check train_batch_size
// (--ranks N replaces it for a dry run).
Options parse_options(const std::vector<std::string>& args, int world);
// Reads a DeepSpeed config onto `o` (deepspeed_config.cpp has the rules): values checked with the key path
// in the error, "auto" resolved as HF's Trainer fills it, notes for the plan in o.config_notes.
void apply_config(const std::string& path, Options& o, int world);
// The learning-rate schedule of a run of `run_steps` optimizer steps (warmup default: 3% of the steps).
Schedule make_schedule(const Options& o, int64_t run_steps);

long long parse_int(const std::string& flag, const std::string& text, long long lo, long long hi);
double parse_real(const std::string& flag, const std::string& text);
float parse_float(const std::string& flag, const std::string& text);  // parse_real, finite as a 32-bit float too
// A path of the default data: relative to the working directory, else to the directory of ./train.
std::string default_path(const std::string& relative);

// --out: fails unless it names a directory this process can write (or create: the nearest existing parent
// must be a writable directory), never the root; a previous run's outputs there (train_log.csv,
// summary.json, loss.svg, memory*.csv/svg, adapter/, model/, checkpoints/) are refused unless --resume or
// --overwrite. Returns those outputs ("train_log.csv, adapter/"), "" when there are none. Writes nothing
// but a probe it removes at once.
std::string check_out_dir(const Options& o);
void make_out_dir(const std::string& path);  // creates the directory and its missing parents

// With --adapter, the adapter's r, lora_alpha and target_modules are the run's: a --lora-rank,
// --lora-alpha or --lora-targets that says otherwise is refused, naming both.
void check_adapter_flags(const Options& o, const LoraConfig& adapter);
// Warmup (--warmup-steps, or the config's scheduler.params.warmup_num_steps) longer than the run's `steps`
// is refused, naming where it came from.
void check_warmup(const Options& o, int64_t steps);
