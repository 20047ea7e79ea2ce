// test/test_cli.cpp — the ./train program from outside, as a user runs it: every mistake in flags,
// config files, model, adapter or data files ends with exactly one line `error: ...` naming the flag,
// file or field, and a non-zero exit, before any GPU work.
#include "test.h"

#include <sys/stat.h>
#include <sys/wait.h>

#include <cstdio>

namespace {

struct Run {
    int status;
    std::string output;
};

Run run(const std::string& args, const std::string& stdin_text = "", const std::string& env = "") {
    std::string in = temp_file("cli_stdin.txt", stdin_text);
    Shell r = shell(env + " ./train " + args + " < " + in);
    return {r.status, r.output};
}

// The last line of the output is the error, and it is the only error line.
void check_error(const std::string& args, const std::string& message, const std::string& env = "") {
    Run r = run(args, "", env);
    CAPTURE(args);
    CAPTURE(r.output);
    CHECK(r.status == 1);
    size_t at = r.output.find("error: ");
    REQUIRE(at != std::string::npos);
    CHECK(r.output.find("error: ", at + 1) == std::string::npos);
    CHECK(r.output.substr(at).find(message) != std::string::npos);
    CHECK(r.output.find('\n', at) == r.output.size() - 1);
}

}  // namespace

TEST_CASE("cli: help, tokenize and a dry run succeed") {
    Run help = run("--help");
    CHECK(help.status == 0);
    CHECK(help.output.find("--lora-rank") != std::string::npos);
    Run tok = run("tokenize", "Hello world\n");
    CHECK(tok.status == 0);
    CHECK(tok.output == "9906 1917 198\n");
    Run special = run("tokenize", "<|start_header_id|>user<|end_header_id|>");
    CHECK(special.output == "128006 882 128007\n");
    Run dry = run("--preset tiny --seq 128 --dry-run --out " + temp_dir("cli_dry"));
    CHECK(dry.status == 0);
    CHECK(dry.output.find("dry run: inputs are valid") != std::string::npos);
    Run qwen3 = run("--preset qwen3-0.6b --seq 128 --dry-run --chat-template");  // Qwen3-0.6B's shape, its tokenizer and template
    CHECK(qwen3.status == 0);
    CHECK(qwen3.output.find("model qwen3-0.6b, 596,049,920 parameters") != std::string::npos);
    CHECK(qwen3.output.find("(question/answer in the Qwen3 chat template)") != std::string::npos);
    // a 13B's full fine-tuning on one GPU, estimated without one (its Llama-2 vocabulary: the default
    // Llama-2-family tokenizer)
    std::string rows = temp_file("dry_13b.jsonl", "{\"text\": \"a harbor is a sheltered port\"}\n");
    Run big = run("--preset llama-2-13b --lora-rank 0 --zero-stage 3 --offload --checkpoint-activations --seq 4096 --micro-batch 1 "
                  "--data " + rows + " --dry-run");
    CAPTURE(big.output);
    CHECK(big.status == 0);
    CHECK(big.output.find("13,015,864,320 parameters") != std::string::npos);
    CHECK(big.output.find("memory per rank, estimate (GiB): weights 24.24, gathered units 0.00, master 0.00, grads 48.49") != std::string::npos);
    CHECK(big.output.find("GiB of CPU memory (offload)") != std::string::npos);
}

TEST_CASE("cli: each bad flag is one error line") {
    check_error("--bogus", "unknown option --bogus");
    check_error("--seq x", "--seq needs a whole number, not \"x\"");
    check_error("--seq 1", "--seq must be in [2,");
    check_error("--micro-batch", "--micro-batch needs a value");
    check_error("--lr -1", "--lr must be positive");
    check_error("--preset huge --dry-run", "unknown preset \"huge\"");
    check_error("--model /nonexistent --dry-run", "--model /nonexistent: no config.json there");
    check_error("--model a --preset tiny", "--model and --preset exclude each other");
    check_error("--steps 5 --epochs 2", "--steps and --epochs exclude each other");
    check_error("--preset tiny --lora-targets q,x --dry-run", "unknown LoRA target \"x\"");
    check_error("--lr-schedule sawtooth", "unknown schedule \"sawtooth\"");
    check_error("--eval-fraction 2", "--eval-fraction must be in (0, 1)");
    check_error("--preset tiny --seq 9000 --dry-run", "--seq 9000 exceeds the model's max_position_embeddings (8192)");
    check_error("--adapter /nonexistent", "--adapter /nonexistent: no adapter_config.json there");
    check_error("tokenize --tokenizer /nonexistent/tokenizer.json", "tokenizer /nonexistent/tokenizer.json not found");
    check_error("tokenize --bogus", "unknown option --bogus for tokenize");
    check_error("tokenize --tokenizer ''", "--tokenizer needs a value, not an empty string");  // as the training command says
}

TEST_CASE("cli: bad config files, model directories and data files") {
    std::string fp16 = temp_file("ds_fp16.json", R"({"fp16": {"enabled": true}})");
    check_error("--config " + fp16, "ds_fp16.json: fp16.enabled = true is not supported");
    std::string broken = temp_file("ds_broken.json", "{\"train_micro_batch_size_per_gpu\": 4,,}");
    check_error("--config " + broken, "ds_broken.json:1:38: expected a string key");
    std::string sched = temp_file("ds_sched.json", R"({"scheduler": {"type": "OneCycle"}})");
    check_error("--config " + sched, "scheduler.type \"OneCycle\" is not supported");
    std::string stage = temp_file("ds_stage.json", R"({"zero_optimization": {"stage": 5}})");
    check_error("--config " + stage, "zero_optimization.stage must be 0, 1, 2 or 3");
    std::string batch = temp_file("ds_batch.json", R"({"train_batch_size": 64, "train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 2})");
    check_error("--config " + batch, "train_batch_size 64 != train_micro_batch_size_per_gpu * gradient_accumulation_steps");
    std::string opt = temp_file("ds_opt.json", R"({"optimizer": {"type": "SGD", "params": {"lr": 0.1}}})");
    check_error("--config " + opt, "optimizer.type \"SGD\" is not supported");

    std::string good = temp_file("ds_good.json", R"({"train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": 2,
        "optimizer": {"type": "AdamW", "params": {"lr": 1e-4, "betas": [0.9, 0.95], "eps": 1e-8, "weight_decay": 0.1}},
        "scheduler": {"type": "WarmupCosineLR", "params": {"warmup_num_steps": 10, "total_num_steps": 100}},
        "bf16": {"enabled": true}, "zero_optimization": {"stage": 3, "overlap_comm": true}, "flops_profiler": {}})");
    Run r = run("--preset tiny --seq 128 --dry-run --config " + good + " --out " + temp_dir("cli_good_config"));
    CHECK(r.status == 0);
    CHECK(r.output.find("config: " + good + ": no effect here: flops_profiler (") != std::string::npos);

    std::string mistral = temp_dir("mistral");
    temp_file("mistral/config.json", R"({"model_type": "mistral", "hidden_size": 64})");
    check_error("--model " + mistral + " --dry-run", "mistral/config.json: model_type must be one of \"llama\", \"qwen3\", not \"mistral\"");
    std::string noweights = temp_dir("noweights");
    temp_file("noweights/config.json", R"({"model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 1, "num_attention_heads": 2, "vocab_size": 128256, "max_position_embeddings": 512})");
    check_error("--model " + noweights + " --seq 64 --steps 1", "no model.safetensors or model.safetensors.index.json in");

    check_error("--preset tiny --data /nonexistent.jsonl --dry-run", "cannot read dataset /nonexistent.jsonl");
    std::string rows = temp_file("cli_rows.jsonl", "{\"text\": \"fine\"}\n{\"question\": 3, \"answer\": \"x\"}\n");
    check_error("--preset tiny --seq 64 --data " + rows + " --dry-run", "cli_rows.jsonl:2: field \"question\" must be a string, not a number");
    std::string tok = temp_file("cli_tokenizer.json", "{\"model\": ");
    check_error("--preset tiny --tokenizer " + tok + " --dry-run", "cli_tokenizer.json:1:11:");
}

TEST_CASE("cli: the launch: a transport that does not exist, and srun tasks that MPI does not see") {
    check_error("--comm tcp --preset tiny --dry-run", "--comm must be nccl, mpi or auto, not \"tcp\"");
    // srun --mpi=none starts N separate worlds of one: each would write the same output
    check_error("--preset tiny --seq 64 --dry-run", "the launcher started 2 tasks but MPI sees a world of 1 (with srun use --mpi=pmix",
                "SLURM_STEP_NUM_TASKS=2 SLURM_PROCID=0");
}

TEST_CASE("cli: a step on paper: --dry-run --ranks N --nodes M prints each rank's bytes and the step time") {
    std::string base = "--preset tiny --seq 64 --lora-rank 0 --zero-stage 3 --dry-run ";
    Run one = run(base + "--ranks 8");
    CAPTURE(one.output);
    REQUIRE(one.status == 0);
    CHECK(one.output.find("communication per step per rank (ZeRO stage 3, 8 ranks, formula): all-gather ") != std::string::npos);
    CHECK(one.output.find("over NVLink in one node, 360 GB/s: the step takes ") != std::string::npos);
    CHECK(one.output.find("at 445 TFLOP/s, assumed: 45% of an H100's bf16 peak") != std::string::npos);
    CHECK(one.output.find("at each ZeRO stage: 0: 2 Psi, ") != std::string::npos);  // full fine-tuning: 2, 3, 2 Psi
    CHECK(one.output.find("; 1: 3 Psi, ") != std::string::npos);
    CHECK(one.output.find("; 2: 2 Psi, ") != std::string::npos);
    Run nodes = run(base + "--ranks 8 --nodes 2 --tflops 200");
    CAPTURE(nodes.output);
    REQUIRE(nodes.status == 0);
    CHECK(nodes.output.find("over 2 nodes of 4 GPUs, the ring crosses the network, 25 GB/s") != std::string::npos);
    CHECK(nodes.output.find("at 200 TFLOP/s, --tflops)") != std::string::npos);
    CHECK(run(base + "--ranks 8 --nodes 2 --interconnect 50").output.find("the ring crosses the network, 50 GB/s (given)") != std::string::npos);
    std::string fast = temp_file("ds_fast.json", R"({"interconnect_GBps": 900})");
    CHECK(run(base + "--ranks 4 --config " + fast).output.find("NVLink in one node, 900 GB/s (given)") != std::string::npos);
    check_error("--preset tiny --ranks 4", "--ranks N plans a run for N ranks without starting them: it needs --dry-run");
    check_error("--preset tiny --nodes 2", "--nodes M plans a run over M nodes: it needs --dry-run");
    check_error("--preset tiny --seq 64 --dry-run --ranks 8 --nodes 3", "--nodes 3: the nodes must divide the 8 ranks evenly");
    check_error("--preset tiny --seq 64 --dry-run --nodes 2", "--nodes 2: the nodes must divide the 1 ranks evenly");
    check_error("--preset tiny --dry-run --ranks 0", "--ranks must be in [1,");
    check_error("--preset tiny --dry-run --interconnect 0", "--interconnect must be a positive bandwidth in GB/s");
    check_error("--preset tiny --dry-run --interconnect fast", "--interconnect needs a number, not \"fast\"");
    check_error("--preset tiny --dry-run --tflops -5", "--tflops must be positive");
    std::string slow = temp_file("ds_slow.json", R"({"interconnect_GBps": -1})");
    check_error("--preset tiny --dry-run --config " + slow, "ds_slow.json: interconnect_GBps must be a positive bandwidth in GB/s");
    std::string word = temp_file("ds_word.json", R"({"interconnect_GBps": "fast"})");
    check_error("--preset tiny --dry-run --config " + word, "ds_word.json: interconnect_GBps must be a number, not \"fast\"");
}

TEST_CASE("cli: ZeRO flags, DeepSpeed zero_optimization keys and damaged checkpoints") {
    check_error("--zero-stage 4", "--zero-stage must be in [0, 3], not 4");
    check_error("--offload --preset tiny --dry-run", "--offload: optimizer offload needs ZeRO stage 1, 2 or 3");
    std::string off0 = temp_file("ds_off0.json", R"({"zero_optimization": {"stage": 0, "offload_optimizer": {"device": "cpu"}}})");
    check_error("--config " + off0, "ds_off0.json: zero_optimization.offload_optimizer: optimizer offload needs ZeRO stage 1, 2 or 3");
    std::string nvme = temp_file("ds_nvme.json", R"({"zero_optimization": {"stage": 3, "offload_optimizer": {"device": "nvme"}}})");
    check_error("--config " + nvme, "offload_optimizer.device \"nvme\" is not supported");
    std::string bucket = temp_file("ds_bucket.json", R"({"zero_optimization": {"stage": 2, "reduce_bucket_size": 0}})");
    check_error("--config " + bucket, "zero_optimization.reduce_bucket_size must be a whole number >= 1");
    std::string ok = temp_file("ds_z3.json", R"({"zero_optimization": {"stage": 3, "offload_optimizer": {"device": "cpu", "pin_memory": true},
        "overlap_comm": true, "contiguous_gradients": true, "stage3_prefetch_bucket_size": 1000, "stage3_param_persistence_threshold": 10},
        "activation_checkpointing": {"partition_activations": false}})");
    Run r = run("--preset tiny --seq 64 --dry-run --config " + ok + " --out " + temp_dir("cli_z3"));
    CHECK(r.status == 0);
    CHECK_FALSE(has_warning(r.output));
    CHECK(r.output.find("each unit's AdamW on a stream of its own") == std::string::npos);  // offload: the CPU's
    // the GPU optimizer beside the next forward, or on the compute stream with --serial-update: the plan says which
    Run overlapped = run("--preset tiny --seq 64 --dry-run --out " + temp_dir("cli_update"));
    CHECK(overlapped.status == 0);
    CHECK(overlapped.output.find("; each unit's AdamW on a stream of its own, beside the next forward") != std::string::npos);
    Run serial = run("--preset tiny --seq 64 --dry-run --serial-update --out " + temp_dir("cli_update_serial"));
    CHECK(serial.status == 0);
    CHECK(serial.output.find("; AdamW on the compute stream (--serial-update)") != std::string::npos);
    check_error("--preset tiny --seq 64 --dry-run --zero-stage 2 --offload --serial-update", "--offload: --serial-update applies to the GPU optimizer");
    // a checkpoint directory whose latest step was cut short: refused, pointing at the last good one
    std::string out = temp_dir("resume_out");
    temp_dir("resume_out/checkpoints");
    temp_dir("resume_out/checkpoints/step-10");
    temp_file("resume_out/checkpoints/step-10/zero.json", "{}");
    temp_file("resume_out/checkpoints/step-10/trainer.json", "{}");
    temp_dir("resume_out/checkpoints/step-20");
    temp_file("resume_out/checkpoints/latest", "step-20\n");
    check_error("--preset tiny --seq 64 --dry-run --resume --out " + out,
                "checkpoint " + out + "/checkpoints/step-20 is incomplete or damaged (no zero.json); the last complete one is " + out +
                    "/checkpoints/step-10: resume it with --resume " + out + "/checkpoints/step-10");
    temp_file("resume_out/checkpoints/step-10/zero.json", R"({"world_size": 2, "model": "another"})");
    check_error("--preset tiny --seq 64 --dry-run --resume " + out + "/checkpoints/step-10", "is from another model");
}

TEST_CASE("cli: every workshop config in configs/ is accepted without warnings") {
    int seen = 0;
    for (const char* name : {"stage0", "stage1", "stage2", "stage3", "stage3_offload", "stage3_offload_checkpointing"}) {
        Run r = run("--preset tiny --seq 64 --dry-run --config configs/" + std::string(name) + ".json --out " + temp_dir("cli_config_" + std::string(name)));
        CAPTURE(std::string(name));
        CAPTURE(r.output);
        CHECK(r.status == 0);
        CHECK_FALSE(has_warning(r.output));
        bool recompute = std::string(name) == "stage3_offload_checkpointing";
        CHECK((r.output.find("plan: activation checkpointing on") != std::string::npos) == recompute);
        ++seen;
    }
    CHECK(seen == 6);
}

TEST_CASE("gpu: out of memory and a diverging loss are one error line each") {
    if (!need_gpu()) return;
    check_error("--preset llama-3.2-1b --data data/corpus --seq 4096 --micro-batch 4096 --steps 1 --out " + temp_dir("cli_oom_1"),
                "GPU out of memory: ");
    Run r = run("--preset llama-3.2-1b --data data/corpus --seq 4096 --micro-batch 4096 --steps 1 --out " + temp_dir("cli_oom_2"));
    CHECK(r.output.find("lower --micro-batch or --seq") != std::string::npos);
    check_error("--preset tiny --seq 64 --micro-batch 4 --lr 1e30 --clip 0 --steps 20 --sample 0 --out " + temp_dir("cli_nan"), "at step ");
}

TEST_CASE("cli: data that is no dataset is one error line; the data line names the format and the rows dropped") {
    check_error("--preset tiny --seq 64 --data /bin/ls --dry-run", "dataset /bin/ls is not text (");
    std::string fifo = temp_dir("cli_fifo") + "/pipe";
    REQUIRE(mkfifo(fifo.c_str(), 0600) == 0);
    check_error("--preset tiny --seq 64 --data " + fifo + " --dry-run", "dataset " + fifo + " is a FIFO (named pipe), not a file");
    check_error("--preset tiny --seq 64 --data /dev/zero --dry-run", "dataset /dev/zero is a character device, not a file");
    std::string rows = temp_file("cli_ok.jsonl", "{\"text\": \"fine\"}\n");
    check_error("--preset tiny --seq 64 --data " + rows + ", --dry-run", "--data \"" + rows + ",\" has an empty entry");
    check_error("--preset tiny --seq 64 --data " + rows + " --eval-data ," + rows + " --dry-run",
                "--eval-data \"," + rows + "\" has an empty entry");
    std::string wiki = temp_file("cli_wikiqa.jsonl", "{\"question\": \"Q?\", \"answer\": \"yes\", \"label\": 1}\n"
                                                     "{\"question\": \"Q?\", \"answer\": \"no\", \"label\": 0}\n"
                                                     "{\"question\": \"Q?\", \"answer\": \"nope\", \"label\": 0}\n");
    Run r = run("--preset tiny --seq 64 --dry-run --data " + wiki);
    CAPTURE(r.output);
    CHECK(r.status == 0);
    CHECK(r.output.find("data: train " + wiki + " (WikiQA): 1 rows in 1 sequences") != std::string::npos);
    CHECK(r.output.find(", 2 rows dropped (WikiQA label 0: a candidate sentence that does not answer)\n") != std::string::npos);
}

TEST_CASE("cli: bench/multigpu.sh refuses with one line where fewer than 2 GPUs are visible") {
    // nvidia-smi stand-ins first on PATH: one that lists one GPU, one that fails (no driver)
    std::string one = temp_dir("multigpu_one_gpu"), none = temp_dir("multigpu_no_gpu");
    temp_file("multigpu_one_gpu/nvidia-smi", "#!/bin/sh\necho 'GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-00000000-0000-0000-0000-000000000000)'\n");
    temp_file("multigpu_no_gpu/nvidia-smi", "#!/bin/sh\necho 'NVIDIA-SMI has failed' >&2\nexit 9\n");
    chmod((one + "/nvidia-smi").c_str(), 0755), chmod((none + "/nvidia-smi").c_str(), 0755);
    struct Case { std::string env, expected; };
    const Case cases[] = {
        {"env -u CUDA_VISIBLE_DEVICES PATH=" + one + ":$PATH", "bench/multigpu.sh: needs 2 or more GPUs, 1 visible"},
        {"env -u CUDA_VISIBLE_DEVICES PATH=" + none + ":$PATH", "bench/multigpu.sh: needs 2 or more GPUs, 0 visible"},
        {"env CUDA_VISIBLE_DEVICES=3 PATH=" + one + ":$PATH", "bench/multigpu.sh: needs 2 or more GPUs, 1 visible"},
    };
    for (const Case& c : cases) {
        Shell r = shell(c.env + " bash bench/multigpu.sh");
        const std::string& out = r.output;
        CAPTURE(c.env);
        CAPTURE(out);
        CHECK(r.status == 1);
        CHECK(out.rfind(c.expected, 0) == 0);
        CHECK(out.find('\n') == out.size() - 1);  // one line
    }
}
