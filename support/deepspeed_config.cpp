// support/deepspeed_config.cpp — the DeepSpeed JSON config, read onto the options (options.h: apply_config).
//
// A config is read as DeepSpeed reads it, with "auto" filled in as HF's Trainer fills it:
//   - every value is type-checked; an error names the file and the key path, never a flag not given:
//       ds.json: zero_optimization.reduce_bucket_size must be a whole number >= 1, not "big"
//   - a number where DeepSpeed wants an integer may be written as any JSON number with an integral value
//     (5e8, 500000000.0); Python's json writes float('inf') as Infinity (accelerate's steps_per_print);
//   - "auto" takes the flag when given, else this trainer's default, except where HF derives it from the
//     model: reduce_bucket_size = hidden², stage3_prefetch_bucket_size = 0.9 hidden²,
//     stage3_param_persistence_threshold = 10 hidden; each resolved value becomes a line of the plan;
//   - flags given on the command line win over the file;
//   - DeepSpeed's own key names and their stage3_ forms are both read (prefetch_bucket_size =
//     stage3_prefetch_bucket_size);
//   - keys DeepSpeed has that change nothing here become one plan line each, saying why (the plan is
//     printed once, by rank 0); features this trainer lacks and that would change the training when on
//     (fp16 loss scaling, parameter offload, elasticity, ...) are refused;
//   - a key DeepSpeed would refuse (inside optimizer.params, scheduler.params, zero_optimization and the
//     offload sections) is refused with the nearest known key; an unknown top-level key, which DeepSpeed
//     ignores, is a plan line with the nearest known key.
// The scheduler follows DeepSpeed's formulas and defaults (adamw.h: Schedule); total_num_steps shapes the
// schedule and never sets the run's length (--steps / --epochs do).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>

#include "support/json.h"
#include "support/llama_config.h"
#include "support/options.h"

namespace {

std::string format_number(double v) {
    char buf[64];
    if (std::isinf(v)) return v > 0 ? "Infinity" : "-Infinity";
    if (v == std::floor(v) && std::fabs(v) < 1e15) std::snprintf(buf, sizeof buf, "%.0f", v);
    else std::snprintf(buf, sizeof buf, "%.6g", v);
    return buf;
}

// Levenshtein distance, for "did you mean".
size_t edit_distance(const std::string& a, const std::string& b) {
    std::vector<size_t> row(b.size() + 1);
    for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
    for (size_t i = 1; i <= a.size(); ++i) {
        size_t diagonal = row[0];
        row[0] = i;
        for (size_t j = 1; j <= b.size(); ++j) {
            size_t up = row[j];
            row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
            diagonal = up;
        }
    }
    return row[b.size()];
}

// " (did you mean X?)" for the nearest of `known` within a third of the key's length, else "".
std::string nearest(const std::string& key, const std::vector<std::string>& known) {
    std::string best;
    size_t best_d = std::max<size_t>(2, key.size() / 3) + 1;
    for (const std::string& k : known) {
        size_t d = edit_distance(key, k);
        if (d < best_d || (k.find(key) != std::string::npos && best.empty())) best = k, best_d = std::min(d, best_d);
    }
    return best.empty() ? "" : " (did you mean " + best + "?)";
}

std::vector<std::string> keys_of(const std::map<std::string, const char*>& m) {
    std::vector<std::string> out;
    for (const auto& [k, v] : m) out.push_back(k);
    return out;
}

// Keys DeepSpeed has that change nothing here, and why (the plan says so once).
const std::map<std::string, const char*> kTopNoEffect = {
    {"steps_per_print", "progress lines follow --log-every and GPU memory is sampled every 0.1 s, whatever it says"},
    {"wall_clock_breakdown", "--profile N times each kernel family"},
    {"memory_breakdown", "the start-up line and the summary give memory by category"},
    {"dump_state", "--dry-run prints the resolved plan"},
    {"prescale_gradients", "gradients are summed in fp32 and divided once, by the step's target tokens"},
    {"gradient_predivide_factor", "gradients are summed in fp32 and divided once, by the step's target tokens"},
    {"zero_allow_untested_optimizer", "the optimizer is always this trainer's AdamW"},
    {"zero_force_ds_cpu_optimizer", "offload runs this trainer's CPU AdamW"},
    {"communication_data_type", "gradients are reduced in fp32 and weights gathered in bf16"},
    {"seq_parallel_communication_data_type", "there is no sequence parallelism"},
    {"data_types", "gradients accumulate in fp32"},
    {"sparse_gradients", "the embedding's gradient is dense"},
    {"csv_monitor", "OUT/train_log.csv holds step, loss, lr, grad norm, tok/s and memory"},
    {"wandb", "nothing is sent over the network; `wandb sync OUT/tensorboard` uploads the TensorBoard files"},
    {"comet", "nothing is sent over the network; OUT/tensorboard holds the scalars"},
    {"flops_profiler", "progress lines show TFLOP/s and MFU; --profile N times each kernel family"},
    {"comms_logger", "NCCL_DEBUG=INFO shows the collectives"},
    {"comms_timeout", ""},
    {"load_universal_checkpoint", "--resume reads a checkpoint on any rank count and ZeRO stage"},
    {"autotuning", "--dry-run --ranks N shows the plan and memory for a given setting"},
    {"aio", "there is no NVMe offload"},
    {"compile", "the kernels are compiled ahead of time"},
    {"graph_harvesting", "no CUDA graphs"},
    {"dataloader_drop_last", "every rank runs the same number of micro-batches; short ranks get masked rows"},
    {"disable_allgather", "weights are all-gathered, one unit at a time"}, {"timers", "--profile N times each kernel family"},
    {"torch_autocast", "products run in bf16 with fp32 accumulation"}, {"use_data_before_expert_parallel_", "no experts"},
    {"zero_optimization", ""}, {"train_micro_batch_size_per_gpu", ""}, {"gradient_accumulation_steps", ""},
    {"train_batch_size", ""}, {"gradient_clipping", ""}, {"optimizer", ""}, {"scheduler", ""}, {"bf16", ""},
    {"bfloat16", ""}, {"fp16", ""}, {"amp", ""}, {"activation_checkpointing", ""}, {"checkpoint", ""},
    {"tensorboard", ""}, {"elasticity", ""}, {"interconnect_GBps", ""},
};

// DeepSpeed features this trainer lacks: refused when the section says "enabled": true (they would change
// the training); otherwise named once (some, such as sparse_attention and pipeline, act only on models
// built for them, so HF recipes carry them without effect).
const std::vector<std::string> kFeatures = {"sparse_attention", "pipeline", "compression_training", "data_efficiency",
                                            "curriculum_learning", "progressive_layer_drop", "eigenvalue",
                                            "quantize_training", "hybrid_engine", "nebula", "moe", "weight_quantization",
                                            "tensor_parallel"};

const std::map<std::string, const char*> kZeroNoEffect = {
    {"contiguous_gradients", "each unit's gradient is one flat buffer already"},
    {"allgather_partitions", "weights are all-gathered, one unit at a time"},
    {"reduce_scatter", "stages 2 and 3 reduce-scatter, one unit at a time"},
    {"allgather_bucket_size", "all-gathers move one unit at a time"},
    {"round_robin_gradients", "each rank's gradient shard is contiguous"},
    {"sub_group_size", "the optimizer steps one unit at a time"},
    {"stage3_max_live_parameters", "stage 3 holds at most 3 gathered units: the one computing, the prefetched one, one being released"},
    {"max_live_parameters", "stage 3 holds at most 3 gathered units: the one computing, the prefetched one, one being released"},
    {"stage3_max_reuse_distance", "units are gathered again in backward unless --keep-gathered"},
    {"max_reuse_distance", "units are gathered again in backward unless --keep-gathered"},
    {"stage3_gather_16bit_weights_on_model_save", "exports always gather the whole model into OUT/model"},
    {"gather_16bit_weights_on_model_save", "exports always gather the whole model into OUT/model"},
    {"stage3_model_persistence_threshold", "stage3_param_persistence_threshold decides which units stay replicated"},
    {"model_persistence_threshold", "stage3_param_persistence_threshold decides which units stay replicated"},
    {"elastic_checkpoint", "checkpoints resume on any rank count"},
    {"ignore_unused_parameters", "every parameter takes part in every step"},
    {"load_from_fp32_weights", "checkpoints hold the fp32 master weights"},
    {"legacy_stage1", "one implementation of each stage"}, {"cpu_offload_use_pin_memory", "offload_optimizer.pin_memory says it"},
    {"memory_efficient_linear", "the projections save only what backward needs"},
    {"log_trace_cache_warnings", "stage 3 follows the model's fixed unit order, no trace"},
    {"use_multi_rank_bucket_allreduce", "one all-reduce per bucket"}, {"override_module_apply", "no module hooks"},
    {"zero_hpz_partition_size", "no hierarchical partitioning (ZeRO++)"},
    {"zero_quantized_weights", "weights are gathered in bf16"}, {"zero_quantized_gradients", "gradients are reduced in fp32"},
    {"zero_quantized_nontrainable_weights", "weights are gathered in bf16"},
    {"mics_shard_size", "no MiCS sub-groups"}, {"mics_hierarchical_params_gather", "no MiCS sub-groups"},
    {"stage3_gather_fp16_weights_on_model_save", "exports always gather the whole model into OUT/model"},
    {"pipeline_loading_checkpoint", "no pipeline parallelism"}, {"module_granularity_threshold", "the unit is a decoder layer"},
    {"stage3_module_granularity_threshold", "the unit is a decoder layer"},
    {"allgather_sequential", "stage 3 gathers one unit at a time"}, {"stage3_allgather_sequential", "stage 3 gathers one unit at a time"},
    {"partition_stream_chunk_size", "each rank loads only its part of the weights"},
    {"stage3_partition_stream_chunk_size", "each rank loads only its part of the weights"},
    {"enable_sanity_checks", "the tests check every stage"}, {"save_muon_momentum_buffer_in_memory", "the optimizer is AdamW"},
    {"leaf_module", "the unit is a decoder layer"}, {"zenflow", "the optimizer steps every unit each step"},
    {"use_all_reduce_for_fetch_params", "stage 3 all-gathers each unit"}, {"stage3_use_all_reduce_for_fetch_params", "stage 3 all-gathers each unit"},
    {"zeropp_loco_param", "no ZeRO++"},
    {"offload_optimizer", ""}, {"offload_param", ""}, {"stage", ""}, {"overlap_comm", ""}, {"reduce_bucket_size", ""},
    {"stage3_prefetch_bucket_size", ""}, {"prefetch_bucket_size", ""}, {"stage3_param_persistence_threshold", ""},
    {"param_persistence_threshold", ""}, {"cpu_offload", ""}, {"cpu_offload_param", ""},
};

struct ConfigReader {
    const std::string& path;
    Options& o;
    int world;
    bool micro_set = false, accum_set = false;  // by a flag or a number in the file (train_batch_size derives the rest)
    int hidden = 0;                              // the model's hidden_size, read when an "auto" needs it

    [[noreturn]] void error(const std::string& key, const std::string& what) const { fail(path + ": " + key + " " + what); }
    void note(const std::string& text) { o.config_notes.push_back(text); }
    void no_effect(const std::string& key, const std::string& why) {
        note("no effect here: " + key + (why.empty() ? "" : " (" + why + ")"));
    }
    bool unset(const char* flag) const { return !o.given.count(flag); }
    static bool is_auto(const Json& v) { return v.is_string() && v.string == "auto"; }
    static std::string shown(const Json& v) {  // a value as the error shows it
        if (v.type == Json::String) return json_quote(v.string);
        if (v.type == Json::Number) return format_number(v.number);
        if (v.type == Json::Bool) return v.boolean ? "true" : "false";
        return json_type_name(v.type);
    }
    double number(const Json& v, const std::string& key, double lo, double hi) const {
        if (v.type != Json::Number) error(key, "must be a number, not " + shown(v));
        if (!(v.number >= lo && v.number <= hi))
            error(key, "must be in [" + format_number(lo) + ", " + format_number(hi) + "], not " + shown(v));
        return v.number;
    }
    int64_t whole(const Json& v, const std::string& key, int64_t lo, int64_t hi = int64_t(1) << 53) const {
        if (v.type != Json::Number || v.number != std::floor(v.number) || v.number < double(lo) || v.number > double(hi))
            error(key, "must be a whole number >= " + std::to_string(lo) + ", not " + shown(v));
        return int64_t(v.number);
    }
    bool boolean(const Json& v, const std::string& key) const {
        if (v.type != Json::Bool) error(key, "must be true or false, not " + shown(v));
        return v.boolean;
    }
    void object(const Json& v, const std::string& key) const {
        if (v.type != Json::Object) error(key, "must be an object, not " + shown(v));
    }
    // "auto", resolved: names what it became and from where.
    void resolved(const std::string& key, const std::string& value, const char* flag, const std::string& otherwise) {
        note(key + ": \"auto\" -> " + value + (flag && !unset(flag) ? std::string(" (") + flag + ")" : " (" + otherwise + ")"));
    }
    int hidden_size() {
        if (!hidden) hidden = (!o.model.empty() ? load_config(o.model + "/config.json") : preset_config(o.preset.empty() ? "tiny" : o.preset)).hidden_size;
        return hidden;
    }

    void top(const std::string& key, const Json& v);
    void optimizer(const Json& v);
    void scheduler(const Json& v);
    void zero_optimization(const Json& v);
    void offload(const std::string& key, const Json& v, bool param);
    void activation_checkpointing(const Json& v);
    void batch_size(const Json& v);
};

void ConfigReader::top(const std::string& key, const Json& v) {
    if (key == "train_micro_batch_size_per_gpu" || key == "gradient_accumulation_steps") {
        bool micro = key == "train_micro_batch_size_per_gpu";
        const char* flag = micro ? "--micro-batch" : "--grad-accum";
        int& target = micro ? o.micro_batch : o.grad_accum;
        if (is_auto(v)) {
            resolved(key, std::to_string(target), flag, "default");
            (micro ? micro_set : accum_set) = true;
        } else {
            int64_t n = whole(v, key, 1, micro ? (1 << 16) : (1 << 20));
            if (unset(flag)) target = int(n);
            (micro ? micro_set : accum_set) = true;
        }
    } else if (key == "train_batch_size") {
        if (!is_auto(v)) whole(v, key, 1);  // the batch arithmetic runs after every key is read
    } else if (key == "gradient_clipping") {
        if (is_auto(v)) resolved(key, format_number(o.clip), "--clip", "default");
        else if (double c = number(v, key, 0, 1e30); unset("--clip")) o.clip = float(c);
    } else if (key == "optimizer") {
        optimizer(v);
    } else if (key == "scheduler") {
        scheduler(v);
    } else if (key == "zero_optimization") {
        zero_optimization(v);
    } else if (key == "bf16" || key == "bfloat16") {
        object(v, key);
        for (const auto& [k, e] : v.object) {
            if (k != "enabled") { no_effect(key + "." + k, "weights compute in bf16 with fp32 master weights, gradients and moments"); continue; }
            if (is_auto(e)) note(key + ".enabled: \"auto\" -> true (this trainer computes in bf16)");
            else if (!boolean(e, key + ".enabled"))
                error(key + ".enabled", "= false is not supported: this trainer computes in bf16 (with fp32 master weights)");
        }
    } else if (key == "fp16" || key == "amp") {
        object(v, key);
        const Json* e = v.find("enabled");
        if (e && !is_auto(*e) && boolean(*e, key + ".enabled"))
            error(key + ".enabled", "= true is not supported: this trainer computes in bf16, which needs no loss scaling (use bf16.enabled)");
    } else if (key == "activation_checkpointing") {
        activation_checkpointing(v);
    } else if (key == "checkpoint") {
        object(v, key);
        for (const auto& [k, e] : v.object) {
            if (k == "load_universal") boolean(e, key + "." + k), no_effect(key + "." + k, "--resume reads a checkpoint on any rank count and ZeRO stage");
            else if (k == "use_node_local_storage") no_effect(key + "." + k, "checkpoints go to OUT/checkpoints, written by each rank");
            else no_effect(key + "." + k, "checkpoints are written by --save-every N and read by --resume");
        }
    } else if (key == "tensorboard") {
        object(v, key);
        const Json* e = v.find("enabled");
        bool on = e && boolean(*e, key + ".enabled");
        std::string dir, job;
        if (const Json* p = v.find("output_path"); p && p->type != Json::Null) {
            if (!p->is_string()) error(key + ".output_path", "must be a string, not " + shown(*p));
            dir = p->string;
        }
        if (const Json* j = v.find("job_name"); j && j->type != Json::Null) {
            if (!j->is_string()) error(key + ".job_name", "must be a string, not " + shown(*j));
            job = j->string;
        }
        if (on && !dir.empty()) o.tensorboard_dir = dir + (job.empty() ? "" : "/" + job);
        note(std::string("tensorboard: event files go to ") + (on && !dir.empty() ? o.tensorboard_dir : "OUT/tensorboard") +
             (on ? "" : " (written whether enabled or not)"));
    } else if (key == "interconnect_GBps") {  // this trainer's key, not DeepSpeed's: the step on paper
        double bw = number(v, key, -INFINITY, INFINITY);
        if (!(bw > 0)) error(key, "must be a positive bandwidth in GB/s, not " + shown(v));
        if (unset("--interconnect")) o.interconnect_GBps = bw;
    } else if (key == "comms_timeout") {
        // This trainer's key, beside DeepSpeed's (which takes its timeout as init_distributed(timeout=...), 30
        // minutes by default; HF's Trainer as ddp_timeout): seconds any wait on the GPU or the ranks may last.
        if (!is_auto(v))  // "auto": the flag or the default
            if (double t = number(v, key, 1e-3, 1e9); unset("--comm-timeout")) o.comm_timeout = t;
        note("comms_timeout: the watchdog ends the job when a wait on the GPU or the other ranks lasts " + format_number(o.comm_timeout) +
             " s (this trainer's key: DeepSpeed takes init_distributed(timeout=), HF's Trainer ddp_timeout)");
    } else if (key == "elasticity") {
        object(v, key);
        const Json* e = v.find("enabled");
        if (e && boolean(*e, key + ".enabled")) error(key + ".enabled", "= true is not supported: the batch is micro-batch x accumulation x ranks, fixed");
    } else if (std::find(kFeatures.begin(), kFeatures.end(), key) != kFeatures.end()) {
        const Json* e = v.type == Json::Object ? v.find("enabled") : nullptr;
        if ((v.type == Json::Bool && v.boolean) || (e && e->type == Json::Bool && e->boolean))
            error(key, "is a DeepSpeed feature this trainer does not have (remove the section, or set \"enabled\": false)");
        no_effect(key, "a DeepSpeed feature this trainer does not have, not enabled here");
    } else if (auto it = kTopNoEffect.find(key); it != kTopNoEffect.end()) {
        if (key == "steps_per_print" && !is_auto(v)) number(v, key, 1, INFINITY);
        no_effect(key, it->second);
    } else {
        note("not a DeepSpeed key this trainer knows, ignored: " + key + nearest(key, keys_of(kTopNoEffect)));
    }
}

void ConfigReader::optimizer(const Json& v) {
    object(v, "optimizer");
    std::string t;
    if (const Json* type = v.find("type"); type && type->is_string()) t = type->string;
    std::string lower = t;
    for (char& c : lower) c = char(std::tolower(static_cast<unsigned char>(c)));
    if (lower != "adamw" && lower != "adam")
        error("optimizer.type", "\"" + t + "\" is not supported (AdamW, or Adam: DeepSpeed's Adam is AdamW unless adam_w_mode is false)");
    for (const auto& [k, e] : v.object)
        if (k != "type" && k != "params") error("optimizer." + k, "is not a key of optimizer (type, params)");
    const Json* p = v.find("params");
    if (!p) return;
    object(*p, "optimizer.params");
    bool decoupled = true;
    for (const auto& [k, e] : p->object) {
        std::string key = "optimizer.params." + k;
        if (k == "lr") {
            if (is_auto(e)) resolved(key, format_number(o.lr), "--lr", "default");
            else if (double lr = number(e, key, 1e-30, 1e30); unset("--lr")) o.lr = float(lr);
        } else if (k == "weight_decay") {
            if (is_auto(e)) resolved(key, format_number(o.weight_decay), "--weight-decay", "default");
            else if (double wd = number(e, key, 0, 1e30); unset("--weight-decay")) o.weight_decay = float(wd);
        } else if (k == "eps") {
            if (is_auto(e)) resolved(key, format_number(o.eps), nullptr, "default");
            else o.eps = float(number(e, key, 0, 1));
        } else if (k == "betas") {
            if (is_auto(e)) {
                resolved(key, "[" + format_number(o.beta1) + ", " + format_number(o.beta2) + "]", nullptr, "default");
                continue;
            }
            if (e.type != Json::Array || e.array.size() != 2) error(key, "must be [beta1, beta2], not " + shown(e));
            float* betas[2] = {&o.beta1, &o.beta2};
            for (int i = 0; i < 2; ++i) {
                std::string bk = key + "[" + std::to_string(i) + "]";
                if (is_auto(e.array[size_t(i)])) resolved(bk, format_number(*betas[i]), nullptr, "default");
                else *betas[i] = float(number(e.array[size_t(i)], bk, 0, 0.999999999));
            }
        } else if (k == "adam_w_mode") {
            decoupled = boolean(e, key);
        } else if (k == "torch_adam" || k == "fused" || k == "foreach" || k == "capturable" || k == "set_grad_none" ||
                   k == "fp32_optimizer_states") {
            no_effect(key, "the AdamW update is this trainer's kernel (GPU) or thread pool (CPU offload)");
        } else if (k == "amsgrad" || k == "maximize") {
            if (boolean(e, key)) error(key, "= true is not supported (AdamW)");
        } else if (k == "bias_correction") {
            if (!boolean(e, key)) error(key, "= false is not supported (AdamW corrects both moments' bias)");
        } else {
            error(key, "is not a parameter of " + t + nearest(k, {"lr", "betas", "eps", "weight_decay", "adam_w_mode", "bias_correction", "amsgrad", "torch_adam"}));
        }
    }
    if (!decoupled && o.weight_decay > 0)
        error("optimizer.params.adam_w_mode", "= false (Adam with L2 weight decay) is not supported: the weight decay is AdamW's, decoupled");
}

// DeepSpeed's WarmupLR, WarmupDecayLR and WarmupCosineLR with DeepSpeed's defaults for absent params;
// "auto" is what HF's Trainer fills in (warmup_min_lr 0, warmup_max_lr the learning rate, the run's
// warmup and length), here from the flags or this trainer's defaults.
void ConfigReader::scheduler(const Json& v) {
    object(v, "scheduler");
    std::string t;
    if (const Json* type = v.find("type"); type && type->is_string()) t = type->string;
    if (t != "WarmupLR" && t != "WarmupDecayLR" && t != "WarmupCosineLR")
        error("scheduler.type", "\"" + t + "\" is not supported (WarmupLR, WarmupDecayLR, WarmupCosineLR)");
    for (const auto& [k, e] : v.object)
        if (k != "type" && k != "params") error("scheduler." + k, "is not a key of scheduler (type, params)");
    bool ours = !unset("--lr-schedule");  // the flag's schedule replaces the file's; its params still apply
    if (!ours) o.schedule = t;
    std::vector<std::string> known = {"warmup_num_steps", "warmup_type", "last_batch_iteration"};
    if (t == "WarmupCosineLR") known.insert(known.end(), {"total_num_steps", "warmup_min_ratio", "cos_min_ratio"});
    else known.insert(known.end(), {"warmup_min_lr", "warmup_max_lr"});
    if (t == "WarmupDecayLR") known.push_back("total_num_steps");
    // DeepSpeed's defaults for what the file leaves out
    if (!ours && unset("--warmup-steps")) o.warmup_steps = 1000;
    o.warmup_min_lr = 0, o.warmup_min_ratio = 0, o.min_ratio = 0.0001f, o.warmup_type = "log";
    const Json* p = v.find("params");
    if (p) object(*p, "scheduler.params");
    bool max_lr_given = false;
    for (const auto& [k, e] : p ? p->object : std::vector<std::pair<std::string, Json>>{}) {
        std::string key = "scheduler.params." + k;
        if (std::find(known.begin(), known.end(), k) == known.end())
            error(key, "is not a parameter of " + t + nearest(k, known) + " (its parameters: " + [&] {
                std::string list;
                for (const std::string& n : known) list += (list.empty() ? "" : ", ") + n;
                return list;
            }() + ")");
        if (k == "warmup_num_steps") {
            if (is_auto(e)) o.warmup_steps = unset("--warmup-steps") ? -1 : o.warmup_steps;
            else if (int64_t n = whole(e, key, 0, 1 << 30); unset("--warmup-steps")) o.warmup_steps = int(n);
        } else if (k == "total_num_steps") {
            if (!is_auto(e)) o.schedule_steps = whole(e, key, 1, 1 << 30);
        } else if (k == "warmup_min_lr") {
            if (is_auto(e)) resolved(key, "0", nullptr, "HF's Trainer fills 0");
            else o.warmup_min_lr = float(number(e, key, 0, 1e30));
        } else if (k == "warmup_max_lr") {
            max_lr_given = true;
            if (is_auto(e)) resolved(key, format_number(o.lr), "--lr", "optimizer.params.lr or the default");
            else if (double lr = number(e, key, 1e-30, 1e30); unset("--lr")) o.lr = float(lr);
        } else if (k == "warmup_min_ratio" || k == "cos_min_ratio") {
            float r = is_auto(e) ? (k == "cos_min_ratio" ? 0.0001f : 0.0f) : float(number(e, key, 0, 1));
            (k == "cos_min_ratio" ? o.min_ratio : o.warmup_min_ratio) = r;
        } else if (k == "warmup_type") {
            if (is_auto(e)) {
                note(key + ": \"auto\" -> log (DeepSpeed's default, as DeepSpeed reads \"auto\")");
                continue;
            }
            if (!e.is_string() || (e.string != "log" && e.string != "linear")) error(key, "must be \"log\" or \"linear\", not " + shown(e));
            o.warmup_type = e.string;
        } else if (k == "last_batch_iteration") {
            if (whole(e, key, -1, 1 << 30) != -1) error(key, "must be -1: a run continues its schedule from a checkpoint with --resume");
        }
    }
    if (t != "WarmupCosineLR" && !ours && !max_lr_given && unset("--lr")) {  // DeepSpeed's default (WarmupCosineLR scales the optimizer's lr)
        o.lr = 0.001f;
        note("scheduler.params.warmup_max_lr: absent -> 0.001 (DeepSpeed's " + t + " default; the optimizer's lr does not count)");
    }
    if (!ours && !(p && p->find("warmup_num_steps")) && unset("--warmup-steps")) {
        o.warmup_absent = true;
        note("scheduler.params.warmup_num_steps: absent -> 1000 (DeepSpeed's default)");
    }
    if (o.schedule_steps > 0 && o.warmup_steps > o.schedule_steps)  // DeepSpeed warns and runs it so
        note("scheduler.params.total_num_steps " + std::to_string(o.schedule_steps) + " is shorter than the warmup's " +
             std::to_string(o.warmup_steps) + " steps: the lr decays before it has warmed up");
    if (ours) note("scheduler: --lr-schedule " + o.schedule + " replaces " + t + " (its params still apply where they exist)");
}

// zero_optimization: an object, or (DeepSpeed's old forms) a stage number or a boolean (true = stage 1).
void ConfigReader::zero_optimization(const Json& v) {
    if (v.type == Json::Number || v.type == Json::Bool) {
        int stage = v.type == Json::Bool ? (v.boolean ? 1 : 0) : int(whole(v, "zero_optimization", 0, 3));
        if (stage > 3) error("zero_optimization", "must be 0, 1, 2 or 3");
        note("zero_optimization: " + shown(v) + " read as zero_optimization.stage = " + std::to_string(stage));
        if (unset("--zero-stage")) o.zero.stage = stage;
        return;
    }
    object(v, "zero_optimization");
    for (const auto& [k, e] : v.object) {
        std::string key = "zero_optimization." + k;
        if (k == "stage") {
            if (e.type != Json::Number || e.number != std::floor(e.number) || e.number < 0 || e.number > 3) error(key, "must be 0, 1, 2 or 3, not " + shown(e));
            if (unset("--zero-stage")) o.zero.stage = int(e.number);
        }
    }
    for (const auto& [k, e] : v.object) {
        std::string key = "zero_optimization." + k;
        if (k == "stage") continue;
        auto bucket = [&](int64_t& target, int64_t lo, int64_t automatic, const std::string& how) {
            if (is_auto(e)) {
                target = automatic;
                note(key + ": \"auto\" -> " + thousands(automatic) + " (" + how + ", as HF's Trainer fills it)");
            } else {
                target = whole(e, key, lo);
            }
        };
        if (k == "offload_optimizer" || k == "offload_param") {
            offload(key, e, k == "offload_param");
        } else if (k == "cpu_offload") {  // DeepSpeed's old form of offload_optimizer.device = cpu
            if (boolean(e, key) && unset("--offload")) o.zero.offload = true;
        } else if (k == "cpu_offload_param") {
            if (boolean(e, key) && o.zero.stage == 3) error(key, "= true (parameter offload) is not supported: weights stay on the GPU (optimizer offload is supported)");
        } else if (k == "overlap_comm") {
            if (!is_auto(e)) o.zero.overlap_comm = boolean(e, key);
        } else if (k == "reduce_bucket_size") {
            bucket(o.zero.reduce_bucket_size, 1, int64_t(hidden_size()) * hidden_size(), "hidden_size²");
            if (o.zero.stage >= 2) no_effect(key, "stages 2 and 3 reduce-scatter each unit's gradient whole; the buckets are stages 0 and 1's all-reduce");
        } else if (k == "allgather_bucket_size") {
            if (!is_auto(e)) o.zero.allgather_bucket_size = whole(e, key, 1);
            no_effect(key, kZeroNoEffect.at(k));
        } else if (k == "stage3_prefetch_bucket_size" || k == "prefetch_bucket_size") {
            bucket(o.zero.prefetch_bucket_size, 0, int64_t(0.9 * hidden_size() * hidden_size()), "0.9 hidden_size²");
        } else if (k == "stage3_param_persistence_threshold" || k == "param_persistence_threshold") {
            bucket(o.zero.persistence_threshold, 0, int64_t(10) * hidden_size(), "10 hidden_size");
        } else if (auto it = kZeroNoEffect.find(k); it != kZeroNoEffect.end()) {
            no_effect(key, it->second);
        } else {
            error(key, "is not a key of zero_optimization" + nearest(k, keys_of(kZeroNoEffect)));
        }
    }
}

// offload_optimizer (device cpu: supported) and offload_param (device cpu or nvme: refused at stage 3,
// where DeepSpeed uses it; DeepSpeed ignores it at stages 0-2 and so does this trainer).
void ConfigReader::offload(const std::string& key, const Json& v, bool param) {
    if (v.type == Json::Null) return;
    object(v, key);
    std::string device = "none";
    for (const auto& [k, e] : v.object) {
        std::string sub = key + "." + k;
        if (k == "device") {
            if (e.type == Json::Null || is_auto(e)) continue;
            if (!e.is_string()) error(sub, "must be \"cpu\" or \"none\", not " + shown(e));
            device = e.string;
        } else if (k == "pin_memory") {
            if (!param) o.zero.pin_memory = boolean(e, sub);
        } else if (k == "nvme_path" || k == "nvme_path_per_local_rank" || k == "buffer_count" || k == "buffer_size" || k == "max_in_cpu" ||
                   k == "pipeline" || k == "pipeline_read" || k == "pipeline_write" || k == "fast_init" || k == "ratio" ||
                   k == "super_offload" || k == "cpuadam_cores_perc") {  // NVMe and tiling details: nothing to do here
            if (k == "ratio" && e.type == Json::Number && e.number != 1.0) error(sub, "!= 1 (a partial offload) is not supported: the whole optimizer state is offloaded");
        } else {
            error(sub, std::string("is not a key of ") + (param ? "offload_param" : "offload_optimizer") +
                           nearest(k, {"device", "pin_memory", "nvme_path", "buffer_count", "fast_init", "ratio"}));
        }
    }
    if (device != "cpu" && device != "none" && device != "nvme") error(key + ".device", "must be \"cpu\" or \"none\", not \"" + device + "\"");
    if (param) {
        if (device == "none") return;
        if (o.zero.stage == 3)
            error(key + ".device", "\"" + device + "\" (parameter offload) is not supported: weights stay on the GPU, sharded by stage 3 "
                  "(offload_optimizer is supported)");
        no_effect(key, "DeepSpeed offloads parameters only at stage 3");
        return;
    }
    if (device == "nvme") error(key + ".device", "\"nvme\" is not supported (cpu or none)");
    if (unset("--offload")) o.zero.offload = device == "cpu";
}

// DeepSpeed's section configures checkpointing that the model code turns on (HF: gradient_checkpointing).
// Here the section turns recomputation on when it asks for something: true, or any of its options set
// (partition_activations, cpu_checkpointing, contiguous_memory_optimization true, number_checkpoints > 0).
// false, {} and every option off leave it off (--checkpoint-activations turns it on).
void ConfigReader::activation_checkpointing(const Json& v) {
    const std::string key = "activation_checkpointing";
    bool on = false;
    std::string why;
    if (v.type == Json::Bool) {
        on = v.boolean, why = on ? "true" : "false";
    } else {
        object(v, key);
        for (const auto& [k, e] : v.object) {
            std::string sub = key + "." + k;
            if (k == "partition_activations" || k == "cpu_checkpointing" || k == "contiguous_memory_optimization") {
                if (e.type != Json::Null && boolean(e, sub)) on = true, why += (why.empty() ? "" : ", ") + k;
            } else if (k == "number_checkpoints") {
                if (e.type != Json::Null && whole(e, sub, 0) > 0) on = true, why += (why.empty() ? "" : ", ") + k;
            } else if (k == "synchronize_checkpoint_boundary" || k == "profile") {
                if (e.type != Json::Null) boolean(e, sub);
            } else {
                error(sub, "is not a key of activation_checkpointing" +
                               nearest(k, {"partition_activations", "cpu_checkpointing", "contiguous_memory_optimization",
                                           "number_checkpoints", "synchronize_checkpoint_boundary", "profile"}));
            }
        }
    }
    if (!unset("--checkpoint-activations")) return;
    o.checkpoint_activations = on;
    note(key + (on ? ": on (" + why + "): each layer keeps its input and is recomputed in backward"
                   : ": every option off: recomputation stays off (--checkpoint-activations turns it on)"));
}

// train_batch_size = micro-batch x accumulation x ranks, as DeepSpeed resolves it: with one of the two
// unknown it is derived; with both known the three must agree.
void ConfigReader::batch_size(const Json& v) {
    if (is_auto(v)) {
        note("train_batch_size: \"auto\" -> " + std::to_string(int64_t(o.micro_batch) * o.grad_accum * world) + " (micro-batch x accumulation x " +
             std::to_string(world) + (world == 1 ? " rank)" : " ranks)"));
        return;
    }
    int64_t tb = int64_t(v.number);
    bool micro = micro_set || !unset("--micro-batch"), accum = accum_set || !unset("--grad-accum");
    auto derive = [&](int& target, int64_t other, const char* what) {
        if (tb % (other * world) != 0)
            error("train_batch_size", std::to_string(tb) + " is not divisible by " + std::to_string(other * world) + " (" + what + ")");
        target = int(tb / (other * world));
        note(std::string("train_batch_size ") + std::to_string(tb) + " -> " + (&target == &o.micro_batch ? "micro-batch " : "gradient accumulation ") +
             std::to_string(target) + " (" + what + ")");
    };
    if (micro && !accum) derive(o.grad_accum, o.micro_batch, "micro-batch x ranks");
    else if (!micro && accum) derive(o.micro_batch, o.grad_accum, "accumulation x ranks");
    else if (!micro && !accum) o.grad_accum = 1, derive(o.micro_batch, 1, "ranks; accumulation 1");
    int64_t global = int64_t(o.micro_batch) * o.grad_accum * world;
    if (tb != global)
        fail(path + ": train_batch_size " + std::to_string(tb) + " != train_micro_batch_size_per_gpu * gradient_accumulation_steps * GPUs (" +
             std::to_string(o.micro_batch) + " x " + std::to_string(o.grad_accum) + " x " + std::to_string(world) + " = " + std::to_string(global) + ")");
}

}  // namespace

void apply_config(const std::string& path, Options& o, int world) {
    Json j = read_json_file(path);
    if (j.type != Json::Object) fail(path + ": a DeepSpeed config must be a JSON object");
    ConfigReader r{path, o, world};
    // In this order, whatever the file's: offload_param depends on the stage, the scheduler's peak on the
    // optimizer's lr, train_batch_size on the micro-batch and accumulation.
    const char* first[] = {"zero_optimization", "optimizer", "scheduler"};
    for (const char* key : first)
        if (const Json* v = j.find(key)) r.top(key, *v);
    for (const auto& [key, v] : j.object)
        if (std::find(std::begin(first), std::end(first), key) == std::end(first)) r.top(key, v);
    if (const Json* tb = j.find("train_batch_size")) r.batch_size(*tb);
}

Schedule make_schedule(const Options& o, int64_t run_steps) {
    Schedule s;
    s.kind = o.schedule, s.lr = o.lr, s.total_steps = int(o.schedule_steps > 0 ? o.schedule_steps : run_steps);
    s.warmup_min_lr = o.warmup_min_lr, s.min_ratio = o.min_ratio, s.warmup_min_ratio = o.warmup_min_ratio, s.warmup_type = o.warmup_type;
    s.warmup_steps = o.warmup_steps >= 0 ? o.warmup_steps : int(std::ceil(0.03 * double(run_steps)));
    return s;
}
