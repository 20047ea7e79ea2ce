// support/options.h — what a run is asked to do: the command-line flags and a DeepSpeed-style JSON config
// (its keys mapped onto the same options; flags given on the command line win). Every bad value is one
// `fail()` naming the flag or the file and key. Knows nothing of the GPU.
#pragma once
#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include "distributed/world.h"
#include "zero3.h"

extern const char* kUsage;  // ./train --help

struct Options {
    std::string model, preset, adapter, tokenizer, data, eval_data, out = "out", config_file;
    int lora_rank = 16;
    float lora_alpha = 32, lora_dropout = 0;
    std::string lora_targets = "all";
    double eval_fraction = 0;
    int seq = 1024, micro_batch = 8, grad_accum = 1, steps = 0, epochs = 0, warmup_steps = -1;
    float lr = 2e-4f, weight_decay = 0.0f, clip = 1.0f, beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f;
    float warmup_min_lr = 0.0f, min_ratio = 0.0001f;
    std::string schedule = "warmup-cosine";
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
    // A step on paper (distributed/traffic.h): the bytes each rank sends and the time they take.
    int plan_ranks = 0;           // --ranks N with --dry-run: plan for N ranks without starting them
    int nodes = 0;                // --nodes M with --dry-run: the ranks spread over M nodes (0: this launch's)
    double interconnect_GBps = 0; // --interconnect (config: interconnect_GBps): bus bandwidth; 0: by the nodes
    double tflops = 0;            // --tflops: what one GPU sustains; 0: 45% of its bf16 peak
    std::set<std::string> given;  // flags given on the command line
};

// Parses the flags (then --config, whose keys yield to flags); `world` ranks check train_batch_size.
Options parse_options(const std::vector<std::string>& args, int world);
// DeepSpeed's config keys (a subset); "auto" means "not set here"; unknown keys: one warning.
void apply_config(const std::string& path, Options& o, int world);

long long parse_int(const std::string& flag, const std::string& text, long long lo, long long hi);
double parse_real(const std::string& flag, const std::string& text);
// A path of the default data: relative to the working directory, else to the directory of ./train.
std::string default_path(const std::string& relative);
