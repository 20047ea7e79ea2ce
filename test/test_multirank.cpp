// test/test_multirank.cpp — the ZeRO protocol with several ranks, for real: `mpirun -np N ./train` with
// N = 2, 3, 4 on whatever GPUs the machine has (ranks share a GPU through the MPI transport when there are
// fewer GPUs than ranks). Each run is compared with one rank at the same global batch (the same rows per
// step: N ranks x micro-batch 12/N):
//   - every stage, LoRA and full fine-tuning, offload, activation checkpointing, gradient accumulation:
//     the loss of each of 20 steps within kLossBound of the one-rank run, the eval loss too, and the
//     same greedy sample answer (its first kSampleWords words: a 20-step model from random init ends its
//     answers in near-ties, such as how often " of" repeats before the end token, that rounding can flip);
//   - 10 steps + checkpoint, resumed on 2 ranks for 10, resumed on 3 ranks for 10: the one-rank trajectory;
//   - the memory report per rank falls with the stage, model states within 5% of the ZeRO estimate;
//   - the bytes each collective kind moves in every step equal ZeroStore::traffic's formula, exactly, at
//     every stage, LoRA and full, with accumulation, recompute, keep_gathered, persistence thresholds,
//     buckets, no prefetch, offload, and one rank in place;
//   - failures end every rank: a rank killed mid-step, a bad file seen by one rank, ranks whose options
//     differ, --comm nccl on a shared GPU; a rank stopped mid-run (SIGSTOP) ends every rank within
//     --comm-timeout with a line naming what it waited for (the MPI transport, and NCCL on 2+ GPUs);
//   - every run compares its collective sequence across ranks at each step (--check-collectives), and its
//     checkpoints record each rank file's size.
// Why a bound and not bitwise: with N ranks each product runs on 1/N of the rows (cuBLASLt may choose
// another algorithm), partial sums of the loss and gradients are added in another order, and bf16 rounds
// each intermediate; these differences are ~1e-3 relative per step and LoRA training does not amplify
// them over 20 steps at these learning rates. kLossBound = 1% per step catches any protocol error (a
// shard summed twice or dropped moves the loss by far more), while the rounding stays well inside it.
#include "test.h"

#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>
#include <map>
#include <sstream>
#include <thread>
#include <cstring>

#include "support/cuda_calls.h"
#include "support/json.h"
#include "zero3.h"

namespace {

constexpr double kLossBound = 1e-2;
constexpr int kSampleWords = 3;

std::string first_words(const std::string& line, int n) {
    std::stringstream ss(line.substr(std::min(line.size(), size_t(8))));  // after "  model:"
    std::string word, out;
    for (int i = 0; i < n && ss >> word; ++i) out += word + " ";
    return out;
}

bool have_mpirun() { return std::system("command -v mpirun > /dev/null 2>&1") == 0; }

struct Result {
    int status = -1;
    std::string output;
    std::vector<double> losses;  // per step
    double eval_loss = NAN;      // the last evaluation
    std::vector<std::string> samples;
    std::vector<std::vector<double>> comm;  // per step: the paper's bytes of all-gather, reduce-scatter, all-reduce
};

std::string exe() {
    char buf[4096];
    return std::string(getcwd(buf, sizeof buf)) + "/train";
}

std::string mpirun(int n) {
    return "timeout 300 mpirun --allow-run-as-root --oversubscribe --bind-to none -x NCCL_NVLS_ENABLE=0 -np " + std::to_string(n) + " ";
}

Result read_run(const std::string& out_dir, FILE* p) {
    Result r;
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, p)) > 0) r.output.append(buf, n);
    int status = pclose(p);
    r.status = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    std::ifstream csv(out_dir + "/train_log.csv");
    std::string line;
    std::getline(csv, line);  // header
    while (std::getline(csv, line)) {
        std::vector<std::string> f;
        std::stringstream ss(line);
        std::string cell;
        while (std::getline(ss, cell, ',')) f.push_back(cell);
        if (f.size() >= 3 && !f[2].empty()) r.losses.push_back(std::stod(f[2]));
        if (f.size() >= 11 && !f[10].empty()) r.eval_loss = std::stod(f[10]);
        if (f.size() >= 14) r.comm.push_back({std::stod(f[11]), std::stod(f[12]), std::stod(f[13])});
    }
    std::stringstream out(r.output);
    while (std::getline(out, line))
        if (line.rfind("  model:", 0) == 0) r.samples.push_back(line);
    return r;
}

// ./train on n ranks (n = 0: without mpirun); `args` get --out DIR appended.
Result train(int n, const std::string& args, const std::string& out_dir) {
    std::string cmd = (n ? mpirun(n) : std::string("timeout 300 ")) + exe() + " " + args + " --out " + out_dir + " 2>&1";
    FILE* p = popen(cmd.c_str(), "r");
    REQUIRE(p);
    return read_run(out_dir, p);
}

std::string data_file() {  // 600 QA rows: a few seconds per run
    static std::string path = [] {
        std::ifstream in("data/qa_train.jsonl");
        std::string text, line;
        for (int i = 0; i < 600 && std::getline(in, line); ++i) text += line + "\n";
        return temp_file("multirank_rows.jsonl", text);
    }();
    return path;
}

std::string eval_file() {  // 120 rows: an eval pass of ten micro-batches
    static std::string path = [] {
        std::ifstream in("data/qa_eval.jsonl");
        std::string text, line;
        for (int i = 0; i < 120 && std::getline(in, line); ++i) text += line + "\n";
        return temp_file("multirank_eval.jsonl", text);
    }();
    return path;
}

std::string common_args(const std::string& extra) {
    return "--preset tiny --data " + data_file() + " --eval-data " + eval_file() + " --seq 64 --steps 20 --log-every 1 --lr 2e-3 "
           "--sample 1 --seed 7 --check-collectives " + extra;
}

void check_same_training(const Result& one, const Result& many, const std::string& what) {
    CAPTURE(what);
    CAPTURE(many.output);
    REQUIRE(one.status == 0);
    REQUIRE(many.status == 0);
    REQUIRE(many.losses.size() == one.losses.size());
    double worst = 0;
    for (size_t s = 0; s < one.losses.size(); ++s) worst = std::max(worst, std::fabs(many.losses[s] - one.losses[s]) / one.losses[s]);
    MESSAGE(what << ": worst step loss difference from one rank " << worst);
    CHECK(worst < kLossBound);
    CHECK(std::fabs(many.eval_loss - one.eval_loss) / one.eval_loss < kLossBound);
    REQUIRE(many.samples.size() == one.samples.size());
    for (size_t i = 0; i < one.samples.size(); ++i) {
        CAPTURE(one.samples[i]);
        CAPTURE(many.samples[i]);
        CHECK(first_words(many.samples[i], kSampleWords) == first_words(one.samples[i], kSampleWords));
    }
    if (many.samples != one.samples) MESSAGE(what << ": the sample answers differ after their first " << kSampleWords << " words");
}

// The "memory per rank" line: estimate -> allocated, by category.
std::map<std::string, std::pair<double, double>> memory_line(const std::string& output) {
    std::map<std::string, std::pair<double, double>> m;
    size_t at = output.find("ZeRO estimate -> allocated:");
    if (at == std::string::npos) return m;
    std::string line = output.substr(at, output.find('\n', at) - at);
    for (const char* key : {"weights", "master", "grads", "moments", "CPU"}) {
        size_t k = line.find(std::string(" ") + key + " ");
        if (k == std::string::npos) continue;
        double a = 0, b = 0;
        if (std::sscanf(line.c_str() + k + std::strlen(key) + 2, "%lf -> %lf", &a, &b) == 2) m[key] = {a, b};
    }
    return m;
}

// One rank alone on its GPU: after the first step its figure (tracked + context + NCCL and library buffers)
// is the GPU's in-use memory, give or take what other processes hold.
void check_first_step_memory(const std::string& output) {
    size_t at = output.find("memory per rank after the first step (GiB): NCCL and library buffers ");
    double untracked = 0, rank = 0, gpu = 0;
    int got = at == std::string::npos ? 0 : std::sscanf(output.c_str() + at, "memory per rank after the first step (GiB): NCCL and library "
                                                        "buffers %lf (%*[^)]), this rank on its GPU %lf (GPU in use %lf)", &untracked, &rank, &gpu);
    MESSAGE("one rank after its first step: NCCL and library buffers " << untracked << " GiB, the rank " << rank << " GiB, the GPU " << gpu << " GiB");
    CAPTURE(output);
    REQUIRE(got == 3);
    CHECK(untracked >= 0);
    CHECK(std::fabs(rank - gpu) <= 0.02 * gpu + 0.01);
}

bool gpu_and_mpi() {
    if (!need_gpu()) return false;
    if (!have_mpirun()) {
        skip_test("no mpirun");
        return false;
    }
    return true;
}

}  // namespace

TEST_CASE("gpu: 2, 3 and 4 ranks train like one rank at every stage, with offload, recompute and accumulation") {
    if (!gpu_and_mpi()) return;
    struct Case { std::string name, flags; int accum; };
    const Case cases[] = {
        {"stage 0 LoRA", "--zero-stage 0", 1},
        {"stage 1 full fine-tuning", "--zero-stage 1 --lora-rank 0 --lr 2e-4", 1},
        {"stage 2 LoRA, 2 accumulation steps", "--zero-stage 2", 2},
        {"stage 3 LoRA", "--zero-stage 3", 1},
        {"stage 3 full fine-tuning, activation checkpointing", "--zero-stage 3 --lora-rank 0 --lr 2e-4 --checkpoint-activations", 1},
        {"stage 3 LoRA, CPU offload", "--zero-stage 3 --offload", 1},
        {"stage 2 full fine-tuning, CPU offload", "--zero-stage 2 --offload --lora-rank 0 --lr 2e-4", 1},
    };
    int k = 0;
    for (const Case& c : cases) {
        int rows = 12 / c.accum;  // per step across ranks: 12
        Result one = train(1, common_args(c.flags + " --micro-batch " + std::to_string(rows) + " --grad-accum " + std::to_string(c.accum)),
                           temp_dir("mr_" + std::to_string(k) + "_1"));
        if (k == 0) check_first_step_memory(one.output);
        for (int n : {2, 3, 4}) {
            if (rows % n) continue;
            Result many = train(n, common_args(c.flags + " --micro-batch " + std::to_string(rows / n) + " --grad-accum " + std::to_string(c.accum)),
                                temp_dir("mr_" + std::to_string(k) + "_" + std::to_string(n)));
            check_same_training(one, many, c.name + " on " + std::to_string(n) + " ranks");
        }
        ++k;
    }
}

TEST_CASE("gpu: 10 steps on 4 ranks, resumed on 2 ranks for 10, resumed on 3 ranks for 10: the one-rank trajectory") {
    if (!gpu_and_mpi()) return;
    std::string args = "--zero-stage 3 --steps 30 --save-every 10 ";
    Result one = train(1, common_args(args + "--micro-batch 12"), temp_dir("resume_1"));
    std::string a = temp_dir("resume_a"), b = temp_dir("resume_b"), c = temp_dir("resume_c");
    Result first = train(4, common_args(args + "--micro-batch 3"), a);
    {  // each rank file's size is recorded, and is the file's
        Json meta = read_json_file(a + "/checkpoints/step-10/zero.json");
        const Json* files = meta.find("files");
        REQUIRE(files);
        CHECK(files->object.size() == 4);
        for (const auto& [name, size] : files->object) CHECK(int64_t(read_file(a + "/checkpoints/step-10/" + name).size()) == size.integer);
    }
    Result second = train(2, common_args(args + "--micro-batch 6 --resume " + a + "/checkpoints/step-10"), b);
    Result third = train(3, common_args(args + "--micro-batch 4 --resume " + b + "/checkpoints/step-20"), c);
    REQUIRE(first.status == 0);
    CAPTURE(second.output);
    REQUIRE(second.status == 0);
    CAPTURE(third.output);
    REQUIRE(third.status == 0);
    CHECK(second.output.find("resume: " + a + "/checkpoints/step-10 (step 10 of 30") != std::string::npos);
    std::vector<double> joined(first.losses.begin(), first.losses.begin() + 10);
    joined.insert(joined.end(), second.losses.begin(), second.losses.begin() + 10);
    joined.insert(joined.end(), third.losses.begin(), third.losses.end());
    REQUIRE(joined.size() == one.losses.size());
    double worst = 0;
    for (size_t s = 0; s < joined.size(); ++s) worst = std::max(worst, std::fabs(joined[s] - one.losses[s]) / one.losses[s]);
    MESSAGE("4 -> 2 -> 3 ranks with two resumes: worst step loss difference from one rank " << worst);
    CHECK(worst < kLossBound);
    // another global batch cannot continue the same rows: refused with the numbers
    Result refused = train(2, common_args(args + "--micro-batch 5 --resume " + a + "/checkpoints/step-10"), temp_dir("resume_bad"));
    CHECK(refused.status != 0);
    CHECK(refused.output.find("the checkpoint takes 12 sequences per step, this run 10") != std::string::npos);
}

TEST_CASE("gpu: memory per rank falls with the stage; model states match the ZeRO estimate") {
    if (!gpu_and_mpi()) return;
    double previous = 1e30;
    for (int stage = 0; stage <= 3; ++stage) {
        Result r = train(4, "--preset tiny --data " + data_file() + " --seq 64 --steps 2 --micro-batch 3 --lora-rank 0 --sample 0 --zero-stage " +
                                std::to_string(stage),
                         temp_dir("mem_" + std::to_string(stage)));
        CAPTURE(r.output);
        REQUIRE(r.status == 0);
        auto m = memory_line(r.output);
        REQUIRE(m.size() >= 4);
        double states = 0;
        for (const auto& [key, v] : m) {
            CAPTURE(key);
            CHECK(std::fabs(v.second - v.first) <= 0.05 * v.first + 0.0015);  // 5%, and the line's 3 decimals
            if (key != "CPU") states += v.second;
        }
        MESSAGE("stage " << stage << " on 4 ranks: model states " << states << " GiB per rank");
        CHECK(states < previous * (stage == 0 ? 1.0 : 0.999));
        previous = states;
    }
}

TEST_CASE("gpu: every step's bytes per collective kind equal the formula, for every stage and option, on 1-4 ranks") {
    if (!gpu_and_mpi()) return;
    struct Case {
        std::string name, flags;
        int ranks, accumulation;
        int lora_rank;
        std::function<void(ZeroOptions&)> options;  // what the flags or config set
    };
    std::string buckets = temp_file("comm_buckets.json", R"({"zero_optimization": {"stage": 1, "reduce_bucket_size": 100000}})");
    std::string kept = temp_file("comm_kept.json", R"({"zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 1000000}})");
    std::string bare = temp_file("comm_bare.json",
                                 R"({"zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0, "stage3_prefetch_bucket_size": 0}})");
    const Case cases[] = {
        {"stage 0 LoRA", "--zero-stage 0", 2, 1, 16, [](ZeroOptions& z) { z.stage = 0; }},
        {"stage 1 full, all-reduce buckets of 100,000", "--config " + buckets, 3, 1, 0, [](ZeroOptions& z) { z.stage = 1, z.reduce_bucket_size = 100000; }},
        {"stage 2 LoRA, 2 accumulation steps", "--zero-stage 2", 4, 2, 16, [](ZeroOptions& z) { z.stage = 2; }},
        {"stage 3 LoRA", "--zero-stage 3", 3, 1, 16, [](ZeroOptions& z) { z.stage = 3; }},
        {"stage 3 full, 2 accumulation steps, recompute", "--zero-stage 3 --checkpoint-activations", 4, 2, 0, [](ZeroOptions& z) { z.stage = 3; }},
        {"stage 3 full, --keep-gathered", "--zero-stage 3 --keep-gathered", 2, 1, 0, [](ZeroOptions& z) { z.stage = 3, z.keep_gathered = true; }},
        {"stage 3 LoRA, layers kept replicated (threshold 1,000,000)", "--config " + kept, 4, 1, 16,
         [](ZeroOptions& z) { z.stage = 3, z.persistence_threshold = 1000000; }},
        {"stage 3 full, every unit sharded, no prefetch", "--config " + bare, 3, 1, 0,
         [](ZeroOptions& z) { z.stage = 3, z.persistence_threshold = 0, z.prefetch_bucket_size = 0; }},
        {"stage 1 LoRA, CPU offload", "--zero-stage 1 --offload", 4, 1, 16, [](ZeroOptions& z) { z.stage = 1, z.offload = true; }},
        {"stage 2 full, CPU offload", "--zero-stage 2 --offload", 3, 1, 0, [](ZeroOptions& z) { z.stage = 2, z.offload = true; }},
        {"stage 3 full, CPU offload", "--zero-stage 3 --offload", 2, 1, 0, [](ZeroOptions& z) { z.stage = 3, z.offload = true; }},
        {"stage 3 LoRA on one rank (shards read in place)", "--zero-stage 3", 1, 1, 16, [](ZeroOptions& z) { z.stage = 3; }},
        {"stage 3 LoRA on one rank, --copy-gathers", "--zero-stage 3 --copy-gathers", 1, 1, 16, [](ZeroOptions& z) { z.stage = 3, z.copy_gathers = true; }},
    };
    LlamaConfig c = preset_config("tiny");
    int k = 0;
    for (const Case& t : cases) {
        CAPTURE(t.name);
        LoraConfig lora;
        lora.rank = t.lora_rank, lora.alpha = 32;
        ZeroOptions z;
        t.options(z);
        Traffic formula = ZeroStore::traffic(c, lora, z, t.ranks, t.accumulation);
        // With offload the new weights of replicated units are all-gathered in the next step's forward (O4):
        // a run's first step has none of them (stages 1, 2: every all-gather; stage 3 full: the final norm's).
        double deferred = !z.offload ? 0 : z.stage <= 2 ? formula.volume_bytes(Collective::all_gather)
                                         : t.lora_rank ? 0 : 2.0 * double(make_shard(c.hidden_size, t.ranks).padded);
        std::string args = "--preset tiny --data " + data_file() + " --seq 32 --steps 3 --log-every 1 --lr 1e-3 --sample 0 --seed 3 --lora-rank " +
                           std::to_string(t.lora_rank) + " --micro-batch 2 --grad-accum " + std::to_string(t.accumulation) + " " + t.flags;
        std::string out = temp_dir("comm_" + std::to_string(k++));
        Result r = train(t.ranks, args, out);
        CAPTURE(r.output);
        REQUIRE(r.status == 0);
        REQUIRE(r.comm.size() == 3);
        for (size_t step = 0; step < r.comm.size(); ++step) {
            CAPTURE(step + 1);
            for (int kind = 0; kind < kCollectives; ++kind) {
                CAPTURE(collective_name(Collective(kind)));
                double want = formula.volume_bytes(Collective(kind));
                if (step == 0 && Collective(kind) == Collective::all_gather) want -= deferred;
                CHECK(r.comm[step][size_t(kind)] == want);
            }
        }
        // the last step in the summary: every call, element and byte as the formula says
        CHECK(r.output.find("(formula: the same)") != std::string::npos);
        Json j = read_json_file(out + "/summary.json");
        REQUIRE(j.find("comm_formula_bytes"));
        CHECK(j.find("comm_formula_bytes")->find("all_gather")->number == formula.volume_bytes(Collective::all_gather));
        CHECK(j.find("comm_bytes")->find("reduce_scatter")->number == formula.volume_bytes(Collective::reduce_scatter));
        CHECK(j.find("comm_psi")->number == doctest::Approx(formula.volume_elements() / double(c.num_parameters())));
        CHECK(r.output.find("on paper, one step with a GPU per rank: compute ") != std::string::npos);
        MESSAGE(t.name << " on " << t.ranks << " rank" << std::string(t.ranks > 1 ? "s" : "") << ": " << traffic_text(formula, double(c.num_parameters())));
    }
}

// The process of the last rank of the run writing to `out`, once its train_log.csv has a row (60 s at
// most) and `settle_ms` more have passed.
pid_t last_rank_training(const std::string& out, int settle_ms) {
    for (int i = 0; i < 600; ++i) {
        std::ifstream f(out + "/train_log.csv");
        std::string header, row;
        if (std::getline(f, header) && std::getline(f, row)) break;
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(settle_ms));
    Shell r = shell("pgrep -f -- '^" + exe() + " .*--out " + out + "' | sort -n | tail -1");
    REQUIRE(r.output.find_first_of("0123456789") == 0);
    return pid_t(std::stol(r.output));
}

TEST_CASE("gpu: a failing rank ends every rank: killed mid-step, a bad file on one rank, options that differ") {
    if (!gpu_and_mpi()) return;
    {  // kill -9 one rank while training: every rank must end within 60 s, with a message
        std::string out = temp_dir("killed");
        std::string cmd = mpirun(3) + exe() + " " + common_args("--steps 100000 --micro-batch 4") + " --out " + out + " > " + out +
                          "/log.txt 2>&1";
        pid_t launcher = fork();
        if (launcher == 0) {
            execl("/bin/sh", "sh", "-c", cmd.c_str(), (char*)nullptr);
            _exit(127);
        }
        pid_t victim = last_rank_training(out, 0);
        double killed_at = wall_seconds();
        kill(victim, SIGKILL);
        int status = 0;
        bool ended = false;
        while (wall_seconds() - killed_at < 60) {
            if (waitpid(launcher, &status, WNOHANG) == launcher) { ended = true; break; }
            std::this_thread::sleep_for(std::chrono::milliseconds(100));
        }
        if (!ended) kill(launcher, SIGKILL), waitpid(launcher, &status, 0);
        CHECK(ended);
        CHECK(!(WIFEXITED(status) && WEXITSTATUS(status) == 0));
        std::string log = read_file(out + "/log.txt");
        CAPTURE(log);
        CHECK((log.find("signal 9") != std::string::npos || log.find("Killed") != std::string::npos));
        MESSAGE("a killed rank ended the run in " << wall_seconds() - killed_at << " s");
        FILE* left = popen(("pgrep -f -- '^" + exe() + " .*--out " + out + "' | wc -l").c_str(), "r");
        char buf[64] = {};
        if (left && fgets(buf, sizeof buf, left)) CHECK(std::atoi(buf) == 0);
        if (left) pclose(left);
    }
    {  // the same command line, but one rank's working directory holds a broken data file
        std::string a = temp_dir("files_a"), b = temp_dir("files_b");
        std::string rows = read_file(data_file());
        temp_file("files_a/rows.jsonl", rows);
        temp_file("files_b/rows.jsonl", rows.substr(0, rows.find('\n') + 1) + "{\"question\": \"broken\"\n");
        std::string args = common_args("--micro-batch 6 --data rows.jsonl --tokenizer " + std::string(getcwd(nullptr, 0)) +
                                       "/data/tokenizer.json --eval-data rows.jsonl");
        std::string cmd = "timeout 120 mpirun --allow-run-as-root --oversubscribe -x NCCL_NVLS_ENABLE=0 -np 1 --wdir " + a + " " + exe() + " " +
                          args + " --out out : -np 1 --wdir " + b + " " + exe() + " " + args + " --out out 2>&1";
        FILE* p = popen(cmd.c_str(), "r");
        REQUIRE(p);
        Result r = read_run(a + "/out", p);
        CAPTURE(r.output);
        CHECK(r.status != 0);
        CHECK(r.status != 124);  // ended, not timed out
        CHECK(r.output.find("error: rows.jsonl:2:") != std::string::npos);
    }
    {  // ranks started with different options: one line from rank 0, every rank exits
        std::string out = temp_dir("differ");
        std::string cmd = "timeout 120 mpirun --allow-run-as-root --oversubscribe -x NCCL_NVLS_ENABLE=0 -np 1 " + exe() + " " +
                          common_args("--micro-batch 6") + " --out " + out + " : -np 1 " + exe() + " " + common_args("--micro-batch 6 --seed 8") +
                          " --out " + out + " 2>&1";
        FILE* p = popen(cmd.c_str(), "r");
        REQUIRE(p);
        Result r = read_run(out, p);
        CAPTURE(r.output);
        CHECK(r.status == 1);
        size_t at = r.output.find("error: the command-line options differ between ranks");
        CHECK(at != std::string::npos);
        CHECK(r.output.find("error:", at + 1) == std::string::npos);
    }
}

TEST_CASE("gpu: --comm nccl refuses ranks that share a GPU, naming --comm mpi") {
    if (!gpu_and_mpi()) return;
    int gpus = 0;
    cudaGetDeviceCount(&gpus);
    Result r = train(gpus + 1, common_args("--micro-batch 4 --comm nccl"), temp_dir("nccl_shared"));
    CAPTURE(r.output);
    CHECK(r.status != 0);
    CHECK(r.output.find("--comm nccl: 2 ranks share one GPU and NCCL needs a GPU per rank (use --comm mpi") != std::string::npos);
}

TEST_CASE("gpu: a rank stopped mid-run (SIGSTOP) ends every rank within --comm-timeout, naming what it waited for") {
    if (!gpu_and_mpi()) return;
    int gpus = 0;
    cudaGetDeviceCount(&gpus);
    struct Case { std::string name; int ranks; std::string comm; };
    std::vector<Case> cases = {{"the MPI transport, 3 ranks sharing GPUs", 3, "mpi"}};
    if (gpus >= 2) cases.push_back({"NCCL, 2 ranks on 2 GPUs", 2, "nccl"});
    constexpr int kTimeout = 5;
    for (const Case& c : cases) {
        CAPTURE(c.name);
        std::string out = temp_dir("stopped_" + c.comm);
        std::string cmd = mpirun(c.ranks) + exe() + " " + common_args("--steps 100000 --micro-batch 4 --comm " + c.comm + " --comm-timeout " +
                                                                       std::to_string(kTimeout)) +
                          " --out " + out + " > " + out + "/log.txt 2>&1";
        pid_t launcher = fork();
        if (launcher == 0) {
            execl("/bin/sh", "sh", "-c", cmd.c_str(), (char*)nullptr);
            _exit(127);
        }
        pid_t stopped = last_rank_training(out, 500);  // a few steps in
        double stopped_at = wall_seconds();
        kill(stopped, SIGSTOP);
        int status = 0;
        bool ended = false;
        while (wall_seconds() - stopped_at < kTimeout + 60) {
            if (waitpid(launcher, &status, WNOHANG) == launcher) { ended = true; break; }
            std::this_thread::sleep_for(std::chrono::milliseconds(100));
        }
        double took = wall_seconds() - stopped_at;
        if (!ended) kill(stopped, SIGKILL), kill(launcher, SIGKILL), waitpid(launcher, &status, 0);
        CHECK(ended);
        CHECK(!(WIFEXITED(status) && WEXITSTATUS(status) == 0));
        std::string log = read_file(out + "/log.txt");
        size_t at = log.find("error: rank ");
        std::string line = at == std::string::npos ? "(no error line)" : log.substr(at, log.find('\n', at) - at);
        MESSAGE(c.name << ": a stopped rank ended the job in " << took << " s (--comm-timeout " << kTimeout << "): " << line);
        CAPTURE(log);
        REQUIRE(at != std::string::npos);
        CHECK(line.find(" waited " + std::to_string(kTimeout) + " s for ") != std::string::npos);
        CHECK(line.find(" at step ") != std::string::npos);
        bool named = false;  // the collective: one the transport ran, or a host-side MPI call
        for (const char* kind : {"all_gather #", "reduce_scatter #", "all_reduce #", "MPI_I"}) named |= line.find(kind) != std::string::npos;
        CHECK(named);
        FILE* left = popen(("pgrep -f -- '^" + exe() + " .*--out " + out + "' | wc -l").c_str(), "r");
        char buf[64] = {};
        if (left && fgets(buf, sizeof buf, left)) CHECK(std::atoi(buf) == 0);
        if (left) pclose(left);
    }
}
