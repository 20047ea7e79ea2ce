// test/test_checks.cpp — nothing silently accepted: for each class of bad input the GPU path would meet,
// the dry run (no GPU needed) ends with exactly one line `error: ...` naming the culprit and exit status 1,
// and a good input of the same kind passes, so each refusal is for the reason named. The fixtures are made
// fresh by each test: a small Llama model directory (pre-tokenized data, no tokenizer), its safetensors
// headers rewritten to lie, adapters, checkpoints with every rank's file, output directories. The last
// cases run several ranks with mpirun (dry run): an error every rank finds is printed once, an error on one
// rank ends the job with its line, and a rank stuck on a file ends the job after --check-timeout.
#include "test.h"

#include <csignal>

#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <map>

#include "distributed/checkpoint.h"
#include "support/json.h"
#include "support/llama_config.h"
#include "support/safetensors.h"

namespace {

struct Run {
    int status;
    std::string output;
};

Run run_command(const std::string& cmd) {
    Shell r = shell(cmd);
    return {r.status, r.output};
}

Run train(const std::string& args) { return run_command("timeout 120 ./train " + args); }

int error_lines(const std::string& output) {
    int n = 0;
    for (size_t at = output.find("error: "); at != std::string::npos; at = output.find("error: ", at + 1)) ++n;
    return n;
}

// Exactly one error line, the last line, holding `message`; exit status 1.
void check_error(const std::string& args, const std::string& message) {
    Run r = train(args);
    CAPTURE(args);
    CAPTURE(r.output);
    CHECK(r.status == 1);
    CHECK(error_lines(r.output) == 1);
    size_t at = r.output.find("error: ");
    REQUIRE(at != std::string::npos);
    CHECK(r.output.find(message, at) != std::string::npos);
    CHECK(r.output.find('\n', at) == r.output.size() - 1);
}

void check_passes(const std::string& args, const std::string& also = "") {
    Run r = train(args);
    CAPTURE(args);
    CAPTURE(r.output);
    CHECK(r.status == 0);
    CHECK(r.output.find("dry run: inputs are valid") != std::string::npos);
    if (!also.empty()) CHECK(r.output.find(also) != std::string::npos);
}

int fresh_count = 0;
std::string fresh_out() { return temp_dir("checks_out_" + std::to_string(++fresh_count)); }

// ---------------------------------------------------------------------------------------------- fixtures
// A header entry as a file may state it (true or not).
struct Entry {
    std::string name, dtype;
    std::vector<int64_t> shape;
    uint64_t begin, end;
};

// A safetensors file from entries as given, followed by `data_bytes` zero bytes.
void write_entries(const std::string& path, const std::vector<Entry>& entries, uint64_t data_bytes) {
    std::string header = "{";
    for (const Entry& e : entries)
        header += std::string(header.size() > 1 ? ", " : "") + "\"" + e.name + "\": {\"dtype\": \"" + e.dtype + "\", \"shape\": " +
                  shape_string(e.shape) + ", \"data_offsets\": [" + std::to_string(e.begin) + ", " + std::to_string(e.end) + "]}";
    header += "}";
    uint64_t n = header.size();
    std::string bytes(reinterpret_cast<const char*>(&n), 8);
    FILE* f = std::fopen(path.c_str(), "wb");
    REQUIRE(f);
    std::fwrite(bytes.data(), 1, 8, f);
    std::fwrite(header.data(), 1, header.size(), f);
    std::string zeros(size_t(data_bytes), '\0');
    std::fwrite(zeros.data(), 1, zeros.size(), f);
    std::fclose(f);
}

// One layer, hidden 64, vocabulary 512, BOS 1, EOS 2: small enough to write in a millisecond. `set` replaces
// or adds fields (values as JSON text); `drop` removes one.
std::string config_text(const std::map<std::string, std::string>& set = {}, const std::string& drop = "") {
    std::vector<std::pair<std::string, std::string>> fields = {
        {"model_type", "\"llama\""}, {"hidden_size", "64"}, {"intermediate_size", "128"}, {"num_hidden_layers", "1"},
        {"num_attention_heads", "2"}, {"num_key_value_heads", "2"}, {"vocab_size", "512"}, {"max_position_embeddings", "256"},
        {"bos_token_id", "1"}, {"eos_token_id", "2"}, {"tie_word_embeddings", "true"}};
    for (const auto& [key, value] : set) {
        auto it = std::find_if(fields.begin(), fields.end(), [&](const auto& f) { return f.first == key; });
        if (it != fields.end()) it->second = value;
        else fields.push_back({key, value});
    }
    std::string text = "{";
    for (const auto& [key, value] : fields)
        if (key != drop) text += std::string(text.size() > 1 ? ", " : "") + "\"" + key + "\": " + value;
    return text + "}";
}

// The model's tensors as BF16, back to back.
std::vector<Entry> model_entries(const std::string& config_path) {
    std::vector<Entry> out;
    uint64_t at = 0;
    for (const TensorSpec& t : parameter_specs(load_config(config_path))) {
        out.push_back({t.name, "BF16", t.shape, at, at + uint64_t(t.numel()) * 2});
        at = out.back().end;
    }
    return out;
}

uint64_t data_end(const std::vector<Entry>& entries) {
    uint64_t end = 0;
    for (const Entry& e : entries) end = std::max(end, e.end);
    return end;
}

// A model directory `name` with config.json and model.safetensors from `edit(entries, data bytes)`.
template <class Edit>
std::string model_dir(const std::string& name, Edit edit) {
    std::string dir = temp_dir(name);
    temp_file(name + "/config.json", config_text());
    std::vector<Entry> entries = model_entries(dir + "/config.json");
    uint64_t bytes = data_end(entries);
    edit(entries, bytes);
    write_entries(dir + "/model.safetensors", entries, bytes);
    return dir;
}
std::string good_model(const std::string& name) {
    return model_dir(name, [](std::vector<Entry>&, uint64_t&) {});
}

std::string rows_file() {  // 40 pre-tokenized rows of 30 ids: 20 packed sequences of 64
    static std::string path = [] {
        std::string text;
        for (int r = 0; r < 40; ++r) {
            text += "{\"input_ids\": [1";
            for (int i = 0; i < 28; ++i) text += ", " + std::to_string(3 + (r * 7 + i) % 500);
            text += ", 2]}\n";
        }
        return temp_file("checks_rows.jsonl", text);
    }();
    return path;
}

std::string model_args(const std::string& model) {
    return "--model " + model + " --data " + rows_file() + " --seq 64 --micro-batch 2 --lora-rank 2 --lora-targets q --dry-run";
}

// A PEFT adapter for the fixture model: r, alpha and the q_proj tensors as `a_shape` and `b_shape` say.
std::string adapter_dir(const std::string& name, const std::string& r, const std::string& alpha, std::vector<int64_t> a_shape = {2, 64},
                        std::vector<int64_t> b_shape = {64, 2}, bool extra_tensor = false) {
    std::string dir = temp_dir(name);
    temp_file(name + "/adapter_config.json", "{\"peft_type\": \"LORA\", \"r\": " + r + ", \"lora_alpha\": " + alpha +
                                                 ", \"target_modules\": [\"q_proj\"], \"bias\": \"none\"}");
    std::vector<Entry> e;
    uint64_t a = uint64_t(a_shape[0] * a_shape[1]) * 4, b = uint64_t(b_shape[0] * b_shape[1]) * 4;
    e.push_back({peft_key(0, kQ, 'A'), "F32", a_shape, 0, a});
    e.push_back({peft_key(0, kQ, 'B'), "F32", b_shape, a, a + b});
    if (extra_tensor) e.push_back({peft_key(0, kK, 'A'), "F32", {2, 64}, a + b, a + b + 512});
    write_entries(dir + "/adapter_model.safetensors", e, data_end(e));
    return dir;
}

// A checkpoint of the fixture model's LoRA (r 2, alpha 32, q_proj) under OUT/checkpoints/step-STEP.
struct CheckpointSpec {
    int ranks = 1;
    int64_t step = 5, total_steps = 10, global_batch = 2;
    uint64_t seed = 1234;
    bool latest = true;
    bool sizes = false;  // zero.json records each rank file's size, as save_checkpoint writes it
};
std::string write_checkpoint(const std::string& out, const std::string& model, const CheckpointSpec& k) {
    std::string root = out + "/checkpoints", dir = root + "/step-" + std::to_string(k.step);
    mkdir(root.c_str(), 0755), mkdir(dir.c_str(), 0755);
    LlamaConfig c = load_config(model + "/config.json");
    std::vector<float> a(2 * 64, 0.25f), b(64 * 2, 0.0f);
    std::vector<TensorToWrite> slices;
    for (const char* kind : {"master", "m", "v"}) {
        slices.push_back({checkpoint_key(kind, peft_key(0, kQ, 'A'), 0), "F32", {int64_t(a.size())}, a.data()});
        slices.push_back({checkpoint_key(kind, peft_key(0, kQ, 'B'), 0), "F32", {int64_t(b.size())}, b.data()});
    }
    for (int r = 0; r < k.ranks; ++r)  // rank 0 optimized everything; the others' files hold nothing
        write_safetensors(checkpoint_rank_file(dir, r, k.ranks), r == 0 ? slices : std::vector<TensorToWrite>{});
    write_atomically(dir + "/trainer.json", "{\"step\": " + std::to_string(k.step) + ", \"total_steps\": " + std::to_string(k.total_steps) +
                                                ", \"epoch\": 0, \"sequences_into_epoch\": 0, \"global_batch\": " + std::to_string(k.global_batch) +
                                                ", \"world_size\": " + std::to_string(k.ranks) + ", \"seed\": " + std::to_string(k.seed) + "}\n");
    std::string files;
    for (int r = 0; r < k.ranks && k.sizes; ++r) {
        std::string file = checkpoint_rank_file(dir, r, k.ranks);
        files += std::string(r ? ", " : ", \"files\": {") + json_quote(file.substr(dir.size() + 1)) + ": " + std::to_string(read_file(file).size());
    }
    if (k.sizes) files += "}";
    write_atomically(dir + "/zero.json", "{\"world_size\": " + std::to_string(k.ranks) + ", \"trainable\": 256, \"lora\": " +
                                             json_quote("r=2 alpha=32.000000 rslora=0 targets=q_proj,") + ", \"model\": " + json_quote(config_json(c)) +
                                             files + "}\n");
    if (k.latest) write_atomically(root + "/latest", "step-" + std::to_string(k.step) + "\n");
    return dir;
}

}  // namespace

TEST_CASE("checks: each tensor of the weights is checked from the headers: dtype, shape, bytes, presence") {
    check_passes(model_args(good_model("m_good")) + " --out " + fresh_out());
    auto with = [&](const std::string& name, auto edit) { return model_args(model_dir(name, edit)) + " --out " + fresh_out(); };
    check_error(with("m_f64", [](std::vector<Entry>& e, uint64_t& bytes) {
                    e.back().dtype = "F64", e.back().end = e.back().begin + 64 * 8, bytes = e.back().end;
                }),
                "model.safetensors: tensor model.norm.weight has dtype F64 (supported: BF16, F16, F32)");
    check_error(with("m_i32", [](std::vector<Entry>& e, uint64_t& bytes) {
                    e.back().dtype = "I32", e.back().end = e.back().begin + 64 * 4, bytes = e.back().end;
                }),
                "tensor model.norm.weight has dtype I32 (supported: BF16, F16, F32)");
    check_error(with("m_bogus", [](std::vector<Entry>& e, uint64_t&) { e[1].dtype = "Q7"; }), "has an unknown dtype \"Q7\"");
    check_error(with("m_shape", [](std::vector<Entry>& e, uint64_t&) { e[1].shape = {32, 2}; }),
                "tensor model.layers.0.input_layernorm.weight has shape [32, 2], the config needs [64]");
    check_error(with("m_missing", [](std::vector<Entry>& e, uint64_t&) { e.pop_back(); }), "missing tensor model.norm.weight");
    check_error(with("m_extra", [](std::vector<Entry>& e, uint64_t& bytes) { e.push_back({"model.extra", "F32", {1}, bytes, bytes + 4}), bytes += 4; }),
                "unexpected tensor model.extra (not a parameter of this Llama config)");
    check_error(with("m_overlap", [](std::vector<Entry>& e, uint64_t&) { e[2].begin -= 2, e[2].end -= 2; }), "overlap");
    check_error(with("m_reversed", [](std::vector<Entry>& e, uint64_t&) { std::swap(e[2].begin, e[2].end); }),
                "the end comes before the begin");
    check_error(with("m_beyond", [](std::vector<Entry>& e, uint64_t& bytes) { bytes -= 2; (void)e; }), "a truncated file?");
    // a 4 MB file that claims 275 trillion parameters: refused from its header, nothing allocated
    check_error(with("m_huge", [](std::vector<Entry>& e, uint64_t& bytes) {
                    e[0].shape = {1 << 24, 1 << 24}, e[0].end = e[0].begin + (uint64_t(1) << 49);
                    bytes = 4 << 20;
                }),
                "tensor model.embed_tokens.weight ends at byte 562949953421312 of the tensor data, beyond the file's");
    check_error(with("m_huge_shape", [](std::vector<Entry>& e, uint64_t&) { e[0].shape = {1 << 24, 1 << 24}; }),
                "tensor model.embed_tokens.weight has shape [16777216, 16777216] in BF16, more than its 65536 bytes hold");
}

TEST_CASE("checks: sizes read from config.json are bounded, and the special tokens lie inside the embedding") {
    auto config = [&](const std::string& name, const std::map<std::string, std::string>& set, const std::string& drop = "") {
        std::string dir = temp_dir(name);
        temp_file(name + "/config.json", config_text(set, drop));
        temp_file(name + "/model.safetensors", "");  // never read: the config is refused first
        return model_args(dir) + " --out " + fresh_out();
    };
    check_error(config("c_layers", {{"num_hidden_layers", "100000000"}}), "field \"num_hidden_layers\" is 100000000, more than the limit 1,024");
    check_error(config("c_intmax", {{"num_hidden_layers", "2147483647"}}), "field \"num_hidden_layers\" is 2147483647, more than the limit");
    check_error(config("c_vocab", {{"vocab_size", "1073741824"}}), "field \"vocab_size\" is 1073741824, more than the limit 16,777,216");
    check_error(config("c_head0", {{"head_dim", "0"}}), "field \"head_dim\" must be a positive whole number");
    check_error(config("c_head_implied", {{"hidden_size", "2"}, {"num_attention_heads", "4"}, {"num_key_value_heads", "4"}}), "head_dim is 0");
    check_error(config("c_eps", {{"rms_norm_eps", "1e39"}}), "field \"rms_norm_eps\" must be a positive number");
    check_error(config("c_eos", {{"eos_token_id", "600"}}), "eos_token_id 600 is outside the vocabulary (vocab_size 512)");
    check_error(config("c_eos_list", {{"eos_token_id", "[2, 512]"}}), "eos_token_id 512 is outside the vocabulary");
    check_error(config("c_bos", {{"bos_token_id", "9999"}}), "bos_token_id 9999 is outside the vocabulary");
    // without an eos_token_id (or bos_token_id) a "llama" config takes HF's LlamaConfig defaults, 2 (and 1), inside
    // this vocabulary: the checks go on to the weights (this fixture's empty file)
    check_error(config("c_no_eos", {}, "eos_token_id"), "model.safetensors: not a safetensors file");
    check_error(config("c_no_bos", {}, "bos_token_id"), "model.safetensors: not a safetensors file");
    // a pre-tokenized id the embedding lacks
    std::string rows = temp_file("checks_bad_ids.jsonl", "{\"input_ids\": [1, 512, 2]}\n");
    check_error("--model " + good_model("c_rows") + " --data " + rows + " --seq 64 --dry-run --out " + fresh_out(), "512");
}

TEST_CASE("checks: adapters: r bounded, lora_alpha positive, tensors as the config says, flags they override named") {
    std::string model = good_model("a_model");
    auto args = [&](const std::string& adapter) { return model_args(model) + " --adapter " + adapter + " --out " + fresh_out(); };
    std::string good = adapter_dir("a_good", "2", "4");
    check_passes(model_args(model) + " --adapter " + good + " --out " + fresh_out());
    check_error(args(adapter_dir("a_r31", "2147483648", "4")), "field \"r\" must be a whole number from 1 to 4096, not 2147483648");
    check_error(args(adapter_dir("a_r2e9", "2e9", "4")), "field \"r\" must be a whole number from 1 to 4096");
    check_error(args(adapter_dir("a_alpha0", "2", "0")), "field \"lora_alpha\" must be a positive number");
    check_error(args(adapter_dir("a_alpha_neg", "2", "-4")), "field \"lora_alpha\" must be a positive number");
    check_error(args(adapter_dir("a_shape", "2", "4", {3, 64}, {64, 3})), "has shape [3, 64], the config needs [2, 64]");
    check_error(args(adapter_dir("a_extra", "2", "4", {2, 64}, {64, 2}, true)), "unexpected tensor base_model.model.model.layers.0.self_attn.k_proj");
    // --lora-rank 2 (as in model_args) agrees with the adapter; other values are refused, naming both
    check_error(args(good) + " --lora-rank 8", "--lora-rank 8 disagrees with the adapter's adapter_config.json");
    check_error(args(good) + " --lora-alpha 16", "--lora-alpha 16 disagrees with the adapter's adapter_config.json (--adapter " + good + "), which has lora_alpha 4");
    check_error(args(good) + " --lora-targets v", "--lora-targets v disagrees");
}

TEST_CASE("checks: checkpoints: every rank's file, the slices, the global batch, the seed and the steps left") {
    std::string model = good_model("k_model");
    std::string base = model_args(model) + " --steps 10";
    auto out_with = [&](const CheckpointSpec& k) {
        std::string out = fresh_out();
        write_checkpoint(out, model, k);
        return out;
    };
    check_passes(base + " --resume --out " + out_with(CheckpointSpec()));
    std::string two = out_with([] { CheckpointSpec k; k.ranks = 2; return k; }());
    check_passes(base + " --resume --out " + two);
    std::remove((two + "/checkpoints/step-5/rank-00001-of-00002.safetensors").c_str());
    check_error(base + " --resume --out " + two, "lacks rank-00001-of-00002.safetensors (it was written by 2 ranks)");
    std::string cut = out_with(CheckpointSpec());
    std::string file = checkpoint_rank_file(cut + "/checkpoints/step-5", 0, 1), bytes = read_file(file);
    write_atomically(file, bytes.substr(0, bytes.size() - 8));
    check_error(base + " --resume --out " + cut, "a truncated file?");
    std::string holes = out_with(CheckpointSpec());  // the v slices of B are gone
    file = checkpoint_rank_file(holes + "/checkpoints/step-5", 0, 1);
    std::vector<float> a(128, 0.25f), b(128, 0.0f);
    std::vector<TensorToWrite> slices;
    for (const char* kind : {"master", "m", "v"}) {
        slices.push_back({checkpoint_key(kind, peft_key(0, kQ, 'A'), 0), "F32", {128}, a.data()});
        if (std::string(kind) != "v") slices.push_back({checkpoint_key(kind, peft_key(0, kQ, 'B'), 0), "F32", {128}, b.data()});
    }
    write_safetensors(file, slices);
    check_error(base + " --resume --out " + holes, "v of base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight does not cover its 128 elements");
    check_error(base + " --resume --out " + out_with([] { CheckpointSpec k; k.global_batch = 4; return k; }()),
                "the checkpoint takes 4 sequences per step, this run 2");
    check_error(base + " --resume --out " + out_with([] { CheckpointSpec k; k.seed = 99; return k; }()),
                "the checkpoint's run has --seed 99, this run 1234");
    check_error(base + " --resume --out " + out_with([] { CheckpointSpec k; k.step = 10; return k; }()),
                "the checkpoint is at step 10 and the run ends at step 10: nothing is left to train");
    check_error(model_args(model) + " --steps 3 --resume --out " + out_with(CheckpointSpec()), "the checkpoint is at step 5 and the run ends at step 3");
    std::string unlinked = out_with([] { CheckpointSpec k; k.latest = false; return k; }());
    check_error(base + " --resume --out " + unlinked,
                "holds the complete checkpoint " + unlinked + "/checkpoints/step-5 but no `latest` file naming the newest: resume it with --resume " +
                    unlinked + "/checkpoints/step-5");
    check_passes(base + " --resume --out " + fresh_out(), "resume: no checkpoint in ");
    check_error(base + " --resume /nonexistent/step-5 --out " + fresh_out(), "--resume /nonexistent/step-5: no such checkpoint directory");
    // zero.json records every rank file's size: a newest checkpoint whose file a crash cut short (or lost)
    // is named with what is wrong, and the last complete one is offered
    std::string crashed = out_with([] { CheckpointSpec k; k.ranks = 2, k.sizes = true; return k; }());
    check_passes(base + " --resume --out " + crashed);
    write_checkpoint(crashed, model, [] { CheckpointSpec k; k.ranks = 2, k.sizes = true, k.step = 7; return k; }());
    check_passes(base + " --resume --out " + crashed);
    std::string step7 = crashed + "/checkpoints/step-7", step5 = crashed + "/checkpoints/step-5";
    file = checkpoint_rank_file(step7, 0, 2), bytes = read_file(file);
    write_atomically(file, bytes.substr(0, bytes.size() / 2));
    check_error(base + " --resume --out " + crashed, "checkpoint " + step7 + " is incomplete or damaged (rank-00000-of-00002.safetensors has " +
                                                         thousands(int64_t(bytes.size() / 2)) + " bytes where zero.json records " +
                                                         thousands(int64_t(bytes.size())) + "); the last complete one is " + step5 +
                                                         ": resume it with --resume " + step5);
    std::remove(file.c_str());
    check_error(base + " --resume --out " + crashed, "(rank-00000-of-00002.safetensors is missing); the last complete one is " + step5);
    check_passes(base + " --resume " + step5 + " --out " + crashed);
}

TEST_CASE("checks: --out is a writable directory of its own, and a previous run's outputs are kept unless asked") {
    std::string args = model_args(good_model("o_model"));
    check_error(args + " --out ''", "--out needs a value, not an empty string");
    check_error(args + " --out /", "--out / is the root directory");
    check_error(args + " --out //.", "is the root directory");
    std::string file = temp_file("checks_a_file", "x");
    check_error(args + " --out " + file, "--out " + file + " is not a directory");
    check_error(args + " --out " + file + "/sub", "cannot be created: " + file + " is not a directory");
    check_error(args + " --out /proc/x", "--out /proc/x cannot be created: /proc is not writable");
    check_passes(args + " --out " + fresh_out() + "/a/b/c");  // created (with its parents) when the run starts
    std::string previous = fresh_out();
    write_atomically(previous + "/train_log.csv", "step\n");
    mkdir((previous + "/adapter").c_str(), 0755);
    check_error(args + " --out " + previous, "holds a previous run's outputs (train_log.csv, adapter/): give --overwrite to replace them");
    check_passes(args + " --out " + previous + " --overwrite", "note: " + previous + " holds a previous run's outputs (train_log.csv, adapter/); this run replaces them\n");
    CHECK(read_file(previous + "/train_log.csv") == "step\n");  // a dry run writes nothing
}

TEST_CASE("checks: flags: empty strings, non-finite numbers, products that overflow, warmup beyond the run") {
    for (const char* flag : {"--data", "--model", "--tokenizer", "--config", "--out", "--adapter", "--eval-data", "--preset"})
        check_error(std::string(flag) + " '' --dry-run", std::string(flag) + " needs a value, not an empty string");
    check_error("--resume '' --dry-run", "--resume needs a checkpoint directory, not an empty string");
    check_error("--lr 1e39 --dry-run", "--lr 1e39 is beyond the range of a 32-bit float");
    check_error("--lora-alpha 1e300 --dry-run", "--lora-alpha 1e300 is beyond the range of a 32-bit float");
    check_error("--lora-layout fused --dry-run", "--lora-layout must be folded or plain, not \"fused\"");
    check_error("--lr 1e-50 --dry-run", "--lr 1e-50 is too small for a 32-bit float (it rounds to 0)");
    check_error("--micro-batch 65536 --seq 65536 --dry-run", "--micro-batch 65536 x --seq 65536 = 4,294,967,296 tokens per micro-batch");
    std::string args = model_args(good_model("f_model")) + " --out " + fresh_out();
    check_error(args + " --warmup-steps 50 --steps 10", "--warmup-steps 50 is longer than the run's 10 steps");
    std::string ds = temp_file("checks_ds_warmup.json", R"({"scheduler": {"type": "WarmupLR", "params": {"warmup_num_steps": 50}}})");
    check_error(args + " --steps 10 --config " + ds, "checks_ds_warmup.json: scheduler.params.warmup_num_steps 50 is longer than the run's 10 steps");
    std::string absent = temp_file("checks_ds_warmup_absent.json", R"({"scheduler": {"type": "WarmupLR"}})");  // the error names no key the file lacks
    check_error(args + " --steps 50 --config " + absent,
                "checks_ds_warmup_absent.json: the scheduler's warmup of 1000 steps (DeepSpeed's default: the file has no scheduler.params.warmup_num_steps) is longer than the run's 50 steps");
    check_passes(args + " --warmup-steps 10 --steps 10");
    // an accumulation longer than an epoch would take some rows twice in one step
    std::string rows = temp_file("checks_four_rows.jsonl", R"({"input_ids": [1, 5, 6, 2]}
{"input_ids": [1, 7, 8, 2]}
{"input_ids": [1, 9, 10, 2]}
{"input_ids": [1, 11, 12, 2]}
)");
    std::string few = model_args(good_model("f_model")) + " --out " + fresh_out() + " --data " + rows + " --no-pack --micro-batch 1";
    check_error(few + " --grad-accum 5", "--grad-accum 5 is more than the 4 micro-batches of an epoch");
    check_passes(few + " --grad-accum 4");
    // flags that act on an evaluation set there is none of (or none with questions)
    std::string qa = temp_file("checks_qa.jsonl", R"({"question": "a harbor is", "answer": "a port"}
)");
    std::string text = temp_file("checks_text.jsonl", R"({"text": "a harbor is a port"}
)");
    std::string own = "--preset tiny --seq 64 --micro-batch 1 --lora-rank 2 --dry-run --out " + fresh_out() + " --data " + qa;
    check_error(own + " --eval-every 5", "--eval-every needs evaluation data (--eval-data FILE or --eval-fraction F");
    check_error(own + " --score-answers", "--score-answers needs evaluation rows with a prompt and an answer");
    check_error(own + " --sample 3 --eval-data " + text, "--sample needs evaluation rows with a prompt and an answer");
    check_error(own + " --score-answers --eval-data " + qa + " --train-on-prompt", "--train-on-prompt puts the loss on the prompts too");
    check_error(model_args(good_model("f_model")) + " --out " + fresh_out() + " --sample 2 --eval-data " + rows_file(),
                "--sample shows answers as text: it needs a tokenizer");
    check_passes(own + " --score-answers --eval-every 5 --sample 2 --eval-data " + qa);
    check_passes(own + " --sample 0");
    // flags that would do nothing where they are given
    check_error(own + " --keep-gathered --zero-stage 2", "--keep-gathered applies to ZeRO stage 3 only (the stage is 2)");
    check_passes(own + " --keep-gathered --zero-stage 3");
    for (const char* flag : {"--lora-alpha 8", "--lora-targets q_proj", "--lora-dropout 0.1", "--lora-layout folded"})
        check_error(own + " --lora-rank 0 " + flag, std::string(flag).substr(0, std::string(flag).find(' ')) + " applies to LoRA adapters: --lora-rank 0 trains every weight");
}

TEST_CASE("checks: running out of host memory anywhere in the checks is one error line, never a crash") {
    // Address-space limits from where the program's libraries no longer load (exit 127, before main) up to
    // where the dry run passes: every run between ends in exit 1 with one line, whatever allocation failed.
    // The limit also caps the stack's growth, and a stack that cannot grow is a SIGSEGV no program can turn
    // into a message (seen at one limit on a GPU machine, whose libraries lay out memory differently): such
    // a limit is counted and skipped. An abort (std::terminate, 134) is never accepted.
    int failed_cleanly = 0, stack_limited = 0;
    for (int mib = 600; mib <= 4000; mib += 25) {
        Run r = run_command("ulimit -v " + std::to_string(mib * 1024) + "; ./train --preset tiny --seq 64 --data " + rows_file() +
                            " --dry-run --out " + fresh_out());
        CAPTURE(mib);
        CAPTURE(r.output);
        if (r.status == 127) continue;  // the shared libraries do not fit yet
        if (r.status == 0) break;       // enough memory: the checks pass
        if (r.status == 128 + SIGSEGV && r.output.find("error:") == std::string::npos) {
            ++stack_limited;
            continue;
        }
        CHECK(r.status == 1);  // not 134 (std::terminate) nor another signal
        CHECK(error_lines(r.output) == 1);
        failed_cleanly += r.output.find("error: out of host memory (std::bad_alloc)") != std::string::npos;
    }
    MESSAGE(failed_cleanly << " memory limits ended the dry run with std::bad_alloc as one error line; " << stack_limited
            << " with a stack that could not grow");
    CHECK(failed_cleanly > 0);
}

// ---------------------------------------------------------------------------------------------- several ranks
namespace {
bool have_mpirun() { return std::system("command -v mpirun > /dev/null 2>&1") == 0; }

std::string exe() {
    char buf[4096];
    return std::string(getcwd(buf, sizeof buf)) + "/train";
}

std::string mpirun(int n) { return "timeout 120 mpirun --allow-run-as-root --oversubscribe --bind-to none -np " + std::to_string(n) + " "; }
}  // namespace

TEST_CASE("checks: several ranks (mpirun, dry run): one line per job, and no rank waits forever") {
    if (!have_mpirun()) return skip_test("no mpirun");
    std::string model = good_model("r_model");
    {  // every rank finds it: printed once
        Run r = run_command(mpirun(3) + exe() + " " + model_args(model) + " --out " + fresh_out() + " --lr 1e39");
        CAPTURE(r.output);
        CHECK(r.status == 1);
        CHECK(error_lines(r.output) == 1);
        CHECK(r.output.find("error: --lr 1e39 is beyond the range of a 32-bit float") != std::string::npos);
    }
    {  // found while reading the inputs, on every rank
        std::string bad = model_dir("r_bad", [](std::vector<Entry>& e, uint64_t&) { e.pop_back(); });
        Run r = run_command(mpirun(2) + exe() + " " + model_args(bad) + " --out " + fresh_out());
        CAPTURE(r.output);
        CHECK(r.status == 1);
        CHECK(error_lines(r.output) == 1);
        CHECK(r.output.find("missing tensor model.norm.weight") != std::string::npos);
    }
    {  // the inputs pass on every rank: the dry run's line once
        Run r = run_command(mpirun(2) + exe() + " " + model_args(model) + " --out " + fresh_out());
        CAPTURE(r.output);
        CHECK(r.status == 0);
        CHECK(r.output.find("dry run: inputs are valid") == r.output.rfind("dry run: inputs are valid"));
    }
    // the same command line, but one rank's working directory holds a damaged model
    std::string a = temp_dir("r_wdir_a"), b = temp_dir("r_wdir_b");
    for (const std::string& d : {a, b}) {
        mkdir((d + "/m").c_str(), 0755);
        write_atomically(d + "/m/config.json", config_text());
        std::vector<Entry> e = model_entries(d + "/m/config.json");
        if (d == b) e.pop_back();
        write_entries(d + "/m/model.safetensors", e, data_end(e));
    }
    std::string args = model_args("m") + " --out out";
    {  // one rank fails: its line, every rank ends
        Run r = run_command(mpirun(1) + "--wdir " + a + " " + exe() + " " + args + " : -np 1 --wdir " + b + " " + exe() + " " + args);
        CAPTURE(r.output);
        CHECK(r.status == 1);
        CHECK(error_lines(r.output) == 1);
        CHECK(r.output.find("error: m: missing tensor model.norm.weight") != std::string::npos);
    }
    // every rank's view of the run is compared before the GPU: the same command line, but node-local files differ
    {  // one rank's data is shorter: its step count would differ
        std::string c = temp_dir("r_wdir_short");
        mkdir((c + "/m").c_str(), 0755);
        write_atomically(c + "/m/config.json", config_text());
        std::vector<Entry> e = model_entries(c + "/m/config.json");
        write_entries(c + "/m/model.safetensors", e, data_end(e));
        std::string rows = read_file(rows_file());
        write_atomically(a + "/rows.jsonl", rows);
        write_atomically(c + "/rows.jsonl", rows.substr(0, rows.rfind('\n', rows.size() - 2) + 1));  // 39 rows
        std::string local = "--model m --data rows.jsonl --seq 64 --micro-batch 2 --lora-rank 2 --lora-targets q --dry-run --out out";
        Run r = run_command(mpirun(1) + "--wdir " + a + " " + exe() + " " + local + " : -np 1 --wdir " + c + " " + exe() + " " + local);
        CAPTURE(r.output);
        CHECK(r.status == 1);
        CHECK(error_lines(r.output) == 1);
        CHECK(r.output.find("error: the training data (rows.jsonl) differ between ranks: rank 1 of 2 differs from rank 0; rank 0: 40 rows, 1,200 "
                            "tokens in 20 sequences; rank 1: 39 rows, 1,170 tokens in 20 sequences") != std::string::npos);
        // one rank's config.json differs (its rope_theta; the weights fit both)
        write_atomically(c + "/rows.jsonl", rows);
        write_atomically(c + "/m/config.json", config_text({{"rope_theta", "1234.0"}}));
        r = run_command(mpirun(1) + "--wdir " + a + " " + exe() + " " + local + " : -np 1 --wdir " + c + " " + exe() + " " + local);
        CAPTURE(r.output);
        CHECK(r.status == 1);
        CHECK(error_lines(r.output) == 1);
        CHECK(r.output.find("error: the model configs (m/config.json) differ between ranks: rank 1 of 2 differs from rank 0; rank 0: ") !=
              std::string::npos);
        write_atomically(c + "/m/config.json", config_text());  // the same again: passes
        r = run_command(mpirun(1) + "--wdir " + a + " " + exe() + " " + local + " : -np 1 --wdir " + c + " " + exe() + " " + local);
        CAPTURE(r.output);
        CHECK(r.status == 0);
    }
    {  // the default job: one rank finds the pretrained base in its data/base, the other would pretrain it
        std::string cached = temp_dir("r_wdir_cached"), other = temp_dir("r_wdir_other");
        for (const std::string& d : {cached, other}) mkdir((d + "/data").c_str(), 0755), mkdir((d + "/data/base").c_str(), 0755);
        write_atomically(cached + "/data/base/model.safetensors", "");
        write_atomically(other + "/data/base/model.safetensors", "");
        // train.cpp's kBaseRecipe: the recipe the cached base must have been pretrained by
        write_atomically(cached + "/data/base/recipe.txt", "tiny; data/corpus,data/dictionary; seq 256; micro-batch 32; 32 epochs; lr 3e-3; wd 0.01");
        write_atomically(other + "/data/base/recipe.txt", "another recipe");
        Run r = run_command(mpirun(1) + "--wdir " + cached + " " + exe() + " --dry-run : -np 1 --wdir " + other + " " + exe() + " --dry-run");
        CAPTURE(r.output);
        CHECK(r.status == 1);
        CHECK(error_lines(r.output) == 1);
        CHECK(r.output.find("error: the default job's pretrained bases (data/base) differ between ranks: rank 1 of 2 differs from rank 0; rank 0: "
                            "there, with this recipe (part 1 skipped); rank 1: absent or from another recipe (part 1 pretrains it)") !=
              std::string::npos);
    }
    {  // offload on ranks that mpirun binds to one core each (its default for 2 ranks): one warning naming the option
        std::string args = model_args(model) + " --zero-stage 1 --offload --out " + fresh_out();
        Run r = run_command("timeout 120 mpirun --allow-run-as-root -np 2 " + exe() + " " + args);
        CAPTURE(r.output);
        CHECK(r.status == 0);
        // bound to one core: 1 CPU, or its 2 hardware threads with SMT; either way one AdamW thread and the warning
        CHECK(r.output.find("AdamW on 1 thread per rank: the ") != std::string::npos);
        CHECK(r.output.find("rank 0 may use, less the main thread and the worker") != std::string::npos);
        CHECK(r.output.find("warning: ranks 0, 1 may use only ") != std::string::npos);
        // the option for Open MPI, or (a node with fewer than 4 CPUs per rank, like a 2-core build machine) fewer ranks
        CHECK((r.output.find("`mpirun --map-by slot:PE=") != std::string::npos || r.output.find("start fewer ranks per node") != std::string::npos));
        CHECK(r.output.find("warning:") == r.output.rfind("warning:"));  // once
        // alone, confined by taskset: the plan says it, and so does the one warning
        r = run_command("taskset -c 0 " + exe() + " " + args);
        CAPTURE(r.output);
        CHECK(r.status == 0);
        CHECK(r.output.find("AdamW on 1 thread per rank: the 1 CPU rank 0 may use") != std::string::npos);
        CHECK(r.output.find("warning: this run may use only 1 CPU") != std::string::npos);
    }
    {  // one rank stuck opening a FIFO: the others end the job after --check-timeout
        std::string fifo_dir = temp_dir("r_wdir_fifo");
        mkdir((fifo_dir + "/m").c_str(), 0755);
        REQUIRE(mkfifo((fifo_dir + "/m/config.json").c_str(), 0644) == 0);
        double start = wall_seconds();
        Run r = run_command(mpirun(1) + "--wdir " + a + " " + exe() + " " + args + " --check-timeout 3 : -np 1 --wdir " + fifo_dir + " " + exe() +
                            " " + args + " --check-timeout 3");
        double took = wall_seconds() - start;
        CAPTURE(r.output);
        MESSAGE("a stuck rank ended the job in " << took << " s");
        CHECK(r.status != 0);
        CHECK(r.status != 124);  // ended by the ranks, not by the test's timeout
        CHECK(took < 60);
        CHECK(error_lines(r.output) == 1);
        // a rank that refuses a FIFO before opening it ends the job with its own line instead
        CHECK((r.output.find("waited 3 s for the other ranks to check their inputs") != std::string::npos ||
               r.output.find("config.json") != std::string::npos));
    }
}
