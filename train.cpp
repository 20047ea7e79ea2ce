// train.cpp — main: options (flags and a DeepSpeed-style JSON config), checks, the training loop
// (micro-steps, gradient accumulation, eval, logging, saving), sample answers and the end-of-run summary.
//   ./train [OPTIONS]                  fine-tune (the default job with no options; see --help)
//   ./train tokenize [--tokenizer P]   print the ids of stdin's UTF-8 text, space-separated, no BOS
// Every user mistake ends in one line `error: ...` naming the flag, file or field, and exit status 1,
// and every input is checked before the GPU is touched.
#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <iterator>
#include <set>
#include <string>
#include <vector>

#include "adamw.h"
#include "common.h"
#include "data.h"
#include "llama.h"
#include "lora.h"
#include "zero3.h"

namespace {

const char* kUsage = R"(usage: ./train [OPTIONS]
       ./train tokenize [--tokenizer PATH]

Fine-tunes a Llama model with LoRA (or all weights). With no options it runs the default job: it
pretrains the `tiny` preset on data/corpus once (saved to data/base), then LoRA-fine-tunes it on the
WordNet QA set, evaluates, prints sample answers and writes the adapter to out/.

Model:
  --model DIR            HF model directory (config.json + model.safetensors[.index.json])
  --preset NAME          random init of a named shape instead: tiny, llama-3.2-1b
  --adapter DIR          start from a PEFT LoRA adapter (its r, alpha and targets are used)
LoRA:
  --lora-rank N          adapter rank; 0 = full fine-tuning of every weight (default 16)
  --lora-alpha A         scale = alpha / rank (default 32)
  --lora-targets LIST    comma list of q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj or all (default all)
Data:
  --tokenizer PATH       HF tokenizer.json (default: data/tokenizer.json)
  --data PATH            training data: .jsonl rows {"text"}, {"question","answer"[,"context"]},
                         {"prompt","completion"} or {"input_ids"[,"labels"]}; or plain text (a file or a
                         directory, packed). Default: data/qa_train.jsonl
  --eval-data PATH       evaluation data, same forms (default: data/qa_eval.jsonl with the default data)
  --eval-fraction F      split this fraction of --data off for evaluation instead (0 < F < 1)
  --seq N                sequence length (default 1024); longer rows are truncated and counted
  --train-on-prompt      loss on every token, not only the answer/completion and EOS
  --chat-template        wrap question/answer and prompt/completion rows in the Llama-3 chat template
  --pack                 fill each sequence with several JSONL rows
Optimisation:
  --micro-batch N        rows per GPU per micro-step (default 8)
  --grad-accum N         micro-steps per optimizer step (default 1)
  --steps N | --epochs N length of the run (default: 1 epoch)
  --lr LR                peak learning rate (default 2e-4)
  --lr-schedule KIND     constant, warmup, warmup-linear, warmup-cosine (default warmup-cosine)
  --warmup-steps N       (default 3% of the steps)
  --weight-decay W       AdamW decoupled weight decay (default 0; norm weights never decay)
  --clip C               clip the global gradient norm to C; 0 = off (default 1.0)
  --seed N               seed for data order and initialisation (default 1234)
  --config FILE          DeepSpeed JSON: train_micro_batch_size_per_gpu, gradient_accumulation_steps,
                         gradient_clipping, optimizer (AdamW/Adam params), scheduler (WarmupLR,
                         WarmupDecayLR, WarmupCosineLR), bf16, zero_optimization (stage, offload_optimizer,
                         overlap_comm, reduce_bucket_size, allgather_bucket_size, stage3_prefetch_bucket_size,
                         stage3_param_persistence_threshold), activation_checkpointing, steps_per_print.
                         Flags given on the command line win over the file.
ZeRO (one process per GPU: mpirun -np N ./train):
  --zero-stage S         0 = data parallel, 1 = + optimizer state sharded, 2 = + gradients, 3 = + weights (default 0)
  --offload              optimizer state (fp32 master, m, v) in pinned CPU memory, AdamW on the CPU (stages 1-3)
  --checkpoint-activations  recompute each layer in backward: less memory, about a third more compute
  --keep-gathered        stage 3: keep each layer's gathered weights from forward to backward
  --save-every N         write a checkpoint every N steps (and at the end) under OUT/checkpoints
  --resume [DIR]         continue from a checkpoint (default: OUT/checkpoints/latest); any GPU count or stage
Output:
  --out DIR              where the adapter (or model), train_log.csv and eval results go (default out)
  --log-every N          print a progress line every N steps (default 10)
  --eval-every N         evaluate every N steps (default: at the end of each epoch)
  --sample N             after training, answer N eval prompts next to the reference (default 3)
  --dry-run              check every input, print the plan, and stop before the GPU
  -h, --help             this text

Subcommands:
  tokenize               read UTF-8 text on stdin, print its token ids on one line (no BOS);
                         special-token strings such as <|eot_id|> become their ids
)";

struct Options {
    std::string model, preset, adapter, tokenizer, data, eval_data, out = "out", config_file;
    int lora_rank = 16;
    float lora_alpha = 32;
    std::string lora_targets = "all";
    double eval_fraction = 0;
    int seq = 1024, micro_batch = 8, grad_accum = 1, steps = 0, epochs = 0, warmup_steps = -1;
    float lr = 2e-4f, weight_decay = 0.0f, clip = 1.0f, beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f;
    float warmup_min_lr = 0.0f, min_ratio = 0.0001f;
    std::string schedule = "warmup-cosine";
    bool train_on_prompt = false, chat_template = false, pack = false, dry_run = false;
    int log_every = 10, eval_every = 0, sample = 3;
    uint64_t seed = 1234;
    ZeroOptions zero;
    bool checkpoint_activations = false;
    int save_every = 0;
    std::string resume;  // "auto": OUT/checkpoints/latest if present
    std::set<std::string> given;  // flags given on the command line
};

long long parse_int(const std::string& flag, const std::string& text, long long lo, long long hi) {
    char* end = nullptr;
    errno = 0;
    long long v = std::strtoll(text.c_str(), &end, 10);
    if (text.empty() || *end != '\0' || errno != 0) fail(flag + " needs a whole number, not \"" + text + "\"");
    if (v < lo || v > hi) fail(flag + " must be in [" + std::to_string(lo) + ", " + std::to_string(hi) + "], not " + text);
    return v;
}

double parse_real(const std::string& flag, const std::string& text) {
    char* end = nullptr;
    double v = std::strtod(text.c_str(), &end);
    if (text.empty() || *end != '\0' || !std::isfinite(v)) fail(flag + " needs a number, not \"" + text + "\"");
    return v;
}

bool exists(const std::string& path) { return access(path.c_str(), F_OK) == 0; }

// A path of the default data: relative to the working directory, else to the directory of ./train.
std::string default_path(const std::string& relative) {
    if (exists(relative)) return relative;
    char exe[4096];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n > 0) {
        std::string dir(exe, size_t(n));
        dir = dir.substr(0, dir.rfind('/'));
        if (exists(dir + "/" + relative)) return dir + "/" + relative;
    }
    return relative;
}

// DeepSpeed's config keys (a subset); "auto" means "not set here". Unknown keys: one warning.
void apply_config(const std::string& path, Options& o, int world) {
    Json j = read_json_file(path);
    if (j.type != Json::Object) fail(path + ": a DeepSpeed config must be a JSON object");
    auto set = [&](const char* flag) { return !o.given.count(flag); };
    auto number = [&](const Json& v, const std::string& key) -> const Json* {
        if (v.is_string() && v.string == "auto") return nullptr;
        if (v.type != Json::Number) fail(path + ": \"" + key + "\" must be a number");
        return &v;
    };
    std::vector<std::string> unknown;
    for (const auto& [key, v] : j.object) {
        if (key == "train_micro_batch_size_per_gpu") {
            if (const Json* n = number(v, key); n && set("--micro-batch")) o.micro_batch = int(parse_int(path + ": " + key, std::to_string(n->integer), 1, 1 << 16));
        } else if (key == "gradient_accumulation_steps") {
            if (const Json* n = number(v, key); n && set("--grad-accum")) o.grad_accum = int(parse_int(path + ": " + key, std::to_string(n->integer), 1, 1 << 20));
        } else if (key == "train_batch_size") {
            number(v, key);  // checked against micro * accum * world after all keys are read
        } else if (key == "gradient_clipping") {
            if (const Json* n = number(v, key); n && set("--clip")) o.clip = float(n->number);
        } else if (key == "steps_per_print") {
            if (const Json* n = number(v, key); n && set("--log-every")) o.log_every = int(std::max<int64_t>(1, n->integer));
        } else if (key == "fp16") {
            const Json* e = v.find("enabled");
            if (e && e->type == Json::Bool && e->boolean) fail(path + ": fp16 is not supported (use bf16)");
        } else if (key == "bf16") {
            const Json* e = v.find("enabled");
            if (e && e->type == Json::Bool && !e->boolean) fail(path + ": bf16.enabled = false is not supported (weights compute in bf16)");
        } else if (key == "optimizer") {
            const Json* type = v.find("type");
            std::string t = type && type->is_string() ? type->string : "";
            if (t != "AdamW" && t != "Adam" && t != "adamw" && t != "adam") fail(path + ": optimizer.type \"" + t + "\" is not supported (AdamW)");
            if (const Json* p = v.find("params")) {
                for (const auto& [pk, pv] : p->object) {
                    if (pk == "lr") { if (const Json* n = number(pv, "optimizer.params.lr"); n && set("--lr")) o.lr = float(n->number); }
                    else if (pk == "weight_decay") { if (const Json* n = number(pv, pk); n && set("--weight-decay")) o.weight_decay = float(n->number); }
                    else if (pk == "eps") { if (const Json* n = number(pv, pk)) o.eps = float(n->number); }
                    else if (pk == "betas") {
                        if (pv.type != Json::Array || pv.array.size() != 2) fail(path + ": optimizer.params.betas must be [beta1, beta2]");
                        o.beta1 = float(pv.array[0].number), o.beta2 = float(pv.array[1].number);
                    } else if (pk != "torch_adam" && pk != "adam_w_mode") unknown.push_back("optimizer.params." + pk);
                }
            }
        } else if (key == "scheduler") {
            const Json* type = v.find("type");
            std::string t = type && type->is_string() ? type->string : "";
            if (set("--lr-schedule")) {
                if (t == "WarmupLR") o.schedule = "warmup";
                else if (t == "WarmupDecayLR") o.schedule = "warmup-linear";
                else if (t == "WarmupCosineLR") o.schedule = "warmup-cosine";
                else fail(path + ": scheduler.type \"" + t + "\" is not supported (WarmupLR, WarmupDecayLR, WarmupCosineLR)");
            }
            if (const Json* p = v.find("params")) {
                for (const auto& [pk, pv] : p->object) {
                    const Json* n = pv.is_string() ? nullptr : number(pv, "scheduler.params." + pk);
                    if (!n) continue;
                    if (pk == "warmup_num_steps" && set("--warmup-steps")) o.warmup_steps = int(n->integer);
                    else if (pk == "warmup_max_lr" && set("--lr")) o.lr = float(n->number);
                    else if (pk == "warmup_min_lr") o.warmup_min_lr = float(n->number);
                    else if (pk == "total_num_steps" && set("--steps")) o.steps = int(n->integer);
                    else if (pk == "cos_min_ratio") o.min_ratio = float(n->number);
                }
            }
        } else if (key == "zero_optimization") {
            for (const auto& [zk, zv] : v.object) {
                auto whole = [&](int64_t lo) {
                    if (!zv.is_int() || zv.integer < lo) fail(path + ": zero_optimization." + zk + " must be a whole number >= " + std::to_string(lo));
                    return zv.integer;
                };
                if (zk == "stage") {
                    if (!zv.is_int() || zv.integer < 0 || zv.integer > 3) fail(path + ": zero_optimization.stage must be 0, 1, 2 or 3");
                    if (set("--zero-stage")) o.zero.stage = int(zv.integer);
                } else if (zk == "offload_optimizer") {
                    const Json* d = zv.find("device");
                    std::string dev = d && d->is_string() ? d->string : "none";
                    if (dev != "cpu" && dev != "none") fail(path + ": zero_optimization.offload_optimizer.device \"" + dev + "\" is not supported (cpu or none)");
                    if (set("--offload")) o.zero.offload = dev == "cpu";
                    if (const Json* pin = zv.find("pin_memory"); pin && pin->type == Json::Bool) o.zero.pin_memory = pin->boolean;
                } else if (zk == "overlap_comm") {
                    o.zero.overlap_comm = zv.type == Json::Bool && zv.boolean;
                } else if (zk == "reduce_bucket_size") {
                    o.zero.reduce_bucket_size = whole(1);
                } else if (zk == "allgather_bucket_size") {
                    o.zero.allgather_bucket_size = whole(1);
                } else if (zk == "stage3_prefetch_bucket_size") {
                    o.zero.prefetch_bucket_size = whole(0);
                } else if (zk == "stage3_param_persistence_threshold") {
                    o.zero.persistence_threshold = whole(0);
                } else if (zk == "offload_param") {
                    const Json* d = zv.find("device");
                    if (d && d->is_string() && d->string != "none") fail(path + ": zero_optimization.offload_param is not supported (offload_optimizer is)");
                } else if (zk != "contiguous_gradients" && zk != "allgather_partitions" && zk != "reduce_scatter" &&
                           zk != "stage3_max_live_parameters" && zk != "stage3_max_reuse_distance" &&
                           zk != "stage3_gather_16bit_weights_on_model_save" && zk != "sub_group_size" && zk != "round_robin_gradients") {
                    unknown.push_back("zero_optimization." + zk);
                }
            }
        } else if (key == "activation_checkpointing") {
            if (set("--checkpoint-activations")) o.checkpoint_activations = true;
        } else if (key == "wall_clock_breakdown" || key == "zero_allow_untested_optimizer" || key == "gradient_predivide_factor" ||
                   key == "prescale_gradients") {
            // accepted, no effect here
        } else {
            unknown.push_back(key);
        }
    }
    if (!unknown.empty()) {
        std::string list;
        for (const auto& k : unknown) list += (list.empty() ? "" : ", ") + k;
        std::fprintf(stderr, "warning: %s: ignoring keys this trainer does not use: %s\n", path.c_str(), list.c_str());
    }
    int64_t global = int64_t(o.micro_batch) * o.grad_accum * world;
    if (const Json* tb = j.find("train_batch_size"); tb && tb->is_int() && tb->integer != global)
        fail(path + ": train_batch_size " + std::to_string(tb->integer) + " != train_micro_batch_size_per_gpu * gradient_accumulation_steps * GPUs (" +
             std::to_string(global) + ")");
}

Options parse_options(const std::vector<std::string>& args, int world) {
    Options o;
    for (size_t i = 0; i < args.size(); ++i) {
        const std::string& a = args[i];
        auto value = [&]() -> const std::string& {
            if (i + 1 >= args.size()) fail(a + " needs a value");
            return args[++i];
        };
        o.given.insert(a);
        if (a == "--model") o.model = value();
        else if (a == "--preset") o.preset = value();
        else if (a == "--adapter") o.adapter = value();
        else if (a == "--tokenizer") o.tokenizer = value();
        else if (a == "--data") o.data = value();
        else if (a == "--eval-data") o.eval_data = value();
        else if (a == "--eval-fraction") o.eval_fraction = parse_real(a, value());
        else if (a == "--out") o.out = value();
        else if (a == "--config") o.config_file = value();
        else if (a == "--lora-rank") o.lora_rank = int(parse_int(a, value(), 0, 4096));
        else if (a == "--lora-alpha") o.lora_alpha = float(parse_real(a, value()));
        else if (a == "--lora-targets") o.lora_targets = value();
        else if (a == "--seq") o.seq = int(parse_int(a, value(), 2, 1 << 17));
        else if (a == "--micro-batch") o.micro_batch = int(parse_int(a, value(), 1, 1 << 16));
        else if (a == "--grad-accum") o.grad_accum = int(parse_int(a, value(), 1, 1 << 20));
        else if (a == "--steps") o.steps = int(parse_int(a, value(), 1, 1 << 30));
        else if (a == "--epochs") o.epochs = int(parse_int(a, value(), 1, 1 << 20));
        else if (a == "--lr") o.lr = float(parse_real(a, value()));
        else if (a == "--lr-schedule") o.schedule = value();
        else if (a == "--warmup-steps") o.warmup_steps = int(parse_int(a, value(), 0, 1 << 30));
        else if (a == "--weight-decay") o.weight_decay = float(parse_real(a, value()));
        else if (a == "--clip") o.clip = float(parse_real(a, value()));
        else if (a == "--seed") o.seed = uint64_t(parse_int(a, value(), 0, (1LL << 62)));
        else if (a == "--log-every") o.log_every = int(parse_int(a, value(), 1, 1 << 30));
        else if (a == "--eval-every") o.eval_every = int(parse_int(a, value(), 0, 1 << 30));
        else if (a == "--sample") o.sample = int(parse_int(a, value(), 0, 1000));
        else if (a == "--train-on-prompt") o.train_on_prompt = true;
        else if (a == "--chat-template") o.chat_template = true;
        else if (a == "--pack") o.pack = true;
        else if (a == "--dry-run") o.dry_run = true;
        else if (a == "--zero-stage") o.zero.stage = int(parse_int(a, value(), 0, 3));
        else if (a == "--offload") o.zero.offload = true;
        else if (a == "--checkpoint-activations") o.checkpoint_activations = true;
        else if (a == "--keep-gathered") o.zero.keep_gathered = true;
        else if (a == "--save-every") o.save_every = int(parse_int(a, value(), 1, 1 << 30));
        else if (a == "--resume") o.resume = (i + 1 < args.size() && args[i + 1].rfind("--", 0) != 0) ? args[++i] : "auto";
        else fail("unknown option " + a + " (see ./train --help)");
    }
    if (!o.config_file.empty()) apply_config(o.config_file, o, world);
    check_zero_options(o.zero, o.config_file.empty() ? "--zero-stage" : o.config_file);
    if (!o.model.empty() && !o.preset.empty()) fail("--model and --preset exclude each other");
    if (o.steps && o.epochs) fail("--steps and --epochs exclude each other");
    if (o.eval_fraction != 0 && !(o.eval_fraction > 0 && o.eval_fraction < 1))
        fail("--eval-fraction must be in (0, 1), not " + std::to_string(o.eval_fraction));
    if (o.eval_fraction != 0 && !o.eval_data.empty()) fail("--eval-fraction and --eval-data exclude each other");
    if (!(o.lr > 0)) fail("--lr must be positive");
    if (o.weight_decay < 0) fail("--weight-decay must be >= 0");
    if (o.clip < 0) fail("--clip must be >= 0");
    if (o.lora_rank > 0 && !(o.lora_alpha > 0)) fail("--lora-alpha must be positive");
    if (!o.model.empty() && !exists(o.model + "/config.json")) fail("--model " + o.model + ": no config.json there");
    if (!o.adapter.empty() && !exists(o.adapter + "/adapter_config.json")) fail("--adapter " + o.adapter + ": no adapter_config.json there");
    if (!o.preset.empty()) preset_config(o.preset);  // fails on an unknown name
    Schedule s;
    s.kind = o.schedule, s.lr = o.lr, s.warmup_steps = std::max(0, o.warmup_steps);
    check_schedule(s, "--lr-schedule");
    if (o.tokenizer.empty()) o.tokenizer = default_path("data/tokenizer.json");
    if (o.data.empty()) {
        o.data = default_path("data/qa_train.jsonl");
        if (o.eval_data.empty() && o.eval_fraction == 0) o.eval_data = default_path("data/qa_eval.jsonl");
    }
    return o;
}

Tokenizer load_tokenizer(const std::string& path) {
    if (!exists(path)) fail("tokenizer " + path + " not found (run `make` to prepare data/, or pass --tokenizer PATH)");
    return Tokenizer::load(path);
}

std::string thousands(int64_t n) {
    std::string s = std::to_string(n);
    for (int i = int(s.size()) - 3; i > (n < 0 ? 1 : 0); i -= 3) s.insert(size_t(i), ",");
    return s;
}

void print_data_summary(const char* role, const Dataset& d) {
    const DataStats& s = d.stats;
    std::printf("data: %-5s %s: %s rows, %s tokens (%s take loss), %s rows truncated (%s tokens cut)", role, d.source.c_str(),
                thousands(int64_t(d.rows.size())).c_str(), thousands(s.tokens).c_str(), thousands(s.target_tokens).c_str(),
                thousands(s.truncated_rows).c_str(), thousands(s.truncated_tokens).c_str());
    if (s.rows_without_targets) std::printf(", %s rows with no answer left", thousands(s.rows_without_targets).c_str());
    std::printf("\n");
}

int run_tokenize(const std::vector<std::string>& args) {
    std::string path;
    for (size_t i = 0; i < args.size(); ++i) {
        if (args[i] == "--tokenizer" && i + 1 < args.size()) path = args[++i];
        else if (args[i] == "--tokenizer") fail("--tokenizer needs a value");
        else fail("unknown option " + args[i] + " for tokenize (usage: ./train tokenize [--tokenizer PATH])");
    }
    Tokenizer tok = load_tokenizer(path.empty() ? default_path("data/tokenizer.json") : path);
    std::string text((std::istreambuf_iterator<char>(std::cin)), std::istreambuf_iterator<char>());
    std::vector<int32_t> ids = tok.encode(text);
    std::string line;
    for (size_t i = 0; i < ids.size(); ++i) line += (i ? " " : "") + std::to_string(ids[i]);
    std::printf("%s\n", line.c_str());
    return 0;
}

// ================================================================================================ run

// Model FLOPs per trained token (forward + backward), as the PaLM paper counts them: 6 N for full
// fine-tuning (N = parameters that take part in products: all but the embedding lookup), 4 N + 6 N_lora
// when the base is frozen (no weight gradients), plus attention's 12 L H Dh T (4 forward, 8 backward);
// activation checkpointing adds one more forward (2 N + 4 L H Dh T), counted as work done.
double flops_per_token(const LlamaConfig& c, int64_t lora_params, int T, bool recompute) {
    double N = double(c.num_parameters()) - (c.tie_word_embeddings ? 0.0 : double(c.vocab_size) * c.hidden_size);
    double attention = 4.0 * c.num_hidden_layers * c.num_attention_heads * c.head_dim * double(T);
    double f = (lora_params > 0 ? 4 * N + 6.0 * double(lora_params) : 6 * N) + 3 * attention;
    return recompute ? f + 2 * N + attention : f;
}

double gpu_peak_flops() {  // dense bf16 tensor-core peak, for MFU
    cudaDeviceProp p;
    check_cuda(cudaGetDeviceProperties(&p, 0), "cudaGetDeviceProperties");
    std::string name = p.name;
    if (name.find("H100") != std::string::npos || name.find("H200") != std::string::npos) return 989e12;
    if (name.find("A100") != std::string::npos) return 312e12;
    return 0;
}

double gpu_used_gib() {
    size_t free_b = 0, total = 0;
    check_cuda(cudaMemGetInfo(&free_b, &total), "cudaMemGetInfo");
    return double(total - free_b) / (1 << 30);
}

double gib(double bytes) { return bytes / double(1 << 30); }

struct RunResult {
    double final_loss = NAN, tokens_per_s = 0, samples_per_s = 0, tflops = 0, peak_gib = 0, mean_gib = 0,
           min_gib = 1e30;
    int64_t steps = 0, steps_per_epoch = 0;
    std::vector<double> eval_losses;
};

// Everything a training run uses on the GPU.
struct Session {
    const Options& o;
    const World& w;
    cudaStream_t stream;
    ZeroStore& store;
    LlamaModel& model;
    int32_t *ids, *labels;
};

void run_batch(Session& s, const Batch& b, bool backward, float divisor) {
    check_cuda(cudaMemcpyAsync(s.ids, b.ids.data(), b.ids.size() * 4, cudaMemcpyHostToDevice, s.stream), "copy batch");
    check_cuda(cudaMemcpyAsync(s.labels, b.labels.data(), b.labels.size() * 4, cudaMemcpyHostToDevice, s.stream), "copy batch");
    DeviceBatch d{b.B, b.T, s.ids, s.labels};
    if (backward) s.model.forward_backward(d, s.store, divisor);
    else s.model.forward(d, s.store);
}

double read_loss_sum(Session& s) {  // this rank's summed CE since the last read
    float v = 0;
    check_cuda(cudaMemcpyAsync(&v, s.model.loss_sum(), 4, cudaMemcpyDeviceToHost, s.stream), "copy loss");
    check_cuda(cudaMemsetAsync(s.model.loss_sum(), 0, 4, s.stream), "memset");
    world_wait(s.w, s.stream);
    return v;
}

// Mean CE over the eval set's target tokens (forward only; each rank takes its shard).
double evaluate(Session& s, const Dataset& eval, int32_t pad) {
    Loader loader(eval, s.o.micro_batch, s.o.seq, s.w.rank, s.w.size, s.o.seed, false, pad);
    double targets = 0;
    read_loss_sum(s);
    for (int64_t i = 0; i < loader.micro_batches_per_epoch(); ++i) {
        Batch b = loader.batch(0, i);
        targets += double(b.target_tokens);
        run_batch(s, b, false, 1.0f);
        check_cuda(cudaStreamSynchronize(s.stream), "eval");  // the host batch must outlive its copy
    }
    double loss = world_sum(s.w, read_loss_sum(s)), all = world_sum(s.w, targets);
    return all > 0 ? loss / all : NAN;
}

std::string checkpoint_root(const Options& o) { return o.out + "/checkpoints"; }

// OUT/checkpoints/step-N/ (ZeRO state by name + trainer.json), then `latest` names it (atomic rename).
void save_checkpoint(Session& s, int64_t step, int64_t micro) {
    std::string root = checkpoint_root(s.o), name = "step-" + std::to_string(step), dir = root + "/" + name;
    if (s.w.rank == 0) mkdir(root.c_str(), 0755);
    world_barrier(s.w);
    s.store.save_checkpoint(dir);
    if (s.w.rank != 0) return;
    FILE* f = std::fopen((dir + "/trainer.json").c_str(), "w");
    if (!f) fail("cannot write " + dir + "/trainer.json");
    std::fprintf(f, "{\"step\": %lld, \"micro_batches\": %lld, \"seed\": %llu}\n", (long long)step, (long long)micro,
                 (unsigned long long)s.o.seed);
    std::fclose(f);
    f = std::fopen((root + "/latest.tmp").c_str(), "w");
    if (!f) fail("cannot write " + root + "/latest.tmp");
    std::fprintf(f, "%s\n", name.c_str());
    std::fclose(f);
    if (std::rename((root + "/latest.tmp").c_str(), (root + "/latest").c_str()) != 0) fail("cannot write " + root + "/latest");
    std::printf("checkpoint: %s\n", dir.c_str());
}

// The checkpoint to resume from: --resume DIR, or the one OUT/checkpoints/latest names. A damaged one is
// refused with the last good one named.
std::string resume_dir(const Options& o) {
    if (o.resume.empty()) return "";
    std::string root = checkpoint_root(o), dir = o.resume;
    if (dir == "auto") {
        std::string latest = root + "/latest";
        if (!exists(latest)) return "";
        std::string name = read_file(latest);
        dir = root + "/" + name.substr(0, name.find('\n'));
    }
    auto good = [](const std::string& d) { return exists(d + "/zero.json") && exists(d + "/trainer.json"); };
    if (!good(dir)) {
        std::string best;
        long long best_step = -1;
        if (DIR* d = opendir(root.c_str())) {
            while (dirent* e = readdir(d)) {
                std::string n = e->d_name;
                if (n.rfind("step-", 0) == 0 && good(root + "/" + n) && std::atoll(n.c_str() + 5) > best_step)
                    best_step = std::atoll(n.c_str() + 5), best = root + "/" + n;
            }
            closedir(d);
        }
        fail("checkpoint " + dir + " is incomplete or damaged" + (best.empty() ? "" : "; the last good one is " + best + " (--resume " + best + ")"));
    }
    return dir;
}

RunResult train(const Options& o, const World& w, const LlamaConfig& c, const Tokenizer& tok, const Dataset& train_set,
                const Dataset& eval_set, const LoraConfig& lora, const std::vector<std::vector<float>>& adapter,
                const std::string& base_name, const std::string& resume) {
    bool chief = w.rank == 0;
    cudaStream_t stream;
    check_cuda(cudaStreamCreate(&stream), "cudaStreamCreate");
    RunResult res;
    int B = o.micro_batch, T = o.seq;
    int32_t pad = tok.special_id("<|end_of_text|>");
    Loader loader(train_set, B, T, w.rank, w.size, o.seed, true, pad);
    int64_t mb_per_epoch = loader.micro_batches_per_epoch();
    res.steps_per_epoch = std::max<int64_t>(1, mb_per_epoch / o.grad_accum);
    int64_t total = o.steps ? o.steps : res.steps_per_epoch * std::max(1, o.epochs);
    res.steps = total;
    Schedule sched;
    sched.kind = o.schedule, sched.lr = o.lr, sched.total_steps = int(total), sched.warmup_min_lr = o.warmup_min_lr;
    sched.min_ratio = o.min_ratio;
    sched.warmup_steps = o.warmup_steps >= 0 ? o.warmup_steps : int(std::ceil(0.03 * double(total)));
    AdamWConfig adam;
    adam.beta1 = o.beta1, adam.beta2 = o.beta2, adam.eps = o.eps, adam.weight_decay = o.weight_decay;

    MemoryReport est = ZeroStore::estimate(c, lora, o.zero, w.size);
    double t0 = wall_seconds();
    ZeroStore store(c, lora, o.zero, w, stream);
    if (!o.model.empty()) store.load(o.model);
    else store.init_random(o.seed);
    if (lora.rank > 0) {
        if (!adapter.empty()) store.set_lora(adapter);
        else store.init_lora(o.seed);
    }
    LlamaModel model(c, lora.rank, lora.scale(), B, T, stream, o.checkpoint_activations);
    int32_t *d_ids = device_alloc<int32_t>(size_t(B) * T, "batch"), *d_labels = device_alloc<int32_t>(size_t(B) * T, "batch");
    Session s{o, w, stream, store, model, d_ids, d_labels};
    int64_t start_step = 0, micro = 0;
    if (const std::string& dir = resume; !dir.empty()) {
        store.load_checkpoint(dir);
        Json t = read_json_file(dir + "/trainer.json");
        start_step = t.find("step")->integer, micro = t.find("micro_batches")->integer;
        if (chief) std::printf("resume: %s (step %lld of %lld)\n", dir.c_str(), (long long)start_step, (long long)total);
    }
    double fpt = flops_per_token(c, lora.rank ? store.trainable_numel() : 0, T, o.checkpoint_activations), peak = gpu_peak_flops();
    MemoryReport got = store.memory();
    if (chief) {
        std::printf("model: %s, %s parameters (%s trainable%s); load %.1f s\n", c.name.c_str(), thousands(c.num_parameters()).c_str(),
                    thousands(store.trainable_numel()).c_str(), lora.rank ? (", LoRA r=" + std::to_string(lora.rank)).c_str() : ", full",
                    wall_seconds() - t0);
        std::printf("partition: %d units (embedding, %d layers, final norm), each split into %d shard%s%s\n", num_units(c),
                    c.num_hidden_layers, w.size, w.size > 1 ? "s" : "",
                    o.zero.stage == 3 ? "; units up to stage3_param_persistence_threshold elements stay replicated" : "");
        std::printf("memory per rank (GiB), ZeRO estimate -> allocated: weights %.2f -> %.2f, gathered %.2f -> %.2f, "
                    "master %.2f -> %.2f, grads %.2f -> %.2f (+%.2f buffers), moments %.2f -> %.2f, CPU %.2f -> %.2f; "
                    "activations %.2f; GPU in use %.2f\n",
                    gib(est.base), gib(got.base), gib(est.gathered), gib(got.gathered), gib(est.master), gib(got.master), gib(est.grads),
                    gib(got.grads), gib(got.grad_buffers), gib(est.moments), gib(got.moments), gib(est.host), gib(got.host),
                    gib(double(model.activation_bytes())), gpu_used_gib());
        std::printf("plan: %lld steps x %d micro-batches x %d rows x %d tokens x %d GPUs; %lld steps per epoch; lr %.3g %s (warmup %d)\n",
                    (long long)total, o.grad_accum, B, T, w.size, (long long)res.steps_per_epoch, o.lr, o.schedule.c_str(), sched.warmup_steps);
    }
    mkdir(o.out.c_str(), 0755);
    world_barrier(w);
    FILE* csv = chief ? std::fopen((o.out + "/train_log.csv").c_str(), start_step ? "a" : "w") : nullptr;
    if (chief && !csv) fail("cannot write " + o.out + "/train_log.csv");
    if (csv && !start_step) std::fprintf(csv, "step,epoch,loss,lr,grad_norm,tokens_per_s,tflops,step_ms,gpu_gib,peak_gib,eval_loss\n");
    FILE* mem_csv = std::fopen((o.out + "/memory_rank" + std::to_string(w.rank) + ".csv").c_str(), start_step ? "a" : "w");
    if (!mem_csv) fail("cannot write " + o.out + "/memory_rank" + std::to_string(w.rank) + ".csv");
    if (!start_step) std::fprintf(mem_csv, "step,seconds,gpu_used_gib\n");

    cudaEvent_t ev0, ev1;
    check_cuda(cudaEventCreate(&ev0), "event");
    check_cuda(cudaEventCreate(&ev1), "event");
    double window_loss = 0, window_targets = 0, total_ms = 0, logged = 0, last_loss = NAN, norm_sq = 0;
    int64_t window_steps = 0, timed_steps = 0;
    check_cuda(cudaEventRecord(ev0, stream), "event");
    double train_start = wall_seconds();
    for (int64_t step = start_step + 1; step <= total; ++step) {
        std::vector<Batch> batches;
        double targets = 0;
        for (int a = 0; a < o.grad_accum; ++a, ++micro) {
            batches.push_back(loader.batch(micro / mb_per_epoch, micro % mb_per_epoch));
            targets += double(batches.back().target_tokens);
        }
        targets = world_sum(w, targets);  // the loss is the mean over every rank's target tokens
        store.begin_step();
        for (size_t a = 0; a < batches.size(); ++a) {
            store.begin_micro_batch(a + 1 == batches.size());
            run_batch(s, batches[a], true, float(std::max(1.0, targets)));
        }
        float lr = sched.lr_at(int(step - 1));
        store.step(adam, lr, int(step), o.clip);
        float host_norm = 0;
        check_cuda(cudaMemcpyAsync(&host_norm, store.grad_norm_sq(), 4, cudaMemcpyDeviceToHost, stream), "copy norm");
        double loss_sum = world_sum(w, read_loss_sum(s));  // syncs: the host batches must outlive their copies
        norm_sq = host_norm;
        double loss = targets > 0 ? loss_sum / targets : 0.0;
        if (!std::isfinite(loss) || !std::isfinite(norm_sq))
            fail("loss is " + std::to_string(loss) + " at step " + std::to_string(step) + " (lower --lr, or check the data)");
        window_loss += loss_sum, window_targets += targets, ++window_steps;
        last_loss = loss;
        bool epoch_end = step % res.steps_per_epoch == 0;
        bool do_eval = !eval_set.rows.empty() && ((o.eval_every && step % o.eval_every == 0) || (!o.eval_every && epoch_end) || step == total);
        bool do_save = (o.save_every && step % o.save_every == 0) || (o.save_every && step == total);
        bool do_log = step % o.log_every == 0 || step == total || do_eval;
        if (do_log) {
            check_cuda(cudaEventRecord(ev1, stream), "event");
            check_cuda(cudaEventSynchronize(ev1), "event");
            float ms = 0;
            check_cuda(cudaEventElapsedTime(&ms, ev0, ev1), "event");
            total_ms += ms, timed_steps += window_steps;
            double tok = double(window_steps) * o.grad_accum * B * T, tps = tok / (ms / 1e3), tf = tps * fpt / 1e12;
            double used = gpu_used_gib();
            res.peak_gib = std::max(res.peak_gib, used), res.min_gib = std::min(res.min_gib, used), res.mean_gib += used, ++logged;
            std::fprintf(mem_csv, "%lld,%.2f,%.3f\n", (long long)step, wall_seconds() - train_start, used);
            double eval_loss = NAN;
            if (do_eval) {
                eval_loss = evaluate(s, eval_set, pad);
                res.eval_losses.push_back(eval_loss);
            }
            double wloss = window_loss / std::max(1.0, window_targets);
            if (chief) {
                std::printf("step %6lld/%lld  epoch %5.2f  loss %.4f  lr %.3e  grad-norm %.3f  %8.0f tok/s/GPU  %6.1f TFLOP/s", (long long)step,
                            (long long)total, double(step) / double(res.steps_per_epoch), wloss, lr, std::sqrt(norm_sq), tps, tf);
                if (peak > 0) std::printf("  MFU %4.1f%%", 100 * tf * 1e12 / peak);
                std::printf("  %6.1f ms/step  GPU %.1f GiB (peak %.1f)", ms / double(window_steps), used, res.peak_gib);
                if (do_eval) std::printf("  eval-loss %.4f", eval_loss);
                std::printf("\n");
                std::fflush(stdout);
                std::fprintf(csv, "%lld,%.4f,%.6f,%.6e,%.6f,%.1f,%.2f,%.2f,%.3f,%.3f,%s\n", (long long)step,
                             double(step) / double(res.steps_per_epoch), wloss, lr, std::sqrt(norm_sq), tps, tf, ms / double(window_steps),
                             used, res.peak_gib, std::isnan(eval_loss) ? "" : std::to_string(eval_loss).c_str());
                std::fflush(csv);
            }
            window_loss = window_targets = 0, window_steps = 0;
        }
        if (do_save) save_checkpoint(s, step, micro);
        if (do_log || do_save) check_cuda(cudaEventRecord(ev0, stream), "event");
    }
    double train_s = wall_seconds() - train_start;
    if (csv) std::fclose(csv);
    std::fclose(mem_csv);
    res.final_loss = last_loss;
    double timed_s = total_ms > 0 ? total_ms / 1e3 : train_s;  // GPU time of the steps, evaluation excluded
    res.tokens_per_s = double(timed_steps) * o.grad_accum * B * T / timed_s;
    res.samples_per_s = double(timed_steps) * o.grad_accum * B / timed_s;
    res.tflops = res.tokens_per_s * fpt / 1e12;
    res.mean_gib = logged > 0 ? res.mean_gib / logged : 0;

    // Save: the adapter in PEFT's format, or the whole model in HF's (collective; rank 0 writes).
    if (lora.rank > 0) {
        std::vector<std::vector<float>> layers = store.lora_layers();
        if (chief) {
            save_peft_adapter(o.out + "/adapter", c, lora, layers, base_name);
            std::printf("saved: %s/adapter (PEFT: adapter_config.json + adapter_model.safetensors)\n", o.out.c_str());
        }
    } else {
        store.save_hf(o.out + "/model");
        if (chief) std::printf("saved: %s/model (HF: config.json + model.safetensors)\n", o.out.c_str());
    }

    // Sample answers: the prompt part of a few eval rows (labels -100), answered greedily. Every rank
    // generates (stage 3 gathers are collective); rank 0 prints.
    if (o.sample > 0 && !eval_set.rows.empty()) {
        Generator gen(c, lora.rank, lora.scale(), std::min(T + 64, 4096), stream);
        int shown = 0;
        for (const Example& ex : eval_set.rows) {
            if (shown >= o.sample) break;
            size_t p = 0;
            while (p < ex.labels.size() && ex.labels[p] == kIgnoreIndex) ++p;
            if (p == 0 || p >= ex.ids.size()) continue;
            std::vector<int32_t> prompt(ex.ids.begin(), ex.ids.begin() + long(p));
            std::vector<int32_t> out = gen.generate(store, prompt, 48, 0.0f, 1.0f, o.seed);
            std::vector<int32_t> answer(out.begin() + long(p), out.end()), ref(ex.ids.begin() + long(p), ex.ids.end());
            auto strip = [&](std::vector<int32_t> v) {
                while (!v.empty() && v.back() >= 128000) v.pop_back();
                return tok.decode(v);
            };
            if (chief)
                std::printf("sample %d\n  prompt:    %s\n  model:     %s\n  reference: %s\n", shown + 1, strip(prompt).c_str(),
                            strip(answer).c_str(), strip(ref).c_str());
            ++shown;
        }
    }
    if (chief) {
        MemoryReport m = store.memory();
        std::printf("memory per rank at the end (GiB): weights %.2f, gathered %.2f, master %.2f, grads %.2f (+%.2f buffers), "
                    "moments %.2f, CPU %.2f, activations %.2f, GPU peak in use %.2f\n",
                    gib(m.base), gib(m.gathered), gib(m.master), gib(m.grads), gib(m.grad_buffers), gib(m.moments), gib(m.host),
                    gib(double(model.activation_bytes())), res.peak_gib);
    }
    cudaFree(d_ids), cudaFree(d_labels);
    cudaEventDestroy(ev0), cudaEventDestroy(ev1);
    cudaStreamDestroy(stream);
    return res;
}

void print_summary(const RunResult& r, const std::string& title) {
    std::printf("\n%s\n| metric | value |\n|---|---|\n", title.c_str());
    std::printf("| final train loss | %.4f |\n", r.final_loss);
    for (size_t i = 0; i < r.eval_losses.size(); ++i) std::printf("| eval loss %zu | %.4f |\n", i + 1, r.eval_losses[i]);
    std::printf("| steps (per epoch) | %lld (%lld) |\n", (long long)r.steps, (long long)r.steps_per_epoch);
    std::printf("| samples/s per GPU | %.1f |\n| tokens/s per GPU | %.0f |\n| TFLOP/s per GPU | %.1f |\n", r.samples_per_s, r.tokens_per_s, r.tflops);
    std::printf("| GPU memory peak / mean / min | %.2f / %.2f / %.2f GiB |\n\n", r.peak_gib, r.mean_gib, r.min_gib);
}

// Checks everything that can be checked without a GPU, then trains.
RunResult run_job(Options o, World& w, const std::string& title) {
    bool chief = w.rank == 0;
    Tokenizer tok = load_tokenizer(o.tokenizer);
    LlamaConfig c = !o.model.empty() ? load_config(o.model + "/config.json") : preset_config(o.preset.empty() ? "tiny" : o.preset);
    if (o.seq > c.max_position_embeddings)
        fail("--seq " + std::to_string(o.seq) + " exceeds the model's max_position_embeddings (" + std::to_string(c.max_position_embeddings) + ")");
    if (c.vocab_size < tok.vocab_size())
        fail("the tokenizer has " + std::to_string(tok.vocab_size()) + " ids but the model's vocab_size is " + std::to_string(c.vocab_size));
    LoraConfig lora;
    std::vector<std::vector<float>> adapter;
    if (!o.adapter.empty()) {
        load_peft_adapter(o.adapter, c, lora, adapter);
    } else {
        lora.rank = o.lora_rank, lora.alpha = o.lora_alpha;
        parse_lora_targets(o.lora_targets, lora, "--lora-targets");
    }
    if (!o.model.empty()) SafetensorsReader check(o.model);  // headers and sizes, before the GPU
    DataOptions dopt;
    dopt.seq_len = o.seq, dopt.train_on_prompt = o.train_on_prompt, dopt.chat_template = o.chat_template, dopt.pack = o.pack;
    Dataset train_set = load_dataset(o.data, tok, dopt);
    Dataset eval_set;
    if (o.eval_fraction > 0) eval_set = split_eval(train_set, o.eval_fraction, o.seed);
    else if (!o.eval_data.empty()) eval_set = load_dataset(o.eval_data, tok, dopt);
    if (chief) {
        print_data_summary("train", train_set);
        if (!eval_set.rows.empty()) print_data_summary("eval", eval_set);
    }
    std::string resume = resume_dir(o);
    if (!resume.empty()) {  // the checkpoint must belong to this model and LoRA setup
        Json meta = read_json_file(resume + "/zero.json");
        const Json* model = meta.find("model");
        if (!model || !model->is_string() || model->string != config_json(c))
            fail("checkpoint " + resume + " is from another model (its config differs from this run's)");
    }
    if (o.dry_run) {
        if (chief) std::printf("dry run: inputs are valid (model %s, %s parameters)\n", c.name.c_str(), thousands(c.num_parameters()).c_str());
        return RunResult();
    }
    if (!w.nccl) {
        world_start_gpu(w);
        cudaDeviceProp p;
        check_cuda(cudaGetDeviceProperties(&p, w.local_rank), "cudaGetDeviceProperties");
        if (chief)
            std::printf("world: %d rank%s on %d node%s, %s; ZeRO stage %d%s%s\n", w.size, w.size > 1 ? "s" : "", w.nodes,
                        w.nodes > 1 ? "s" : "", p.name, o.zero.stage, o.zero.offload ? " + CPU optimizer offload" : "",
                        o.checkpoint_activations ? " + activation checkpointing" : "");
    }
    RunResult r = train(o, w, c, tok, train_set, eval_set, lora, adapter, o.model.empty() ? c.name : o.model, resume);
    if (chief) print_summary(r, title);
    return r;
}

// The default job: pretrain `tiny` on the corpus once (data/base), then LoRA on the QA set.
int run_default(const Options& defaults, World& w) {
    std::string base = default_path("data/base");
    if (!exists(base + "/model.safetensors")) {
        if (w.rank == 0) std::printf("== default job, part 1: pretraining the tiny preset on data/corpus (full fine-tuning from random init)\n");
        Options p = defaults;
        p.preset = "tiny", p.data = default_path("data/corpus"), p.eval_data.clear(), p.eval_fraction = 0.05;
        p.lora_rank = 0, p.seq = 256, p.micro_batch = 32, p.epochs = 12, p.lr = 2e-3f, p.weight_decay = 0.01f, p.sample = 0;
        p.out = base + ".part", p.log_every = 25, p.resume.clear(), p.save_every = 0;
        run_job(p, w, "pretraining summary");
        world_barrier(w);
        std::string tmp = base + ".part/model";
        if (w.rank == 0 && std::rename(tmp.c_str(), base.c_str()) != 0) fail("cannot move " + tmp + " to " + base);
        world_barrier(w);
        if (w.rank == 0) std::printf("saved the pretrained base model to %s (HF format); later runs start from it\n", base.c_str());
    }
    if (w.rank == 0) std::printf("== default job, part 2: LoRA fine-tuning %s on the WordNet QA set\n", base.c_str());
    Options f = defaults;
    f.model = base, f.seq = 128, f.micro_batch = 32 / std::min(w.size, 32), f.epochs = 2, f.lr = 1e-3f, f.log_every = 50;
    run_job(f, w, "fine-tuning summary");
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    World w;
    try {
        std::vector<std::string> args(argv + 1, argv + argc);
        for (const std::string& a : args)
            if (a == "-h" || a == "--help") { std::fputs(kUsage, stdout); return 0; }
        if (!args.empty() && args[0] == "tokenize") return run_tokenize({args.begin() + 1, args.end()});
        w = world_init(&argc, &argv);
        Options o = parse_options(args, w.size);
        std::string signature;
        for (const std::string& a : args) signature += a + "\n";
        world_check_same(w, signature, "the command-line options");
        bool default_job = o.model.empty() && o.preset.empty() && o.given.count("--data") == 0 && o.adapter.empty();
        if (default_job && !o.dry_run) run_default(o, w);
        else run_job(o, w, "run summary");
        world_finalize(w);
        return 0;
    } catch (const Error& e) {
        exit_with_error(e.what());
    }
}
