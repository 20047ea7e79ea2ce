// support/plan.h — the run as it will go, worked out from the options and the inputs alone, before any GPU:
// the batch (micro-batch x accumulation x ranks), the steps and epochs, the learning-rate schedule with its
// warmup, the ZeRO setup, LoRA, what a DeepSpeed config's keys became, and the memory each rank will need,
// by category (ZeroStore::estimate, and the activation arena counted as the model will carve it).
//
// `./train --dry-run` prints it and stops; `--dry-run --ranks N` prints it for N ranks without starting
// them ("what if": does a 70B fit on 8 GPUs at stage 3?), with the memory per rank at every stage beside
// it. A training run prints the same plan lines at start-up, before its measured memory. The step on paper
// (bytes each rank sends, compute and communication time at N GPUs and M nodes) is printed here too.
#pragma once
#include <cstdint>
#include <cstdio>
#include <string>

#include "adamw.h"
#include "data.h"
#include "lora.h"
#include "support/llama_config.h"
#include "support/options.h"
#include "zero3.h"

struct Plan {
    int ranks = 1;
    int64_t micro_batches_per_epoch = 0;  // per rank
    int64_t steps_per_epoch = 0, steps = 0;
    int64_t global_batch = 0;             // sequences per optimizer step, all ranks: micro x accumulation x ranks
    Schedule schedule;
    int64_t trainable = 0;                // elements the optimizer updates
    MemoryReport memory;                  // per rank, ZeroStore::estimate
    double activations = 0;               // bytes per rank: the activation arena
    int cpus = 0;                         // the CPUs rank 0 may use (World::cpus); 0: ranks planned, not started
};

// The optimizer steps of a run with `steps_per_epoch` steps in an epoch: --steps, else --epochs (1) epochs.
int64_t run_steps(const Options& o, int64_t steps_per_epoch);
// Whether a model directory holds weights (a config.json alone plans a run but cannot train).
bool has_weights(const std::string& model_dir);

Plan make_plan(const Options& o, const LlamaConfig& c, const LoraConfig& lora, const Dataset& train, int32_t pad, int ranks, int cpus = 0);
// The plan's lines: model and LoRA, batch, steps, schedule (with the lr at a few steps), AdamW, ZeRO, and
// what the config's keys became (each once).
void print_run_plan(FILE* out, const Plan& p, const Options& o, const LlamaConfig& c, const LoraConfig& lora);
// The memory per rank by category, the total on each GPU, and the same total at every ZeRO stage (with and
// without optimizer offload) for these ranks.
void print_memory_plan(FILE* out, const Plan& p, const Options& o, const LlamaConfig& c, const LoraConfig& lora);
// --dry-run's report on stdout: the plan for `ranks` ranks, its memory, and "dry run: inputs are valid".
void print_dry_run(const Options& o, const LlamaConfig& c, const LoraConfig& lora, const Dataset& train, int32_t pad, int ranks, int cpus = 0);

// The step on paper (distributed/traffic.h). Model FLOPs per trained token, as the PaLM paper counts them
// (lora_params: the adapters' elements, 0 for full fine-tuning).
double flops_per_token(const LlamaConfig& c, int64_t lora_params, int T, bool recompute);
// What one GPU sustains for the compute time on paper: --tflops, else 45% of `peak` (an H100's when 0); `how` says which.
double sustained_flops(const Options& o, double peak, std::string& how);
// The bytes each rank sends per step at cl.ranks ranks and the step's time at flops_per_s; with every_stage,
// the same at each ZeRO stage on one more line.
void print_step_on_paper(const Options& o, const LlamaConfig& c, const LoraConfig& lora, const Cluster& cl, double flops_per_s,
                         const std::string& how, bool every_stage);
