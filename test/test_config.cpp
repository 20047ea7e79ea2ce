// test/test_config.cpp — DeepSpeed configs as users bring them: the reader (integral numbers written 5e8,
// "auto" resolved as HF's Trainer fills it, every value checked with its key path, misspelt keys named,
// DeepSpeed's own key names), DeepSpeed's LR schedules against its formulas, and each recipe fixture in
// configs/recipes/ through ./train --dry-run with its plan asserted (CPU only).
#include "test.h"

#include <sys/wait.h>

#include <cmath>
#include <cstdio>
#include <fstream>

#include "adamw.h"
#include "support/options.h"
#include "support/plan.h"

namespace {

// A shell command's stdout and stderr together, and its exit status; ./train ARGS.
Shell train(const std::string& args, const std::string& env = "") { return shell(env + " ./train " + args); }

bool has(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

// Options as parse_options makes them from `flags` and a config holding `json`.
Options with_config(const std::string& json, std::vector<std::string> flags = {}, int world = 1) {
    static int n = 0;
    std::string path = temp_file("ds_config_" + std::to_string(n++) + ".json", json);
    flags.insert(flags.end(), {"--preset", "tiny", "--config", path});
    return parse_options(flags, world);
}

// The error parse_options raises for a config holding `json` (and `flags`), or "" when none.
std::string config_error(const std::string& json, std::vector<std::string> flags = {}) {
    try {
        with_config(json, flags);
    } catch (const Error& e) {
        return e.what();
    }
    return "";
}

bool noted(const Options& o, const std::string& part) {
    for (const std::string& n : o.config_notes)
        if (has(n, part)) return true;
    return false;
}

// DeepSpeed's WarmupLR / WarmupDecayLR / WarmupCosineLR driven as its engine drives them (the scheduler
// is built at iteration -1 and stepped after each optimizer step), lr of optimizer steps 1..n; computed
// with Python from deepspeed/runtime/lr_schedules.py's classes.
struct Golden {
    Schedule s;
    std::vector<std::pair<int, double>> lr;  // (optimizer step from 1, lr)
};

Schedule ds(const char* kind, float lr, int warmup, int total, const char* type) {
    Schedule s;
    s.kind = kind, s.lr = lr, s.warmup_steps = warmup, s.total_steps = total, s.warmup_type = type;
    return s;
}

}  // namespace

TEST_CASE("schedules: DeepSpeed's WarmupLR, WarmupDecayLR and WarmupCosineLR as DeepSpeed computes them") {
    std::vector<Golden> goldens;
    Schedule a = ds("WarmupLR", 1e-3f, 10, 0, "log");
    a.warmup_min_lr = 1e-5f;
    goldens.push_back({a, {{1, 1e-05}, {2, 1e-05}, {3, 0.000308019696}, {4, 0.000482350042}, {10, 0.000954700084}, {11, 0.001}, {15, 0.001}}});
    Schedule b = ds("WarmupLR", 2e-4f, 10, 0, "linear");
    goldens.push_back({b, {{1, 0}, {2, 0}, {3, 2e-05}, {7, 0.0001}, {11, 0.00018}, {12, 0.0002}, {15, 0.0002}}});
    Schedule c = ds("WarmupDecayLR", 1e-3f, 10, 50, "log");
    c.warmup_min_lr = 1e-5f;
    goldens.push_back({c, {{3, 0.000308019696}, {12, 0.001}, {13, 0.00097525}, {30, 0.0005545}, {51, 3.475e-05}, {52, 1e-05}, {55, 1e-05}}});
    Schedule d = ds("WarmupCosineLR", 3e-4f, 8, 40, "linear");
    d.warmup_min_ratio = 0.1f, d.min_ratio = 0.05f;
    goldens.push_back({d, {{1, 0}, {2, 3e-05}, {3, 6.375e-05}, {9, 0.00026625}, {10, 0.000299313824}, {25, 0.0001575}, {41, 1.5e-05}, {45, 1.5e-05}}});
    Schedule e = ds("WarmupCosineLR", 1e-3f, 1, 20, "log");  // warmup_num_steps 1: DeepSpeed warms up over 2
    goldens.push_back({e, {{1, 0}, {2, 0}, {3, 0.001}, {4, 0.000992404636}, {12, 0.00050005}, {21, 1e-07}, {22, 1e-07}}});
    for (const Golden& g : goldens) {
        CAPTURE(g.s.kind);
        CAPTURE(g.s.warmup_type);
        check_schedule(g.s, "test");
        for (const auto& [step, lr] : g.lr) {
            CAPTURE(step);
            CHECK(double(g.s.lr_at(step - 1)) == doctest::Approx(lr).epsilon(1e-6));
        }
    }
    Schedule bad = ds("WarmupLR", 1e-3f, 10, 0, "exp");
    CHECK_THROWS_WITH_AS(check_schedule(bad, "--lr-schedule"), doctest::Contains("warmup_type must be \"log\" or \"linear\""), Error);
}

TEST_CASE("schedules: this trainer's own kinds keep their shape (the flag's schedules)") {
    Schedule s;
    s.kind = "warmup-cosine", s.lr = 1.0f, s.warmup_steps = 10, s.total_steps = 110;
    CHECK(s.lr_at(0) == doctest::Approx(0.1f));  // linear warmup reaching lr at step 10 (index 9)
    CHECK(s.lr_at(9) == doctest::Approx(1.0f));
    CHECK_FALSE(s.deepspeed());
    CHECK(make_schedule(parse_options({"--preset", "tiny"}, 1), 200).warmup_steps == 6);  // 3% of the steps
}

TEST_CASE("config: numbers written as 5e8, \"auto\" resolved, DeepSpeed's key names") {
    Options o = with_config(R"({"zero_optimization": {"stage": 3, "reduce_bucket_size": 5e8, "prefetch_bucket_size": 2e7,
        "param_persistence_threshold": 1e4, "allgather_bucket_size": 2.0e8, "sub_group_size": 1e9}})");
    CHECK(o.zero.stage == 3);
    CHECK(o.zero.reduce_bucket_size == 500000000);
    CHECK(o.zero.prefetch_bucket_size == 20000000);  // DeepSpeed's own name for stage3_prefetch_bucket_size
    CHECK(o.zero.persistence_threshold == 10000);
    CHECK(o.zero.allgather_bucket_size == 200000000);
    CHECK(noted(o, "no effect here: zero_optimization.sub_group_size ("));
    CHECK(noted(with_config(R"({"zero_optimization": {"stage": 2, "reduce_bucket_size": 1000}})"), "no effect here: zero_optimization.reduce_bucket_size (stages 2 and 3"));
    CHECK(!noted(with_config(R"({"zero_optimization": {"stage": 1, "reduce_bucket_size": 1000}})"), "no effect here: zero_optimization.reduce_bucket_size"));

    // "auto" where HF's templates put it: flags win, else defaults; the ZeRO sizes from hidden_size (tiny: 256)
    Options a = with_config(R"({"train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto", "train_batch_size": "auto",
        "gradient_clipping": "auto", "bf16": {"enabled": "auto"}, "fp16": {"enabled": "auto"},
        "optimizer": {"type": "AdamW", "params": {"lr": "auto", "betas": ["auto", "auto"], "eps": "auto", "weight_decay": "auto"}},
        "scheduler": {"type": "WarmupDecayLR", "params": {"warmup_min_lr": "auto", "warmup_max_lr": "auto", "warmup_num_steps": "auto",
                                                           "total_num_steps": "auto"}},
        "zero_optimization": {"stage": 3, "reduce_bucket_size": "auto", "stage3_prefetch_bucket_size": "auto",
                              "stage3_param_persistence_threshold": "auto"}})",
                            {"--micro-batch", "3", "--lr", "5e-4", "--clip", "0.5"});
    CHECK(a.micro_batch == 3);
    CHECK(a.grad_accum == 1);
    CHECK(a.lr == 5e-4f);  // --lr, for optimizer.params.lr and warmup_max_lr alike
    CHECK(a.clip == 0.5f);
    CHECK(a.beta1 == 0.9f);  // ["auto", "auto"] is not [0, 0]
    CHECK(a.beta2 == 0.999f);
    CHECK(a.warmup_steps == -1);     // 3% of the run, as without a config
    CHECK(a.schedule_steps == 0);    // the run's length
    CHECK(a.schedule == "WarmupDecayLR");
    CHECK(a.zero.reduce_bucket_size == 256 * 256);
    CHECK(a.zero.prefetch_bucket_size == int64_t(0.9 * 256 * 256));
    CHECK(a.zero.persistence_threshold == 2560);
    CHECK(noted(a, "train_micro_batch_size_per_gpu: \"auto\" -> 3 (--micro-batch)"));
    CHECK(noted(a, "zero_optimization.reduce_bucket_size: \"auto\" -> 65,536 (hidden_size²"));
    CHECK(noted(a, "optimizer.params.betas[1]: \"auto\" -> 0.999"));

    Options betas = with_config(R"({"optimizer": {"type": "adam", "params": {"betas": "auto", "lr": 3e-5}}})");
    CHECK(betas.beta1 == 0.9f);
    CHECK(betas.lr == 3e-5f);
}

TEST_CASE("config: DeepSpeed's scheduler semantics, never the run's length") {
    Options o = with_config(R"({"scheduler": {"type": "WarmupCosineLR", "params": {"total_num_steps": 1000, "warmup_num_steps": 20,
        "warmup_min_ratio": 0.05, "cos_min_ratio": 0.1, "warmup_type": "linear"}}})",
                            {"--epochs", "2"});
    CHECK(o.steps == 0);  // total_num_steps shapes the schedule; --epochs sets the run
    CHECK(o.epochs == 2);
    Schedule s = make_schedule(o, 300);
    CHECK(s.kind == "WarmupCosineLR");
    CHECK(s.total_steps == 1000);
    CHECK(s.warmup_steps == 20);
    CHECK(s.warmup_min_ratio == 0.05f);
    CHECK(s.min_ratio == 0.1f);
    CHECK(s.warmup_type == "linear");

    Options d = with_config(R"({"optimizer": {"type": "AdamW", "params": {"lr": 3e-5}}, "scheduler": {"type": "WarmupLR"}})");  // DeepSpeed's defaults for absent params
    CHECK(d.warmup_steps == 1000);
    CHECK(d.lr == 0.001f);  // WarmupLR's warmup_max_lr default, as WarmupDecayLR's: the optimizer's lr does not count
    CHECK(noted(d, "warmup_max_lr: absent -> 0.001 (DeepSpeed's WarmupLR default"));
    CHECK(d.warmup_absent);
    Options short_total = with_config(R"({"scheduler": {"type": "WarmupCosineLR", "params": {"total_num_steps": 3, "warmup_num_steps": 5}}})");
    CHECK(noted(short_total, "total_num_steps 3 is shorter than the warmup's 5 steps"));  // DeepSpeed warns and runs it
    CHECK(!noted(with_config(R"({"scheduler": {"type": "WarmupCosineLR", "params": {"total_num_steps": 5, "warmup_num_steps": 5}}})"), "shorter"));
    CHECK(d.warmup_type == "log");
    CHECK(d.warmup_min_lr == 0.0f);
    Options decay = with_config(R"({"optimizer": {"type": "AdamW", "params": {"lr": 1e-4}}, "scheduler": {"type": "WarmupDecayLR"}})");
    CHECK(decay.lr == 0.001f);  // WarmupDecayLR's warmup_max_lr default; the optimizer's lr does not count
    CHECK(noted(decay, "warmup_max_lr: absent -> 0.001"));
    Options cosine = with_config(R"({"optimizer": {"type": "AdamW", "params": {"lr": 1e-4}}, "scheduler": {"type": "WarmupCosineLR"}})");
    CHECK(cosine.lr == 1e-4f);  // WarmupCosineLR scales the optimizer's lr
    Options typed = with_config(R"({"scheduler": {"type": "WarmupLR", "params": {"warmup_type": "auto"}}})");
    CHECK(typed.warmup_type == "log");  // DeepSpeed reads an unknown warmup_type as its default

    Options flag = with_config(R"({"scheduler": {"type": "WarmupLR", "params": {"warmup_num_steps": 7}}})", {"--lr-schedule", "warmup-linear"});
    CHECK(flag.schedule == "warmup-linear");  // the flag wins; the file's params still apply
    CHECK(flag.warmup_steps == 7);
}

TEST_CASE("config: keys that change nothing here are named with why; steps_per_print, activation_checkpointing, zero_optimization: 3") {
    Options o = with_config(R"({"steps_per_print": 2000, "wall_clock_breakdown": false, "checkpoint": {"load_universal": true},
        "tensorboard": {"enabled": true, "output_path": "tb_logs", "job_name": "run1"}, "csv_monitor": {"enabled": true},
        "wandb": {"enabled": true, "project": "p"}, "flops_profiler": {"enabled": false}, "gradient_acumulation_steps": 4})",
                            {"--log-every", "5"});
    CHECK(o.log_every == 5);
    Options plain = with_config(R"({"steps_per_print": 2000})");
    CHECK(plain.log_every == 10);  // steps_per_print never silences progress lines
    CHECK(noted(o, "no effect here: steps_per_print (progress lines follow --log-every"));
    CHECK(noted(o, "no effect here: checkpoint.load_universal (--resume reads a checkpoint on any rank count"));
    CHECK(noted(o, "no effect here: csv_monitor (OUT/train_log.csv"));
    CHECK(noted(o, "no effect here: wandb ("));
    CHECK(noted(o, "no effect here: flops_profiler ("));
    CHECK(noted(with_config(R"({"sparse_attention": {"mode": "fixed", "block": 16}})"), "no effect here: sparse_attention ("));
    CHECK(noted(o, "not a DeepSpeed key this trainer knows, ignored: gradient_acumulation_steps (did you mean gradient_accumulation_steps?)"));
    CHECK(o.tensorboard_dir == "tb_logs/run1");

    CHECK_FALSE(with_config(R"({"activation_checkpointing": false})").checkpoint_activations);
    CHECK_FALSE(with_config(R"({"activation_checkpointing": {}})").checkpoint_activations);
    CHECK_FALSE(with_config(R"({"activation_checkpointing": {"partition_activations": false, "cpu_checkpointing": false,
        "contiguous_memory_optimization": false, "number_checkpoints": null, "synchronize_checkpoint_boundary": false, "profile": false}})")
                    .checkpoint_activations);
    CHECK(with_config(R"({"activation_checkpointing": {"partition_activations": true}})").checkpoint_activations);
    CHECK(with_config(R"({"activation_checkpointing": {"number_checkpoints": 16}})").checkpoint_activations);
    CHECK(with_config(R"({"activation_checkpointing": {}})", {"--checkpoint-activations"}).checkpoint_activations);

    CHECK(with_config(R"({"zero_optimization": 3})").zero.stage == 3);  // DeepSpeed's old form: the stage
    CHECK(with_config(R"({"zero_optimization": true})").zero.stage == 1);
    CHECK(with_config(R"({"zero_optimization": {"stage": 2}})", {"--zero-stage", "1"}).zero.stage == 1);
    Options off = with_config(R"({"zero_optimization": {"stage": 2, "offload_param": {"device": "cpu"}, "offload_optimizer": {"device": "cpu"}}})");
    CHECK(off.zero.offload);
    CHECK(noted(off, "no effect here: zero_optimization.offload_param (DeepSpeed offloads parameters only at stage 3)"));
}

TEST_CASE("config: comms_timeout sets the watchdog's timeout; --comm-timeout wins; --check-collectives") {
    CHECK(with_config(R"({"zero_optimization": {"stage": 3}})").comm_timeout == 600);  // the default: 10 minutes
    Options o = with_config(R"({"comms_timeout": 30})");
    CHECK(o.comm_timeout == 30);
    CHECK(noted(o, "comms_timeout: the watchdog ends the job when a wait on the GPU or the other ranks lasts 30 s (this trainer's key"));
    CHECK(with_config(R"({"comms_timeout": 30})", {"--comm-timeout", "2.5"}).comm_timeout == 2.5);
    CHECK(with_config(R"({"comms_timeout": "auto"})").comm_timeout == 600);
    CHECK(has(config_error(R"({"comms_timeout": 0})"), "comms_timeout must be in [0.001, 1000000000], not 0"));
    CHECK(has(config_error(R"({"comms_timeout": "long"})"), "comms_timeout must be a number, not \"long\""));
    CHECK(parse_options({"--check-collectives"}, 1).check_collectives);
    CHECK_FALSE(parse_options({}, 1).check_collectives);
    auto flag_error = [](const std::vector<std::string>& flags) {
        try {
            parse_options(flags, 1);
        } catch (const Error& e) {
            return std::string(e.what());
        }
        return std::string();
    };
    CHECK(flag_error({"--comm-timeout", "0"}) == "--comm-timeout must be positive");
    CHECK(flag_error({"--comm-timeout", "soon"}) == "--comm-timeout needs a number, not \"soon\"");
}

TEST_CASE("config: train_batch_size derives the missing one of micro-batch and accumulation, as DeepSpeed does") {
    Options o = with_config(R"({"train_batch_size": 64, "train_micro_batch_size_per_gpu": 4})", {}, 4);
    CHECK(o.grad_accum == 4);
    Options p = with_config(R"({"train_batch_size": 64, "gradient_accumulation_steps": 2})", {}, 8);
    CHECK(p.micro_batch == 4);
    Options q = with_config(R"({"train_batch_size": 16})", {}, 2);
    CHECK(q.micro_batch == 8);
    CHECK(q.grad_accum == 1);
    CHECK(has(config_error(R"({"train_batch_size": 60, "train_micro_batch_size_per_gpu": 8})"), "train_batch_size 60 is not divisible by 8"));
    Options dry = parse_options({"--preset", "tiny", "--dry-run", "--ranks", "8", "--config",
                                 temp_file("ds_ranks.json", R"({"train_batch_size": 64, "train_micro_batch_size_per_gpu": 2,
                                                                  "gradient_accumulation_steps": 4})")},
                                1);
    CHECK(dry.plan_ranks == 8);  // --ranks: the batch arithmetic of 8 ranks
}

TEST_CASE("config: every refused value names the file and the key path, never a flag not given") {
    struct Case {
        const char* json;
        const char* message;
    };
    const Case cases[] = {
        {R"({"zero_optimization": {"stage": 3, "reduce_bucket_size": "big"}})", "zero_optimization.reduce_bucket_size must be a whole number >= 1, not \"big\""},
        {R"({"zero_optimization": {"reduce_bucket_size": 5.5e0}})", "zero_optimization.reduce_bucket_size must be a whole number >= 1, not 5.5"},
        {R"({"zero_optimization": {"stage3_prefetch_bucket_size": -1}})", "zero_optimization.stage3_prefetch_bucket_size must be a whole number >= 0"},
        {R"({"zero_optimization": {"stage": 4}})", "zero_optimization.stage must be 0, 1, 2 or 3, not 4"},
        {R"({"zero_optimization": 7})", "zero_optimization must be a whole number >= 0, not 7"},
        {R"({"zero_optimization": {"stage3_prefetch_bucket": 1}})", "zero_optimization.stage3_prefetch_bucket is not a key of zero_optimization (did you mean stage3_prefetch_bucket_size?)"},
        {R"({"zero_optimization": {"stage": 3, "offload_param": {"device": "cpu"}}})", "zero_optimization.offload_param.device \"cpu\" (parameter offload) is not supported"},
        {R"({"zero_optimization": {"stage": 3, "offload_optimizer": {"device": "nvme"}}})", "zero_optimization.offload_optimizer.device \"nvme\" is not supported"},
        {R"({"zero_optimization": {"stage": 3, "offload_optimizer": {"devcie": "cpu"}}})", "zero_optimization.offload_optimizer.devcie is not a key of offload_optimizer (did you mean device?)"},
        {R"({"zero_optimization": {"overlap_comm": "yes"}})", "zero_optimization.overlap_comm must be true or false, not \"yes\""},
        {R"({"fp16": {"enabled": true}})", "fp16.enabled = true is not supported: this trainer computes in bf16"},
        {R"({"amp": {"enabled": true}})", "amp.enabled = true is not supported"},
        {R"({"bf16": {"enabled": false}})", "bf16.enabled = false is not supported"},
        {R"({"train_micro_batch_size_per_gpu": 0})", "train_micro_batch_size_per_gpu must be a whole number >= 1, not 0"},
        {R"({"gradient_accumulation_steps": 2.5})", "gradient_accumulation_steps must be a whole number >= 1, not 2.5"},
        {R"({"gradient_clipping": "1.0"})", "gradient_clipping must be a number, not \"1.0\""},
        {R"({"train_batch_size": 64, "train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 2})",
         "train_batch_size 64 != train_micro_batch_size_per_gpu * gradient_accumulation_steps * GPUs (4 x 2 x 1 = 8)"},
        {R"({"optimizer": {"type": "SGD"}})", "optimizer.type \"SGD\" is not supported"},
        {R"({"optimizer": {"type": "AdamW", "params": {"lr": "fast"}}})", "optimizer.params.lr must be a number, not \"fast\""},
        {R"({"optimizer": {"type": "AdamW", "params": {"betas": [0.9]}}})", "optimizer.params.betas must be [beta1, beta2]"},
        {R"({"optimizer": {"type": "AdamW", "params": {"betas": [0.9, "x"]}}})", "optimizer.params.betas[1] must be a number, not \"x\""},
        {R"({"optimizer": {"type": "AdamW", "params": {"weight_decy": 0.1}}})", "optimizer.params.weight_decy is not a parameter of AdamW (did you mean weight_decay?)"},
        {R"({"optimizer": {"type": "Adam", "params": {"adam_w_mode": false, "weight_decay": 0.1}}})", "optimizer.params.adam_w_mode = false (Adam with L2 weight decay) is not supported"},
        {R"({"optimizer": {"type": "AdamW", "params": {"amsgrad": true}}})", "optimizer.params.amsgrad = true is not supported"},
        {R"({"scheduler": {"type": "OneCycle"}})", "scheduler.type \"OneCycle\" is not supported"},
        {R"({"scheduler": {"type": "WarmupCosineLR", "params": {"cosine_min_ratio": 0.1}}})", "scheduler.params.cosine_min_ratio is not a parameter of WarmupCosineLR (did you mean cos_min_ratio?)"},
        {R"({"scheduler": {"type": "WarmupCosineLR", "params": {"warmup_max_lr": 1e-4}}})", "scheduler.params.warmup_max_lr is not a parameter of WarmupCosineLR"},
        {R"({"scheduler": {"type": "WarmupLR", "params": {"total_num_steps": 100}}})", "scheduler.params.total_num_steps is not a parameter of WarmupLR"},
        {R"({"scheduler": {"type": "WarmupLR", "params": {"warmup_type": "cosine"}}})", "scheduler.params.warmup_type must be \"log\" or \"linear\", not \"cosine\""},
        {R"({"scheduler": {"type": "WarmupLR", "params": {"warmup_num_steps": 1.5}}})", "scheduler.params.warmup_num_steps must be a whole number >= 0, not 1.5"},
        {R"({"scheduler": {"type": "WarmupLR", "params": {"last_batch_iteration": 10}}})", "scheduler.params.last_batch_iteration must be -1"},
        {R"({"activation_checkpointing": {"partition_activation": true}})", "activation_checkpointing.partition_activation is not a key of activation_checkpointing (did you mean partition_activations?)"},
        {R"({"activation_checkpointing": "on"})", "activation_checkpointing must be an object, not \"on\""},
        {R"({"tensorboard": {"enabled": "yes"}})", "tensorboard.enabled must be true or false, not \"yes\""},
        {R"({"checkpoint": {"load_universal": "true"}})", "checkpoint.load_universal must be true or false, not \"true\""},
        {R"({"elasticity": {"enabled": true}})", "elasticity.enabled = true is not supported"},
        {R"({"curriculum_learning": {"enabled": true, "curriculum_type": "seqlen"}})", "curriculum_learning is a DeepSpeed feature this trainer does not have"},
        {R"({"steps_per_print": "often"})", "steps_per_print must be a number, not \"often\""},
        {R"({"zero_optimization": {"stage": 0, "offload_optimizer": {"device": "cpu"}}})", "zero_optimization.offload_optimizer: optimizer offload needs ZeRO stage 1, 2 or 3"},
        {R"([1, 2])", "a DeepSpeed config must be a JSON object"},
    };
    for (const Case& c : cases) {
        std::string json = c.json;
        CAPTURE(json);
        std::string e = config_error(c.json);
        CAPTURE(e);
        CHECK(e.rfind(temp_dir(""), 0) == 0);  // the file comes first: no flag was given
        CHECK(has(e, "ds_config_"));
        CHECK(has(e, c.message));
    }
    // a value that breaks a rule is named by the flag when the flag set it
    CHECK(has(config_error(R"({"zero_optimization": {"stage": 2}})", {"--offload", "--zero-stage", "0"}), "--offload: optimizer offload needs ZeRO stage 1, 2 or 3"));
}

TEST_CASE("cli: each recipe in configs/recipes/ runs --dry-run and shows its plan") {
    struct Recipe {
        const char* file;
        const char* flags;
        std::vector<const char*> plan;
    };
    const Recipe recipes[] = {
        {"llama32_1b_zero3_lora.json", "--lr 1e-4 --micro-batch 4 --grad-accum 2 --lora-dropout 0.05",
         {"plan: batch 8 sequences of 256 tokens per step = micro-batch 4 x accumulation 2 x 1 rank",
          "plan: lr WarmupLR (DeepSpeed's formulas): warmup", "log from 0.000e+00 to the peak 1.000e-04",
          "plan: lr at step 1: 0.000e+00, 2: 0.000e+00",
          "ZeRO stage 3 over 1 rank", "stage3_prefetch_bucket_size 3,774,873", "units of at most 20,480 elements stay replicated",
          "dropout 0.05", "optimizer.params.lr: \"auto\" -> 0.0001 (--lr)", "zero_optimization.reduce_bucket_size: \"auto\" -> 4,194,304",
          "no effect here: zero_optimization.stage3_gather_16bit_weights_on_model_save"}},
        {"accelerate_zero2.json", "",
         {"micro-batch 8 x accumulation 1 x 1 rank", "ZeRO stage 2 over 1 rank", "no effect here: steps_per_print",
          "train_micro_batch_size_per_gpu: \"auto\" -> 8 (default)", "plan: lr warmup-cosine"}},
        {"accelerate_zero3.json", "",
         {"micro-batch 8 x accumulation 4 x 1 rank", "ZeRO stage 3 over 1 rank", "optimizer offload to CPU (pinned memory",
          "GiB of CPU memory (offload)"}},
        {"aws_zero2_offload_cosine.json", "--lr 2e-5 --warmup-steps 5 --steps 50",
         {"plan: 50 steps (--steps)", "WarmupCosineLR (DeepSpeed's formulas): warmup 5 steps (--warmup-steps), linear from 0 x peak to the peak 2.000e-05",
          "then cosine to 0.1 x peak at step 50", "plan: lr at step 1: 0.000e+00, 2: 0.000e+00, 7: 1.998e-05, 25: 1.318e-05, 50: 2.022e-06",
          "ZeRO stage 2 over 1 rank", "optimizer offload to CPU", "optimizer.params.betas[0]: \"auto\" -> 0.9"}},
        {"workshop_zero1.json", "", {"micro-batch 4 x accumulation 2 x 1 rank", "ZeRO stage 1 over 1 rank", "all-reduce buckets of 500,000,000 elements",
                                     "WarmupLR (DeepSpeed's formulas): warmup 10 steps, linear", "lr at step 1: 0.000e+00, 2: 0.000e+00, 12: 2.000e-04"}},
        {"workshop_zero2.json", "", {"ZeRO stage 2 over 1 rank"}},
        {"workshop_zero2_offload.json", "", {"ZeRO stage 2 over 1 rank", "optimizer offload to CPU"}},
        {"workshop_zero3.json", "--ranks 4", {"ZeRO stage 3 over 4 ranks", "stage3_prefetch_bucket_size 50,000,000", "units of at most 100,000 elements",
                                              "micro-batch 4 x accumulation 2 x 4 ranks", "(--ranks: planned, not started)"}},
        {"workshop_zero3_offload.json", "", {"ZeRO stage 3 over 1 rank", "optimizer offload to CPU"}},
        {"llama2_7b_zero3.json", "--ranks 8 --epochs 2",
         {"plan: batch 64 sequences of 256 tokens per step = micro-batch 2 x accumulation 4 x 8 ranks",
          "WarmupDecayLR (DeepSpeed's formulas): warmup 100 steps, linear from 0.000e+00 to the peak 2.000e-05, then linear to 0.000e+00 at step 2000",
          "(scheduler.params.total_num_steps 2000; the run is", "epochs 2", "AdamW betas (0.9, 0.95), eps 1e-08, weight decay 0.1",
          "ZeRO stage 3 over 8 ranks", "stage3_prefetch_bucket_size 500,000,000", "units of at most 1,000,000 elements",
          "activation checkpointing on", "no effect here: checkpoint.load_universal", "tensorboard: event files go to logs/tensorboard/llama2_7b_zero3",
          "no effect here: csv_monitor", "no effect here: wandb"}},
    };
    int seen = 0;
    for (const Recipe& r : recipes) {
        Shell out = train(std::string("--preset llama-3.2-1b --seq 256 --dry-run --config configs/recipes/") + r.file + " " + r.flags);
        std::string file = r.file;
        CAPTURE(file);
        CAPTURE(out.output);
        CHECK(out.status == 0);
        CHECK(has(out.output, "memory per rank, estimate (GiB): weights "));
        CHECK(has(out.output, "memory per rank at each ZeRO stage on "));
        CHECK(has(out.output, "dry run: inputs are valid"));
        CHECK_FALSE(has_warning(out.output));
        CHECK_FALSE(has(out.output, "error"));
        for (const std::string part : r.plan) {
            CAPTURE(part);
            CHECK(has(out.output, part));
        }
        ++seen;
    }
    CHECK(seen == 10);
    // the 7B recipe's train_batch_size is for 8 ranks: on one it is one error naming the arithmetic
    Shell one = train("--preset llama-3.2-1b --seq 256 --dry-run --config configs/recipes/llama2_7b_zero3.json");
    CHECK(one.status == 1);
    CHECK(has(one.output, "error: configs/recipes/llama2_7b_zero3.json: train_batch_size 64 != train_micro_batch_size_per_gpu * "
                        "gradient_accumulation_steps * GPUs (2 x 4 x 1 = 8)"));
}

TEST_CASE("cli: --dry-run --ranks N answers \"what if\" for a 70B model, and a config.json without weights plans") {
    Shell big = train("--preset llama-3.1-70b --seq 1024 --micro-batch 1 --dry-run --ranks 8 --zero-stage 3 --checkpoint-activations");
    CAPTURE(big.output);
    CHECK(big.status == 0);
    CHECK(has(big.output, "plan: llama-3.1-70b, 70,553,706,496 parameters"));
    CHECK(has(big.output, "ZeRO stage 3 over 8 ranks"));
    CHECK(has(big.output, "memory per rank at each ZeRO stage on 8 ranks (GiB on each GPU, activations included): 0: 1"));
    CHECK(has(big.output, "activation checkpointing on"));
    Shell ranks = train("--preset tiny --ranks 4");
    CHECK(ranks.status == 1);
    CHECK(has(ranks.output, "error: --ranks N plans a run for N ranks without starting them: it needs --dry-run"));
    // a model directory holding only config.json (Llama-3.2-1B's shape): a plan, no training
    std::string dir = temp_dir("config_only");
    temp_file("config_only/config.json", R"({"model_type": "llama", "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
        "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256, "max_position_embeddings": 131072, "tie_word_embeddings": true})");
    Shell plan = train("--model " + dir + " --tokenizer data/tokenizer.json --seq 256 --dry-run --ranks 2 --zero-stage 2");
    CAPTURE(plan.output);
    CHECK(plan.status == 0);
    CHECK(has(plan.output, "holds a config.json without weights: a plan only"));
    CHECK(has(plan.output, "ZeRO stage 2 over 2 ranks"));
    Shell train_it = train("--model " + dir + " --tokenizer data/tokenizer.json --seq 256 --steps 1");
    CHECK(train_it.status == 1);
    CHECK(has(train_it.output, "no model.safetensors or model.safetensors.index.json in"));
}

TEST_CASE("cli: torchrun / deepspeed / accelerate launches without MPI are one error saying how to launch") {
    Shell first = train("--preset tiny --seq 64 --dry-run", "WORLD_SIZE=4 RANK=0 LOCAL_RANK=0 MASTER_ADDR=127.0.0.1 MASTER_PORT=29500");
    CAPTURE(first.output);
    CHECK(first.status == 1);
    CHECK(has(first.output, "error: started as one of 4 processes (WORLD_SIZE=4: torchrun, deepspeed or accelerate launch) but MPI sees a world of 1"));
    CHECK(has(first.output, "`mpirun -np 4 ./train ...`"));
    CHECK_FALSE(has(first.output, "dry run: inputs are valid"));
    Shell other = train("--preset tiny --seq 64 --dry-run", "WORLD_SIZE=4 RANK=3 LOCAL_RANK=3");
    CHECK(other.status == 1);
    CHECK(other.output.empty());  // the copy with RANK 0 says it once
    Shell single = train("--preset tiny --seq 64 --dry-run", "WORLD_SIZE=1 RANK=0 LOCAL_RANK=0");
    CHECK(single.status == 0);
    Shell merge = train("--preset tiny --seq 64 --dry-run --lora-rank 0 --merge");
    CHECK(merge.status == 1);
    CHECK(has(merge.output, "error: --merge merges LoRA adapters into the base: it needs LoRA"));
}

TEST_CASE("gpu: --merge writes OUT/model beside OUT/adapter; TensorBoard event files; the table's HF columns") {
    if (!need_gpu()) return;
    std::string out = temp_dir("merge_run");
    std::string tb = temp_dir("merge_run_tb");
    std::string config = temp_file("ds_tb.json", "{\"tensorboard\": {\"enabled\": true, \"output_path\": \"" + tb + "\", \"job_name\": \"job\"}}");
    Shell run = train("--preset tiny --seq 64 --micro-batch 4 --steps 12 --log-every 4 --eval-every 6 --sample 0 --merge --config " + config +
                       " --out " + out);
    CAPTURE(run.output);
    REQUIRE(run.status == 0);
    for (const char* name : {"/adapter/adapter_config.json", "/adapter/adapter_model.safetensors", "/model/config.json",
                             "/model/model.safetensors", "/model/tokenizer.json", "/summary.json"})
        CHECK(exists(out + name));
    CHECK(has(run.output, "the adapters merged into the base"));
    CHECK(has(run.output, "| train loss, mean over the run (HF's train_loss) | "));
    CHECK(has(run.output, "| train samples/s, all GPUs over the run's wall time (HF's train_samples_per_second) | "));
    CHECK(has(run.output, "| GPU memory in use, whole GPU as nvidia-smi shows it, peak / mean | "));
    std::string summary = read_file(out + "/summary.json");
    CHECK(has(summary, "\"mean_train_loss\": "));
    CHECK_FALSE(has(summary, "\"mean_train_loss\": null"));
    CHECK_FALSE(has(summary, "\"gpu_device_peak_gib\": null"));
    if (std::system("python3 -c 'import struct' > /dev/null 2>&1") != 0) return skip_test("python3 not found: event files not read back");
    Shell read = shell("python3 test/read_tensorboard.py " + tb + "/job --expect train/loss,train/learning_rate,train/grad_norm,"
                        "train/tokens_per_second,gpu/rank_memory_gib,eval/loss");
    CAPTURE(read.output);
    CHECK(read.status == 0);
    CHECK(has(read.output, "train/loss: 4 points, first step 4"));  // steps 4, 8, 12 and the evaluation's 6
    CHECK(has(read.output, "eval/loss: 2 points, first step 6"));
    CHECK(has(read.output, "ok: 1 file(s)"));
}
