// support/options.cpp — the command line and the DeepSpeed config reader (options.h).
#include "support/options.h"

#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "adamw.h"
#include "support/cuda_calls.h"
#include "support/json.h"
#include "support/llama_config.h"

const char* kUsage = R"(usage: ./train [OPTIONS]
       ./train tokenize [--tokenizer PATH]
       ./train generate --model DIR [--adapter DIR] [OPTIONS] [PROMPT ...]

Fine-tunes a Llama model with LoRA (or all weights). With no options it runs the default job: it
pretrains the `tiny` preset on data/corpus once (saved to data/base), then LoRA-fine-tunes it on the
WordNet QA set, evaluates, prints sample answers and writes the adapter to out/.

Model:
  --model DIR            HF model directory (config.json + model.safetensors[.index.json])
  --preset NAME          random init of a named shape instead: tiny, llama-3.2-1b, llama-2-7b, llama-2-13b
  --adapter DIR          start from a PEFT LoRA adapter (its r, alpha and targets are used)
LoRA:
  --lora-rank N          adapter rank; 0 = full fine-tuning of every weight (default 16)
  --lora-alpha A         scale = alpha / rank (default 32)
  --lora-targets LIST    comma list of q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj or all (default all)
  --lora-dropout P       PEFT's lora_dropout: dropout on each adapter's input while training (default 0;
                         an --adapter's own value unless given)
Data:
  --tokenizer PATH       HF tokenizer.json (default: the model directory's, or for a preset data/tokenizer.json;
                         data/llama2_tokenizer.json for the llama-2 presets)
  --data PATH[,PATH..]   training data: .jsonl rows {"text"}, {"question","answer"[,"context"]},
                         {"prompt","completion"} or {"input_ids"[,"labels"]}; or plain text (a file or a
                         directory, packed). Default: data/qa_train.jsonl
  --eval-data PATH       evaluation data, same forms (default: data/qa_eval.jsonl with the default data)
  --eval-fraction F      split this fraction of --data off for evaluation instead (0 < F < 1)
  --seq N                sequence length (default 1024); longer rows are truncated and counted
  --train-on-prompt      loss on every token, not only the answer/completion and EOS
  --chat-template        wrap question/answer and prompt/completion rows in the Llama-3 chat template
  --no-pack              one JSONL row per sequence, padded (default: rows packed whole into sequences of
                         --seq tokens, best fit, attention and positions kept inside each row; --pack
                         says so explicitly)
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
  --copy-gathers         stage 3 on one rank: gather each layer into a buffer as N ranks do (by default
                         one rank reads its shard, the whole layer, in place)
  --save-every N         write a checkpoint every N steps (and at the end) under OUT/checkpoints
  --resume [DIR]         continue from a checkpoint (default: OUT/checkpoints/latest); any GPU count or stage
  --comm nccl|mpi|auto   the collectives' transport: NCCL (one rank per GPU), or MPI through host memory
                         (ranks sharing a GPU; for learning and testing); auto picks MPI only when ranks
                         share a GPU (default auto)
Output:
  --out DIR              where the adapter (or model), train_log.csv and eval results go (default out)
  --log-every N          print a progress line every N steps (default 10)
  --eval-every N         evaluate every N steps (default: at the end of each epoch)
  --sample N             after training, answer N eval prompts next to the reference (default 3)
  --score-answers        answer every eval question greedily before and after training; print the mean
                         token F1 and exact match against the reference answers (SQuAD-style)
  --profile N            after 2 warm-up steps, time N steps by kernel family (GEMMs, LoRA, attention, norms,
                         ...) and print each family's milliseconds beside its floor on this GPU (bench/PROFILE.md)
  --dry-run              check every input, print the memory estimate per rank, and stop before the GPU
  -h, --help             this text

Subcommands:
  tokenize               read UTF-8 text on stdin, print its token ids on one line (no BOS);
                         special-token strings such as <|eot_id|> become their ids
  generate               answer prompts with a model (and adapter): ./train generate --help
)";

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

namespace {

struct ConfigReader {  // one DeepSpeed config file being applied to the options
    const std::string& path;
    Options& o;
    std::vector<std::string> unknown;

    bool unset(const char* flag) const { return !o.given.count(flag); }  // flags on the command line win
    const Json* number(const Json& v, const std::string& key) const {  // null for "auto"
        if (v.is_string() && v.string == "auto") return nullptr;
        if (v.type != Json::Number) fail(path + ": \"" + key + "\" must be a number");
        return &v;
    }
    void optimizer(const Json& v);
    void scheduler(const Json& v);
    void zero_optimization(const Json& v);
};

void ConfigReader::optimizer(const Json& v) {
    const Json* type = v.find("type");
    std::string t = type && type->is_string() ? type->string : "";
    if (t != "AdamW" && t != "Adam" && t != "adamw" && t != "adam") fail(path + ": optimizer.type \"" + t + "\" is not supported (AdamW)");
    const Json* p = v.find("params");
    if (!p) return;
    for (const auto& [pk, pv] : p->object) {
        if (pk == "lr") { if (const Json* n = number(pv, "optimizer.params.lr"); n && unset("--lr")) o.lr = float(n->number); }
        else if (pk == "weight_decay") { if (const Json* n = number(pv, pk); n && unset("--weight-decay")) o.weight_decay = float(n->number); }
        else if (pk == "eps") { if (const Json* n = number(pv, pk)) o.eps = float(n->number); }
        else if (pk == "betas") {
            if (pv.type != Json::Array || pv.array.size() != 2) fail(path + ": optimizer.params.betas must be [beta1, beta2]");
            o.beta1 = float(pv.array[0].number), o.beta2 = float(pv.array[1].number);
        } else if (pk != "torch_adam" && pk != "adam_w_mode") unknown.push_back("optimizer.params." + pk);
    }
}

void ConfigReader::scheduler(const Json& v) {
    const Json* type = v.find("type");
    std::string t = type && type->is_string() ? type->string : "";
    if (unset("--lr-schedule")) {
        if (t == "WarmupLR") o.schedule = "warmup";
        else if (t == "WarmupDecayLR") o.schedule = "warmup-linear";
        else if (t == "WarmupCosineLR") o.schedule = "warmup-cosine";
        else fail(path + ": scheduler.type \"" + t + "\" is not supported (WarmupLR, WarmupDecayLR, WarmupCosineLR)");
    }
    const Json* p = v.find("params");
    if (!p) return;
    for (const auto& [pk, pv] : p->object) {
        const Json* n = pv.is_string() ? nullptr : number(pv, "scheduler.params." + pk);
        if (!n) continue;
        if (pk == "warmup_num_steps" && unset("--warmup-steps")) o.warmup_steps = int(n->integer);
        else if (pk == "warmup_max_lr" && unset("--lr")) o.lr = float(n->number);
        else if (pk == "warmup_min_lr") o.warmup_min_lr = float(n->number);
        else if (pk == "total_num_steps" && unset("--steps")) o.steps = int(n->integer);
        else if (pk == "cos_min_ratio") o.min_ratio = float(n->number);
    }
}

void ConfigReader::zero_optimization(const Json& v) {
    static const std::set<std::string> accepted = {"contiguous_gradients", "allgather_partitions", "reduce_scatter",
                                                   "stage3_max_live_parameters", "stage3_max_reuse_distance",
                                                   "stage3_gather_16bit_weights_on_model_save", "sub_group_size",
                                                   "round_robin_gradients"};  // no effect here
    for (const auto& [zk, zv] : v.object) {
        auto whole = [&](int64_t lo) {
            if (!zv.is_int() || zv.integer < lo) fail(path + ": zero_optimization." + zk + " must be a whole number >= " + std::to_string(lo));
            return zv.integer;
        };
        if (zk == "stage") {
            if (!zv.is_int() || zv.integer < 0 || zv.integer > 3) fail(path + ": zero_optimization.stage must be 0, 1, 2 or 3");
            if (unset("--zero-stage")) o.zero.stage = int(zv.integer);
        } else if (zk == "offload_optimizer") {
            const Json* d = zv.find("device");
            std::string dev = d && d->is_string() ? d->string : "none";
            if (dev != "cpu" && dev != "none") fail(path + ": zero_optimization.offload_optimizer.device \"" + dev + "\" is not supported (cpu or none)");
            if (unset("--offload")) o.zero.offload = dev == "cpu";
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
        } else if (!accepted.count(zk)) {
            unknown.push_back("zero_optimization." + zk);
        }
    }
}

}  // namespace

void apply_config(const std::string& path, Options& o, int world) {
    Json j = read_json_file(path);
    if (j.type != Json::Object) fail(path + ": a DeepSpeed config must be a JSON object");
    ConfigReader r{path, o, {}};
    for (const auto& [key, v] : j.object) {
        if (key == "train_micro_batch_size_per_gpu") {
            if (const Json* n = r.number(v, key); n && r.unset("--micro-batch")) o.micro_batch = int(parse_int(path + ": " + key, std::to_string(n->integer), 1, 1 << 16));
        } else if (key == "gradient_accumulation_steps") {
            if (const Json* n = r.number(v, key); n && r.unset("--grad-accum")) o.grad_accum = int(parse_int(path + ": " + key, std::to_string(n->integer), 1, 1 << 20));
        } else if (key == "train_batch_size") {
            r.number(v, key);  // checked against micro * accum * world after all keys are read
        } else if (key == "gradient_clipping") {
            if (const Json* n = r.number(v, key); n && r.unset("--clip")) o.clip = float(n->number);
        } else if (key == "steps_per_print") {
            if (const Json* n = r.number(v, key); n && r.unset("--log-every")) o.log_every = int(std::max<int64_t>(1, n->integer));
        } else if (key == "fp16") {
            const Json* e = v.find("enabled");
            if (e && e->type == Json::Bool && e->boolean) fail(path + ": fp16 is not supported (use bf16)");
        } else if (key == "bf16") {
            const Json* e = v.find("enabled");
            if (e && e->type == Json::Bool && !e->boolean) fail(path + ": bf16.enabled = false is not supported (weights compute in bf16)");
        } else if (key == "optimizer") {
            r.optimizer(v);
        } else if (key == "scheduler") {
            r.scheduler(v);
        } else if (key == "zero_optimization") {
            r.zero_optimization(v);
        } else if (key == "activation_checkpointing") {
            if (r.unset("--checkpoint-activations")) o.checkpoint_activations = true;
        } else if (key != "wall_clock_breakdown" && key != "zero_allow_untested_optimizer" && key != "gradient_predivide_factor" &&
                   key != "prescale_gradients") {  // those are accepted with no effect
            r.unknown.push_back(key);
        }
    }
    if (!r.unknown.empty()) {
        std::string list;
        for (const auto& k : r.unknown) list += (list.empty() ? "" : ", ") + k;
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
        else if (a == "--lora-dropout") o.lora_dropout = float(parse_real(a, value()));
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
        else if (a == "--score-answers") o.score_answers = true;
        else if (a == "--profile") o.profile = int(parse_int(a, value(), 1, 1 << 20));
        else if (a == "--train-on-prompt") o.train_on_prompt = true;
        else if (a == "--chat-template") o.chat_template = true;
        else if (a == "--pack") o.pack = true;
        else if (a == "--no-pack") o.pack = false;
        else if (a == "--dry-run") o.dry_run = true;
        else if (a == "--zero-stage") o.zero.stage = int(parse_int(a, value(), 0, 3));
        else if (a == "--offload") o.zero.offload = true;
        else if (a == "--checkpoint-activations") o.checkpoint_activations = true;
        else if (a == "--keep-gathered") o.zero.keep_gathered = true;
        else if (a == "--copy-gathers") o.zero.copy_gathers = true;
        else if (a == "--comm") o.comm = parse_transport(value(), a);
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
    if (!(o.lora_dropout >= 0 && o.lora_dropout < 1)) fail("--lora-dropout must be in [0, 1)");
    if (!o.model.empty() && !exists(o.model + "/config.json")) fail("--model " + o.model + ": no config.json there");
    if (!o.adapter.empty() && !exists(o.adapter + "/adapter_config.json")) fail("--adapter " + o.adapter + ": no adapter_config.json there");
    if (!o.preset.empty()) preset_config(o.preset);  // fails on an unknown name
    Schedule s;
    s.kind = o.schedule, s.lr = o.lr, s.warmup_steps = std::max(0, o.warmup_steps);
    check_schedule(s, "--lr-schedule");
    bool llama2 = o.preset.rfind("llama-2-", 0) == 0;  // the Llama-2 shapes take the Llama-2 vocabulary
    if (o.tokenizer.empty()) o.tokenizer = default_path(llama2 ? "data/llama2_tokenizer.json" : "data/tokenizer.json");
    if (o.data.empty()) {
        o.data = default_path("data/qa_train.jsonl");
        if (o.eval_data.empty() && o.eval_fraction == 0) o.eval_data = default_path("data/qa_eval.jsonl");
    }
    return o;
}

