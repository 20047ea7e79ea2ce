// support/options.cpp — the command line (options.h); the DeepSpeed config reader is deepspeed_config.cpp.
#include "support/options.h"

#include <limits.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "adamw.h"
#include "support/cuda_calls.h"
#include "support/json.h"
#include "support/llama_config.h"

const char* kUsage = R"(usage: ./train [OPTIONS]
       ./train tokenize [--tokenizer PATH]
       ./train generate --model DIR [--adapter DIR] [OPTIONS] [PROMPT ...]

Fine-tunes a Llama or Qwen3 model with LoRA (or all weights). With no options it runs the default job: it
pretrains the `tiny` preset on data/corpus once (saved to data/base), then LoRA-fine-tunes it on the
WordNet QA set, evaluates, prints sample answers and writes the adapter to out/.

Model:
  --model DIR            HF model directory (config.json + model.safetensors[.index.json])
  --preset NAME          random init of a named shape instead: tiny, llama-3.2-1b, llama-3.1-8b, llama-3.1-70b,
                         llama-2-7b, llama-2-13b, qwen3-0.6b (with --dry-run --ranks N: will it fit?)
  --adapter DIR          start from a PEFT LoRA adapter (its r, alpha and targets are used)
LoRA:
  --lora-rank N          adapter rank; 0 = full fine-tuning of every weight (default 16)
  --lora-alpha A         scale = alpha / rank (default 32)
  --lora-targets LIST    comma list of q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj or all (default all)
  --lora-dropout P       PEFT's lora_dropout: dropout on each adapter's input while training (default 0;
                         an --adapter's own value unless given)
  --lora-layout L        plain: each adapter's products beside the base's (the default); folded: s B in padded
                         rows of the weight it adapts (q, k, v, gate, up, down), so one product makes
                         x W^T + s (x A^T) B^T (bench/PROFILE.md, "LoRA"); the same model and adapter files
Data:
  --tokenizer PATH       HF tokenizer.json (default: the model directory's, or for a preset data/tokenizer.json;
                         data/llama2_tokenizer.json for the llama-2 presets, data/qwen3_tokenizer.json for qwen3)
  --data PATH[,PATH..]   training data: .jsonl rows {"text"}, {"question","answer"[,"context"]},
                         {"prompt","completion"} or {"input_ids"[,"labels","attention_mask"]}; or plain text (a file or a
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
  --lr-schedule KIND     constant, warmup, warmup-linear, warmup-cosine (default warmup-cosine); DeepSpeed's
                         WarmupLR, WarmupDecayLR, WarmupCosineLR (log warmup; a config's scheduler sets it)
  --warmup-steps N       (default 3% of the steps)
  --weight-decay W       AdamW decoupled weight decay (default 0; norm weights never decay)
  --clip C               clip the global gradient norm to C; 0 = off (default 1.0)
  --seed N               seed for data order and initialisation (default 1234)
  --config FILE          a DeepSpeed JSON config, read as DeepSpeed and HF's Trainer read it ("auto" filled
                         from the flags and defaults): batch sizes, gradient_clipping, optimizer (AdamW/Adam),
                         scheduler (WarmupLR, WarmupDecayLR, WarmupCosineLR, DeepSpeed's formulas), bf16,
                         zero_optimization (stage, offload_optimizer, overlap_comm, bucket sizes,
                         persistence threshold), activation_checkpointing, tensorboard. Flags given on the
                         command line win over the file; --dry-run shows what each key became.
ZeRO (one process per GPU: mpirun -np N ./train):
  --zero-stage S         0 = data parallel, 1 = + optimizer state sharded, 2 = + gradients, 3 = + weights (default 0)
  --offload              optimizer state (fp32 master, m, v) in pinned CPU memory, AdamW on the CPU (stages 1-3)
  --checkpoint-activations  recompute each layer in backward: less memory, about a third more compute
  --keep-gathered        stage 3: keep each layer's gathered weights from forward to backward
  --copy-gathers         stage 3 on one rank: gather each layer into a buffer as N ranks do (by default
                         one rank reads its shard, the whole layer, in place)
  --serial-update        run the GPU optimizer on the compute stream after the backward (by default each
                         unit's AdamW runs on a stream of its own, beside the next forward of the units before it)
  --save-every N         write a checkpoint every N steps (and at the end) under OUT/checkpoints
  --resume [DIR]         continue from a checkpoint (default: OUT/checkpoints/latest; when there is none the
                         run says so and starts fresh); any GPU count or stage; the same --seed and global batch
  --comm nccl|mpi|auto   the collectives' transport: NCCL (one rank per GPU), or MPI through host memory
                         (ranks sharing a GPU; for learning and testing); auto picks MPI only when ranks
                         share a GPU (default auto)
  --check-timeout S      under mpirun: how long a rank that has checked its inputs waits for the others before
                         it ends the job (a rank stuck on a file; default 600)
  --comm-timeout S       the watchdog: how long any wait on the GPU or on the other ranks may last before the
                         rank names the collective it waits for, aborts NCCL and ends the job (a rank that
                         stopped, hung or died; default 600; a config's comms_timeout)
  --check-collectives    compare each step's sequence of collectives (kind, count, dtype) across ranks: a rank
                         that departs is one error naming the collective, not a hang (a debug aid)
A step on paper (the plan's bytes per rank and step time; README: Many GPUs):
  --ranks N              with --dry-run: the plan, memory and traffic for N ranks (one GPU each), without
                         starting them
  --nodes M              with --dry-run: the ranks spread over M nodes (default: this launch's)
  --interconnect GBPS    bus bandwidth of the collectives' ring in GB/s (config key interconnect_GBps;
                         default 360, NVLink, within one node; 25, the network, across nodes)
  --tflops T             bf16 TFLOP/s one GPU sustains, for the compute time (default 45% of its peak;
                         an H100's without a GPU; a one-GPU run's summary measures it)
Output:
  --out DIR              where the adapter (or model), train_log.csv, TensorBoard event files (OUT/tensorboard)
                         and eval results go (default out). A previous run's outputs there are refused unless
                         --resume or --overwrite (the default job replaces its own, saying so)
  --overwrite            let this run replace a previous run's outputs in --out
  --log-every N          print a progress line every N steps (default 10)
  --eval-every N         evaluate every N steps (default: at the end of each epoch)
  --sample N             after training, answer N eval prompts next to the reference (default 3)
  --score-answers        answer every eval question greedily before and after training; print the mean
                         token F1 and exact match against the reference answers (SQuAD-style)
  --profile N            after 2 warm-up steps, time N steps by kernel family (GEMMs, LoRA, attention, norms,
                         ...) and print each family's milliseconds beside its floor on this GPU (bench/PROFILE.md)
  --merge                LoRA: also write the base with the adapters merged, OUT/model (HF safetensors +
                         config.json + tokenizer files; loads with AutoModelForCausalLM.from_pretrained)
  --dry-run              check every input, print the resolved plan (steps, schedule, batch, ZeRO, LoRA) and
                         the memory per rank by category, and stop before the GPU
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

// --lora-layout: whether LoRA's B term rides in the base products (folded) or has products of its own (plain)
bool parse_lora_layout(const std::string& text) {
    if (text != "folded" && text != "plain") fail("--lora-layout must be folded or plain, not \"" + text + "\"");
    return text == "folded";
}

float parse_float(const std::string& flag, const std::string& text) {
    double v = parse_real(flag, text);
    if (!std::isfinite(float(v))) fail(flag + " " + text + " is beyond the range of a 32-bit float");
    if (v != 0 && float(v) == 0) fail(flag + " " + text + " is too small for a 32-bit float (it rounds to 0)");
    return float(v);
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

Options parse_options(const std::vector<std::string>& args, int world) {
    Options o;
    for (size_t i = 0; i < args.size(); ++i) {
        const std::string& a = args[i];
        auto value = [&]() -> const std::string& {
            if (i + 1 >= args.size()) fail(a + " needs a value");
            if (args[i + 1].empty()) fail(a + " needs a value, not an empty string");
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
        else if (a == "--lora-rank") o.lora_rank = int(parse_int(a, value(), 0, kMaxLoraRank));
        else if (a == "--lora-alpha") o.lora_alpha = parse_float(a, value());
        else if (a == "--lora-targets") o.lora_targets = value();
        else if (a == "--lora-dropout") o.lora_dropout = parse_float(a, value());
        else if (a == "--lora-layout") o.lora_folded = parse_lora_layout(value());
        else if (a == "--seq") o.seq = int(parse_int(a, value(), 2, 1 << 17));
        else if (a == "--micro-batch") o.micro_batch = int(parse_int(a, value(), 1, 1 << 16));
        else if (a == "--grad-accum") o.grad_accum = int(parse_int(a, value(), 1, 1 << 20));
        else if (a == "--steps") o.steps = int(parse_int(a, value(), 1, 1 << 30));
        else if (a == "--epochs") o.epochs = int(parse_int(a, value(), 1, 1 << 20));
        else if (a == "--lr") o.lr = parse_float(a, value());
        else if (a == "--lr-schedule") o.schedule = value();
        else if (a == "--warmup-steps") o.warmup_steps = int(parse_int(a, value(), 0, 1 << 30));
        else if (a == "--weight-decay") o.weight_decay = parse_float(a, value());
        else if (a == "--clip") o.clip = parse_float(a, value());
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
        else if (a == "--serial-update") o.zero.overlap_update = false;
        else if (a == "--comm") o.comm = parse_transport(value(), a);
        else if (a == "--save-every") o.save_every = int(parse_int(a, value(), 1, 1 << 30));
        else if (a == "--ranks") o.plan_ranks = int(parse_int(a, value(), 1, 1 << 20));
        else if (a == "--nodes") o.nodes = int(parse_int(a, value(), 1, 1 << 20));
        else if (a == "--interconnect") o.interconnect_GBps = parse_real(a, value());
        else if (a == "--tflops") o.tflops = parse_real(a, value());
        else if (a == "--resume") o.resume = (i + 1 < args.size() && args[i + 1].rfind("--", 0) != 0) ? args[++i] : "auto";
        else if (a == "--overwrite") o.overwrite = true;
        else if (a == "--check-timeout") o.check_timeout = parse_real(a, value());
        else if (a == "--comm-timeout") o.comm_timeout = parse_real(a, value());
        else if (a == "--check-collectives") o.check_collectives = true;
        else if (a == "--merge") o.merge = true;
        else fail("unknown option " + a + " (see ./train --help)");
    }
    if (o.given.count("--resume") && o.resume.empty())
        fail("--resume needs a checkpoint directory, not an empty string (--resume alone continues OUT/checkpoints/latest)");
    if (o.plan_ranks && !o.dry_run) fail("--ranks N plans a run for N ranks without starting them: it needs --dry-run (start N ranks with mpirun -np N)");
    if (o.plan_ranks) world = o.plan_ranks;
    // A value that breaks a rule is named by the flag that set it, else by the config key.
    auto source = [&](const char* flag, const std::string& key) {
        return o.given.count(flag) || o.config_file.empty() ? std::string(flag) : o.config_file + ": " + key;
    };
    if (o.nodes && !o.dry_run) fail("--nodes M plans a run over M nodes: it needs --dry-run (a run's nodes are where mpirun starts it)");
    if (!o.config_file.empty()) apply_config(o.config_file, o, world);
    if (o.given.count("--interconnect") && !(o.interconnect_GBps > 0)) fail("--interconnect must be a positive bandwidth in GB/s");
    if (o.given.count("--tflops") && !(o.tflops > 0)) fail("--tflops must be positive");
    if (o.zero.offload && o.zero.stage == 0)
        fail(source("--offload", "zero_optimization.offload_optimizer") + ": optimizer offload needs ZeRO stage 1, 2 or 3 (the optimizer state "
             "must be partitioned; the stage is 0" + (o.given.count("--zero-stage") || o.config_file.empty() ? "" : " in " + o.config_file) + ")");
    if (o.zero.copy_gathers && o.zero.stage != 3) fail("--copy-gathers applies to ZeRO stage 3 only (the stage is " + std::to_string(o.zero.stage) + ")");
    if (o.zero.keep_gathered && o.zero.stage != 3) fail("--keep-gathered applies to ZeRO stage 3 only (the stage is " + std::to_string(o.zero.stage) + ")");
    if (!o.zero.overlap_update && o.zero.offload)
        fail(source("--offload", "zero_optimization.offload_optimizer") + ": --serial-update applies to the GPU optimizer (the CPU's "
             "update always runs beside the next forward)");
    check_zero_options(o.zero, o.config_file.empty() ? "--zero-stage" : o.config_file);
    if (!o.model.empty() && !o.preset.empty()) fail("--model and --preset exclude each other");
    if (o.steps && o.epochs) fail("--steps and --epochs exclude each other");
    if (o.eval_fraction != 0 && !(o.eval_fraction > 0 && o.eval_fraction < 1))
        fail("--eval-fraction must be in (0, 1), not " + std::to_string(o.eval_fraction));
    if (o.eval_fraction != 0 && !o.eval_data.empty()) fail("--eval-fraction and --eval-data exclude each other");
    if (int64_t(o.micro_batch) * o.seq > kMaxTokensPerMicroBatch)
        fail("--micro-batch " + std::to_string(o.micro_batch) + " x --seq " + std::to_string(o.seq) + " = " +
             thousands(int64_t(o.micro_batch) * o.seq) + " tokens per micro-batch, more than the " + thousands(kMaxTokensPerMicroBatch) +
             " a rank's batch may hold");
    if (!(o.check_timeout > 0)) fail("--check-timeout must be positive");
    if (!(o.comm_timeout > 0)) fail(source("--comm-timeout", "comms_timeout") + " must be positive");
    if (!(o.lr > 0)) fail(source("--lr", "optimizer.params.lr") + " must be positive");
    if (o.weight_decay < 0) fail(source("--weight-decay", "optimizer.params.weight_decay") + " must be >= 0");
    if (o.clip < 0) fail(source("--clip", "gradient_clipping") + " must be >= 0");
    if (o.lora_rank == 0 && o.adapter.empty())  // full fine-tuning: the adapters' flags would do nothing
        for (const char* flag : {"--lora-alpha", "--lora-targets", "--lora-dropout", "--lora-layout"})
            if (o.given.count(flag)) fail(std::string(flag) + " applies to LoRA adapters: --lora-rank 0 trains every weight instead");
    if (o.lora_rank > 0 && !(o.lora_alpha > 0)) fail("--lora-alpha must be positive");
    if (!(o.lora_dropout >= 0 && o.lora_dropout < 1)) fail("--lora-dropout must be in [0, 1)");
    if (!o.model.empty() && !exists(o.model + "/config.json")) fail("--model " + o.model + ": no config.json there");
    if (!o.adapter.empty() && !exists(o.adapter + "/adapter_config.json")) fail("--adapter " + o.adapter + ": no adapter_config.json there");
    if (!o.preset.empty()) preset_config(o.preset);  // fails on an unknown name
    if (o.merge && o.lora_rank == 0 && o.adapter.empty()) fail("--merge merges LoRA adapters into the base: it needs LoRA (--lora-rank 0 writes OUT/model anyway)");
    Schedule s = make_schedule(o, 1);
    check_schedule(s, source("--lr-schedule", "scheduler"));
    bool llama2 = o.preset.rfind("llama-2-", 0) == 0, qwen3 = o.preset.rfind("qwen3-", 0) == 0;  // their own vocabularies
    if (o.tokenizer.empty())
        o.tokenizer = default_path(llama2 ? "data/llama2_tokenizer.json" : qwen3 ? "data/qwen3_tokenizer.json" : "data/tokenizer.json");
    if (o.data.empty()) {
        o.data = default_path("data/qa_train.jsonl");
        if (o.eval_data.empty() && o.eval_fraction == 0) o.eval_data = default_path("data/qa_eval.jsonl");
    }
    return o;
}


// ---------------------------------------------------------------------------------------------- --out

namespace {
bool is_directory(const std::string& path) {
    struct stat st;
    return stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

// Whether this process may create entries in the directory `dir`: tried, not inferred from the mode bits
// (root passes every access() test, yet cannot write /proc or a read-only mount).
bool can_create_in(const std::string& dir) {
    char host[256] = {};
    gethostname(host, sizeof host - 1);
    std::string probe = dir + "/.train-probe-" + host + "-" + std::to_string(getpid());  // ranks on other nodes may share the directory
    if (mkdir(probe.c_str(), 0700) != 0) return false;
    rmdir(probe.c_str());
    return true;
}

std::string parent_of(const std::string& path) {
    size_t slash = path.find_last_not_of('/');
    slash = slash == std::string::npos ? std::string::npos : path.rfind('/', slash);
    if (slash == std::string::npos) return ".";
    return slash == 0 ? "/" : path.substr(0, slash);
}
}  // namespace

std::string check_out_dir(const Options& o) {
    const std::string& out = o.out;
    std::string where = o.given.count("--out") ? "--out " + out : "the output directory " + out + " (--out)";
    if (out.empty()) fail("--out needs a directory, not an empty string");
    char resolved[PATH_MAX];
    if (realpath(out.c_str(), resolved) && std::string(resolved) == "/") fail(where + " is the root directory: give a directory of its own");
    if (!exists(out)) {  // created by the run: the nearest existing parent must take a new directory
        std::string parent = parent_of(out);
        while (!exists(parent) && parent != "/" && parent != ".") parent = parent_of(parent);
        if (!is_directory(parent)) fail(where + " cannot be created: " + parent + " is not a directory");
        if (!can_create_in(parent)) fail(where + " cannot be created: " + parent + " is not writable");
        return "";
    }
    if (!is_directory(out)) fail(where + " is not a directory");
    if (!can_create_in(out)) fail(where + " is not writable");
    std::string found;
    for (const char* name : {"train_log.csv", "summary.json", "loss.svg", "memory.svg", "memory_rank0.csv", "adapter", "model", "checkpoints"})
        if (exists(out + "/" + name)) found += (found.empty() ? "" : ", ") + std::string(name) + (is_directory(out + "/" + name) ? "/" : "");
    if (!found.empty() && o.resume.empty() && !o.overwrite)
        fail(where + " holds a previous run's outputs (" + found + "): give --overwrite to replace them, --resume to continue that run, or "
             "another --out");
    return found;
}

void make_out_dir(const std::string& path) {
    if (is_directory(path)) return;
    std::string parent = parent_of(path);
    if (parent != path && parent != "/" && parent != ".") make_out_dir(parent);
    if (mkdir(path.c_str(), 0755) != 0 && !is_directory(path)) fail("cannot create " + path + ": " + std::strerror(errno));
}

// ---------------------------------------------------------------------------------------------- cross-checks

void check_adapter_flags(const Options& o, const LoraConfig& adapter) {
    std::string from = "the adapter's adapter_config.json (--adapter " + o.adapter + ")";
    auto refuse = [&](const std::string& flag, const std::string& given, const std::string& key, const std::string& value) {
        fail(flag + " " + given + " disagrees with " + from + ", which has " + key + " " + value + ": an adapter keeps its own (drop " + flag + ")");
    };
    if (o.given.count("--lora-rank") && o.lora_rank != adapter.rank)
        refuse("--lora-rank", std::to_string(o.lora_rank), "r", std::to_string(adapter.rank));
    if (o.given.count("--lora-alpha") && o.lora_alpha != adapter.alpha) {
        char a[32], b[32];
        std::snprintf(a, sizeof a, "%g", double(o.lora_alpha)), std::snprintf(b, sizeof b, "%g", double(adapter.alpha));
        refuse("--lora-alpha", a, "lora_alpha", b);
    }
    if (o.given.count("--lora-targets")) {
        LoraConfig flag;
        parse_lora_targets(o.lora_targets, flag, "--lora-targets");
        if (!std::equal(flag.target, flag.target + kTargets, adapter.target)) {
            std::string theirs;
            for (int t = 0; t < kTargets; ++t)
                if (adapter.target[t]) theirs += (theirs.empty() ? "" : ",") + std::string(lora_target_name(LoraTarget(t)));
            refuse("--lora-targets", o.lora_targets, "target_modules", theirs);
        }
    }
}

void check_warmup(const Options& o, int64_t steps) {
    if (o.warmup_steps <= steps) return;
    std::string source = o.given.count("--warmup-steps") || o.config_file.empty() ? "--warmup-steps " + std::to_string(o.warmup_steps)
                         : o.warmup_absent ? o.config_file + ": the scheduler's warmup of " + std::to_string(o.warmup_steps) +
                                                 " steps (DeepSpeed's default: the file has no scheduler.params.warmup_num_steps)"
                                           : o.config_file + ": scheduler.params.warmup_num_steps " + std::to_string(o.warmup_steps);
    fail(source + " is longer than the run's " + std::to_string(steps) + " steps");
}
