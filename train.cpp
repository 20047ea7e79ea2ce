// train.cpp — main: the subcommands, and a training run that reads top to bottom as nanoGPT's train.py does:
//   setup       load_inputs        tokenizer, model config, adapter, datasets, checkpoint: every input checked
//                                  before the GPU is touched; check_same_view: every rank read the same
//               plan_run           steps per epoch, the run's length, where a resumed run starts
//               Trainer            the ZeRO store, the model, the data loader, the LR schedule; print_plan
//   the loop    Trainer::run       for each step: queue_step (the micro-batches forward and backward, then the
//                                  optimizer step, all queued on the GPU), read_step one step later (its loss
//                                  and gradient norm, read without stalling the GPU), evaluate and save when due
//   evaluation  evaluate           mean loss over the eval set
//               answer_questions   greedy answers to the eval questions, scored against the references
//   saving      save_checkpoint    every --save-every steps (distributed/checkpoint.h)
//               save_outputs       the PEFT adapter or the HF model
//   logging     RunLog             progress lines, train_log.csv, memory_rankR.csv, the charts and the summary
//                                  (support/report.h); the Trainer hands it each step's numbers
//   ./train [OPTIONS]                  fine-tune (the default job with no options; see --help)
//   ./train tokenize [--tokenizer P]   print the ids of stdin's UTF-8 text, space-separated, no BOS
//   ./train generate --model DIR ...   answer prompts with a model (generate.cu)
// Every user mistake ends in one line `error: ...` naming the flag, file or field, and exit status 1.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <fstream>
#include <iterator>
#include <new>
#include <optional>
#include <string>
#include <vector>

#include "adamw.h"
#include "distributed/checkpoint.h"
#include "distributed/threads.h"
#include "support/cuda_calls.h"
#include "data.h"
#include "support/generate.h"
#include "llama.h"
#include "lora.h"
#include "support/options.h"
#include "support/plan.h"
#include "support/report.h"
#include "distributed/world.h"
#include "zero3.h"

namespace {

Tokenizer load_tokenizer(const std::string& path) {
    if (!exists(path)) fail("tokenizer " + path + " not found (run `make` to prepare data/, or pass --tokenizer PATH)");
    return Tokenizer::load(path);
}

double gib(double bytes) { return bytes / double(1 << 30); }

MemoryStats memory_stats(const MemorySampler::Stats& s) { return {s.peak, s.mean, s.min, s.samples}; }

int run_tokenize(const std::vector<std::string>& args) {
    std::string path;
    for (size_t i = 0; i < args.size(); ++i) {
        if (args[i] == "--tokenizer" && i + 1 < args.size() && !args[i + 1].empty()) path = args[++i];
        else if (args[i] == "--tokenizer") fail(i + 1 < args.size() ? "--tokenizer needs a value, not an empty string" : "--tokenizer needs a value");
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

// ================================================================================================ inputs

// Everything a run reads, checked before the GPU is touched.
struct Inputs {
    std::optional<Tokenizer> tok;  // none: pre-tokenized data only (and no sample answers)
    std::string tokenizer_path;
    ModelTokens tokens;            // BOS, EOS, pad, chat template: from the model's files
    LlamaConfig config;
    LoraConfig lora;
    std::vector<std::vector<float>> adapter;  // from --adapter, per layer
    std::string weights_header;               // the weights' safetensors headers as text ("" without weights)
    Dataset train, eval;
    std::string resume;  // the checkpoint directory, or ""
};

// The tokenizer: --tokenizer when given, else the model directory's tokenizer.json, else (a preset) the
// default data's; "" when a model directory has none (then only pre-tokenized data can be used).
std::string tokenizer_path(const Options& o) {
    if (o.given.count("--tokenizer")) return o.tokenizer;
    if (o.model.empty()) return o.tokenizer;
    return exists(o.model + "/tokenizer.json") ? o.model + "/tokenizer.json" : "";
}

// Loads the comma-separated paths of `flag` into one dataset.
Dataset load_datasets(const std::string& paths, const std::string& flag, const Inputs& in, const DataOptions& dopt) {
    Dataset all;
    std::vector<std::string> list = data_paths(paths, flag);
    for (size_t k = 0; k < list.size(); ++k) {
        Dataset d = load_dataset(list[k], in.tok ? &*in.tok : nullptr, in.config.vocab_size, dopt);
        if (k == 0) all = std::move(d);
        else append_dataset(all, std::move(d));
    }
    return all;
}

// An evaluation row's prompt: the tokens before its first target, when there are some and an answer after
// them (0 otherwise: nothing to ask).
size_t prompt_length(const Example& ex) {
    size_t p = 0;
    while (p < ex.labels.size() && ex.labels[p] == kIgnoreIndex) ++p;
    return p < ex.ids.size() ? p : 0;
}

// The flags that act on the evaluation set, given where they would do nothing: --eval-every without
// evaluation data, --score-answers or --sample without evaluation rows that hold a prompt apart from its
// answer (or without a tokenizer to show them). Giving --data drops the default evaluation set.
void check_eval_flags(const Options& o, const Inputs& in) {
    const std::string how = " (--eval-data FILE or --eval-fraction F; giving --data drops the default evaluation set)";
    if (o.given.count("--eval-every") && o.eval_every > 0 && in.eval.rows.empty()) fail("--eval-every needs evaluation data" + how);
    if (!o.score_answers && !(o.given.count("--sample") && o.sample > 0)) return;
    const std::string flag = o.score_answers ? "--score-answers" : "--sample";
    if (!in.tok) fail(flag + " shows answers as text: it needs a tokenizer (--tokenizer), which pre-tokenized data alone does not name");
    bool prompted = std::any_of(in.eval.rows.begin(), in.eval.rows.end(), [](const Example& ex) { return prompt_length(ex) > 0; });
    if (!prompted)
        fail(flag + " needs evaluation rows with a prompt and an answer (question/answer, prompt/completion, chat or Alpaca rows)" +
             (o.train_on_prompt ? std::string(": --train-on-prompt puts the loss on the prompts too, so no row keeps one apart") : how));
}

// Reads and checks every input on this rank, in the order a run needs them; no collectives (the ranks
// agree on the outcome afterwards: world_agree). `chief` prints the data summary and notes.
Inputs load_inputs(const Options& o, bool chief) {
    Inputs in;
    // the model: its config (sizes bounded), and the sequence length it allows
    LlamaConfig& c = in.config;
    c = !o.model.empty() ? load_config(o.model + "/config.json") : preset_config(o.preset.empty() ? "tiny" : o.preset);
    std::string config_path = o.model.empty() ? "--preset " + c.name : o.model + "/config.json";
    if (o.seq > c.max_position_embeddings)
        fail("--seq " + std::to_string(o.seq) + " exceeds the model's max_position_embeddings (" + std::to_string(c.max_position_embeddings) + ")");
    // the tokenizer and the special tokens, every id a row of the embedding
    in.tokenizer_path = tokenizer_path(o);
    if (!in.tokenizer_path.empty()) {
        in.tok = load_tokenizer(in.tokenizer_path);
        check_vocab(*in.tok, c.vocab_size, in.tokenizer_path, config_path);
        in.tokens = model_tokens(*in.tok, o.model);
    } else {  // the config's ids (pre-tokenized data)
        in.tokens.bos = c.bos_token_id;
        in.tokens.eos.assign(c.eos_token_ids.begin(), c.eos_token_ids.end());
        in.tokens.pad = in.tokens.eos.empty() ? 0 : in.tokens.eos[0];
        in.tokens.source = config_path + " (bos_token_id, eos_token_id; where absent " +
                           (c.model_type == "llama" ? "1 and 2, HF's LlamaConfig defaults)" : "128000 and 128001)");
    }
    check_model_tokens(in.tokens, c.vocab_size, config_path);
    // the adapters: from --adapter (its r, alpha and targets), or new ones as the flags say
    if (!o.adapter.empty()) {
        load_peft_adapter(o.adapter, c, in.lora, in.adapter);
        check_adapter_flags(o, in.lora);
        if (o.given.count("--lora-dropout")) in.lora.dropout = o.lora_dropout;
    } else {
        in.lora.rank = o.lora_rank, in.lora.alpha = o.lora_alpha, in.lora.dropout = o.lora_dropout;
        parse_lora_targets(o.lora_targets, in.lora, "--lora-targets");
    }
    // --lora-layout folded (lora.h with_lora_slots): each adapter's s B rides in its weight's padded rows, one
    // product a member (bench/PROFILE.md, "LoRA"); the GPU tests run both layouts
    if (o.lora_folded) c = with_lora_slots(c, in.lora);
    // the weights: every tensor's name, shape, dtype and bytes, from the headers
    if (!o.model.empty() && (!o.dry_run || has_weights(o.model))) {  // a dry run plans from config.json alone
        SafetensorsReader weights(o.model);
        check_model_weights(weights, c);
        for (const auto& [name, t] : weights.tensors())
            in.weights_header += name + " " + t.dtype + " " + shape_string(t.shape) + " " + std::to_string(t.offset) + "+" + std::to_string(t.bytes) + "\n";
    }
    // the data: every token id inside the embedding (load_dataset checks pre-tokenized ids)
    DataOptions dopt;
    dopt.seq_len = o.seq, dopt.train_on_prompt = o.train_on_prompt, dopt.chat_template = o.chat_template, dopt.pack = o.pack;
    dopt.tokens = &in.tokens, dopt.progress = chief;
    in.train = load_datasets(o.data, "--data", in, dopt);
    if (o.eval_fraction > 0) in.eval = split_eval(in.train, o.eval_fraction, o.seed);
    else if (!o.eval_data.empty()) in.eval = load_datasets(o.eval_data, "--eval-data", in, dopt);
    if (chief) {
        std::printf("%s\n", data_summary("train", in.train).c_str());
        if (!in.eval.rows.empty()) std::printf("%s\n", data_summary("eval ", in.eval).c_str());
    }
    check_eval_flags(o, in);
    // the checkpoint to continue, every rank's file of it; OUT, where nothing of a previous run is lost unasked
    in.resume = find_checkpoint(o.out + "/checkpoints", o.resume);
    if (!in.resume.empty()) check_checkpoint(in.resume, c, in.lora);
    if (chief && !o.resume.empty() && in.resume.empty()) std::printf("resume: no checkpoint in %s/checkpoints; starting fresh\n", o.out.c_str());
    std::string previous = check_out_dir(o);  // refused there unless --resume or --overwrite (the default job's own: always)
    if (chief && !previous.empty() && in.resume.empty())
        std::printf("note: %s holds a previous run's outputs (%s); this run replaces them\n", o.out.c_str(), previous.c_str());
    return in;
}

// ================================================================================================ the same run everywhere

// A dataset as the batches see it: every row's ids, labels and document starts, and the sequences (not
// where it was read from: a rank may find the default data beside ./train rather than in its directory).
uint64_t dataset_hash(const Dataset& d) {
    uint64_t h = fnv1a("dataset");
    for (const Example& e : d.rows) {
        uint64_t n[3] = {e.ids.size(), e.labels.size(), e.doc_starts.size()};
        h = fnv1a(n, sizeof n, h);
        h = fnv1a(e.ids.data(), e.ids.size() * 4, h), h = fnv1a(e.labels.data(), e.labels.size() * 4, h);
        h = fnv1a(e.doc_starts.data(), e.doc_starts.size() * 4, h);
    }
    for (const std::vector<int64_t>& seq : d.sequences) {
        uint64_t n = seq.size();
        h = fnv1a(seq.data(), seq.size() * 8, fnv1a(&n, sizeof n, h));
    }
    return h;
}

std::string dataset_detail(const Dataset& d) {
    return thousands(int64_t(d.rows.size())) + " rows, " + thousands(d.stats.tokens) + " tokens in " + thousands(d.stats.sequences) + " sequences";
}

// Every rank reads its inputs itself, and node-local copies may differ: a config, a weights file, a dataset
// or a tokenizer that differ give different unit sizes or step counts, and NCCL never compares counts (a
// hang, or silently wrong sums). Each is compared across ranks, as a hash, before the GPU is used; a
// difference is one error naming it and the ranks that differ (world_check_same).
void check_same_view(const World& w, const Options& o, const Inputs& in) {
    const LlamaConfig& c = in.config;
    world_check_same(w, config_json(c), "the model configs (" + (o.model.empty() ? "--preset " + c.name : o.model + "/config.json") + ")",
                     "layers " + std::to_string(c.num_hidden_layers) + ", hidden " + std::to_string(c.hidden_size) + ", vocabulary " +
                         std::to_string(c.vocab_size) + ", " + thousands(c.num_parameters()) + " parameters");
    world_check_same(w, in.weights_header, "the weights' safetensors headers (" + o.model + ")",
                     std::to_string(std::count(in.weights_header.begin(), in.weights_header.end(), '\n')) + " tensors");
    std::string tokens = "BOS " + std::to_string(in.tokens.bos) + ", pad " + std::to_string(in.tokens.pad) + ", EOS";
    for (int32_t e : in.tokens.eos) tokens += " " + std::to_string(e);
    world_check_same(w, (in.tok ? read_file(in.tokenizer_path) : std::string()) + tokens,
                     "the tokenizers and special tokens (" + (in.tok ? in.tokenizer_path : "none: pre-tokenized data") + ")",
                     (in.tok ? thousands(int64_t(in.tok->vocab_size())) + " tokens; " : std::string()) + tokens);
    uint64_t adapter = fnv1a("adapter");
    for (const std::vector<float>& layer : in.adapter) adapter = fnv1a(layer.data(), layer.size() * 4, adapter);
    world_check_same_hash(w, adapter, "the adapter weights (--adapter " + o.adapter + ")");
    world_check_same_hash(w, dataset_hash(in.train), "the training data (" + o.data + ")", dataset_detail(in.train));
    world_check_same_hash(w, dataset_hash(in.eval), "the evaluation data", dataset_detail(in.eval));
}

// Offload's host threads need CPUs: one warning line (rank 0) when a rank may use too few (threads.h).
void warn_if_few_cpus(const World& w) {
    std::vector<std::vector<double>> all = world_gather(w, {double(w.cpus)});
    if (w.rank != 0) return;
    std::vector<int> cpus;
    for (const std::vector<double>& r : all) cpus.push_back(int(r[0]));
    std::string warning = few_cpus_warning(cpus, w.node_cpus, w.launcher);
    if (!warning.empty()) std::printf("%s\n", warning.c_str());
}

// ================================================================================================ the plan

// How long the run is and where it starts: micro-batches per epoch from the data and the ranks, optimizer
// steps per epoch, the run's length (--steps, else --epochs; a resumed run keeps its checkpoint's unless
// --steps is given), and a resumed run's position (its checkpoint's step and micro-batch).
struct RunPlan {
    int64_t micro_batches_per_epoch = 0, steps_per_epoch = 0, steps = 0;
    int64_t start_step = 0, start_micro_batch = 0;
};

RunPlan plan_run(const Options& o, const Inputs& in, int ranks) {
    RunPlan p;
    p.micro_batches_per_epoch = Loader(in.train, o.micro_batch, o.seq, 0, ranks, o.seed, true, in.tokens.pad).micro_batches_per_epoch();
    if (o.grad_accum > p.micro_batches_per_epoch) {  // one step would take more than an epoch's rows, some twice
        std::string source = o.given.count("--grad-accum") || o.config_file.empty() ? "--grad-accum " + std::to_string(o.grad_accum)
                                                                                     : o.config_file + ": gradient accumulation " + std::to_string(o.grad_accum);
        fail(source + " is more than the " + std::to_string(p.micro_batches_per_epoch) + " micro-batches of an epoch (" + o.data + " at --micro-batch " +
             std::to_string(o.micro_batch) + (ranks > 1 ? " on each of " + std::to_string(ranks) + " ranks" : "") +
             "): lower the accumulation or the micro-batch");
    }
    p.steps_per_epoch = std::max<int64_t>(1, p.micro_batches_per_epoch / o.grad_accum);
    p.steps = o.steps ? o.steps : p.steps_per_epoch * std::max(1, o.epochs);
    if (!in.resume.empty()) {
        TrainerState s = read_trainer_state(in.resume);
        std::string where = "--resume " + in.resume;
        if (!o.given.count("--steps")) p.steps = s.total_steps;  // the schedule continues
        check_resume(s, o.seed, p.steps, where);
        p.start_micro_batch = resume_micro_batch(s, o.micro_batch, o.grad_accum, ranks, p.micro_batches_per_epoch, where);
        p.start_step = s.step;
    }
    if (p.steps > INT32_MAX)  // the schedule counts steps in an int
        fail("the run has " + thousands(p.steps) + " steps (" + std::to_string(p.steps_per_epoch) + " per epoch x --epochs " +
             std::to_string(o.epochs) + "), more than " + thousands(INT32_MAX));
    check_warmup(o, p.steps);
    return p;
}

// ================================================================================================ the run

class Trainer {
  public:
    Trainer(const Options& o, const World& w, const Inputs& in, const RunPlan& plan);
    ~Trainer();
    RunResult run(const std::string& base_name);

  private:
    // setup
    void print_plan(const MemoryReport& estimate, double setup_seconds, const LoadReport& loaded);
    // the loop
    void queue_step(int64_t step, bool fresh_start);  // queues the step; fresh_start: the GPU was idle before it
    void read_step(int64_t step, bool eval);          // waits for the step's results; logs (and evaluates) when due
    void run_batch(const Batch& b, bool backward, float divisor);
    DeviceBatch upload_batch(const Batch& b);         // the batch's four arrays to the GPU, through a pinned slot
    double read_loss_sum();                           // this rank's summed CE since the last read (synchronises)
    void report_first_step();                         // the memory NCCL and the libraries took in the first step
    // evaluation
    double evaluate();
    AnswerScore answer_questions(const char* when, int limit);
    // saving
    TrainerState state(int64_t step) const;
    void save_outputs(const std::string& base_name);
    void copy_tokenizer_files(const std::string& dir) const;
    void write_charts();

    const Options& o_;
    const World& w_;
    const Inputs& in_;
    const RunPlan plan_;
    bool chief_;
    cudaStream_t stream_ = nullptr;
    ZeroStore* store_ = nullptr;
    LlamaModel* model_ = nullptr;
    Loader loader_;
    int64_t micro_ = 0;  // micro-batches taken from the loader, counted from the run's first
    Schedule sched_;
    AdamWConfig adam_;
    double flops_per_token_ = 0, peak_flops_ = 0;
    int32_t *ids_ = nullptr, *labels_ = nullptr;            // [B*T] device copies of the batch (one allocation)
    int32_t *positions_ = nullptr, *doc_start_ = nullptr;  // [B*T] each token's position and document start
    // Host-to-device batch copies come from pinned slots, reused once the copy that used a slot is done.
    static constexpr int kStagingSlots = 4;
    int32_t* staging_ = nullptr;  // [kStagingSlots, 4, B*T] pinned
    cudaEvent_t staged_[kStagingSlots] = {};
    int64_t staged_count_ = 0;
    // A queued step: its loss and norm land in pinned memory; `done` marks its end on the GPU. Three,
    // so a step's predecessor's `done` (its start time) is still intact when the step is read.
    static constexpr int kQueuedSteps = 3;
    struct QueuedStep {
        int64_t step = 0;
        double targets = 0, tokens = 0, examples = 0;  // loss targets (all ranks), real tokens and rows (this rank)
        bool fresh_start = false;  // timed from `start`, not from the previous step's end
        Traffic comm;              // what the transport counted while the step was queued
        cudaEvent_t start = nullptr, done = nullptr;
    };
    QueuedStep queued_[kQueuedSteps];
    float* step_results_ = nullptr;  // [kQueuedSteps, 2] pinned: summed loss, squared gradient norm of each queued step
    Traffic formula_, unpadded_;  // the collectives of one step, per rank (ZeroStore::traffic), and without padding
    Profiler profiler_;
    std::vector<FamilyWork> step_work_;
    RunLog log_;            // progress lines, CSVs, TensorBoard events, charts and the run's numbers
    MemorySampler sampler_;  // this rank's and the whole GPU's memory, sampled while training
};

// ------------------------------------------------------------------------------------------------ setup

Trainer::Trainer(const Options& o, const World& w, const Inputs& in, const RunPlan& plan)
    : o_(o), w_(w), in_(in), plan_(plan), chief_(w.rank == 0),
      loader_(in.train, o.micro_batch, o.seq, w.rank, w.size, o.seed, true, in.tokens.pad) {
    stream_ = priority_stream(cudaStreamDefault);  // ahead of the GPU optimizer's stream (zero3.cu: update_on_gpu)
    adam_.beta1 = o.beta1, adam_.beta2 = o.beta2, adam_.eps = o.eps, adam_.weight_decay = o.weight_decay;

    // the ZeRO store: every parameter byte, sharded by stage; base weights from the model or a random init
    const LlamaConfig& c = in.config;
    MemoryReport estimate = ZeroStore::estimate(c, in.lora, o.zero, w.size);
    formula_ = ZeroStore::traffic(c, in.lora, o.zero, w.size, o.grad_accum);
    unpadded_ = ZeroStore::traffic(c, in.lora, o.zero, w.size, o.grad_accum, false);
    double t0 = wall_seconds();
    store_ = new ZeroStore(c, in.lora, o.zero, w, stream_);
    LoadReport loaded;
    if (!o.model.empty()) loaded = store_->load(o.model);
    else store_->init_random(o.seed);
    if (in.lora.rank > 0) {
        if (!in.adapter.empty()) store_->set_lora(in.adapter);
        else store_->init_lora(o.seed);
    }
    // the model: activations for one micro-batch, and the device copy of the batch
    model_ = new LlamaModel(c, in.lora.shape(o.seed), o.micro_batch, o.seq, stream_, o.checkpoint_activations);
    size_t rows = size_t(o.micro_batch) * size_t(o.seq);
    ids_ = device_alloc<int32_t>(4 * rows, "batch");  // ids, labels, positions, doc_start: one copy per micro-batch
    labels_ = ids_ + rows, positions_ = ids_ + 2 * rows, doc_start_ = ids_ + 3 * rows;
    // a resumed run: the trainable state and the optimizer's, by name; the data position
    if (!in.resume.empty()) {
        TrainerState s = load_checkpoint(*store_, in.resume, c, in.lora);
        micro_ = plan.start_micro_batch;
        if (chief_)
            std::printf("resume: %s (step %lld of %lld, epoch %lld, %lld sequences into it; written by %lld rank%s)\n", in.resume.c_str(),
                        (long long)s.step, (long long)plan.steps, (long long)s.epoch, (long long)s.sequences_into_epoch,
                        (long long)s.world_size, s.world_size == 1 ? "" : "s");
    }
    // the learning rate over the run
    sched_ = make_schedule(o, plan.steps);
    flops_per_token_ = flops_per_token(c, in.lora.rank ? store_->trainable_numel() : 0, o.seq, o.checkpoint_activations);
    peak_flops_ = gpu_peak_flops(w.gpu);
    print_plan(estimate, wall_seconds() - t0, loaded);
    // pinned memory for the batches going up and the step results coming down
    check_cuda(cudaMallocHost(&staging_, kStagingSlots * 4 * rows * sizeof(int32_t)), "cudaMallocHost");
    for (cudaEvent_t& e : staged_) e = sync_event();
    check_cuda(cudaMallocHost(&step_results_, kQueuedSteps * 2 * sizeof(float)), "cudaMallocHost");
    for (QueuedStep& q : queued_) check_cuda(cudaEventCreate(&q.start), "event"), check_cuda(cudaEventCreate(&q.done), "event");
    model_->profiler = o.profile > 0 ? &profiler_ : nullptr;
    step_work_ = step_work(c, int64_t(o.micro_batch) * o.seq * o.grad_accum, o.seq, in.lora.rank, int(std::count(in.lora.target, in.lora.target + kTargets, true)),
                           store_->trainable_numel(), o.checkpoint_activations);
}

Trainer::~Trainer() {
    device_free(ids_);
    delete model_;
    delete store_;
    for (cudaEvent_t e : staged_) cudaEventDestroy(e);
    for (QueuedStep& q : queued_) cudaEventDestroy(q.start), cudaEventDestroy(q.done);
    cudaFreeHost(staging_), cudaFreeHost(step_results_);
    cudaStreamDestroy(stream_);
}

void Trainer::print_plan(const MemoryReport& est, double setup_seconds, const LoadReport& loaded) {
    if (!chief_) return;
    const LlamaConfig& c = in_.config;
    MemoryReport got = store_->memory();
    char read[128] = "";
    if (loaded.bytes > 0)
        std::snprintf(read, sizeof read, " (weights: %.2f GB read in %.1f s, %.1f GB/s on this rank)", loaded.bytes / 1e9, loaded.seconds,
                      loaded.bytes / 1e9 / std::max(1e-9, loaded.seconds));
    std::printf("model: %s, %s parameters (%s trainable%s); set up in %.1f s%s\n", c.name.c_str(), thousands(c.num_parameters()).c_str(),
                thousands(store_->trainable_numel()).c_str(), in_.lora.rank ? (", LoRA r=" + std::to_string(in_.lora.rank)).c_str() : ", full",
                setup_seconds, read);
    std::printf("partition: %d units (embedding, %d layers, final norm), each split into %d shard%s%s\n", num_units(c), c.num_hidden_layers,
                w_.size, w_.size > 1 ? "s" : "",
                o_.zero.stage == 3 ? "; units up to stage3_param_persistence_threshold elements stay replicated" : "");
    std::printf("memory per rank (GiB), ZeRO estimate -> allocated: weights %.3f -> %.3f, master %.3f -> %.3f, grads %.3f -> %.3f, "
                "moments %.3f -> %.3f, CPU %.3f -> %.3f; activations %.3f; this rank on its GPU %.3f",
                gib(est.base), gib(got.base), gib(est.master), gib(got.master), gib(est.grads), gib(got.grads), gib(est.moments),
                gib(got.moments), gib(est.host), gib(got.host), gib(double(model_->activation_bytes())), gib(rank_gpu_bytes(w_)));
    if (w_.ranks_per_gpu == 1) std::printf(" (GPU in use %.2f)", gib(gpu_in_use_bytes()));
    std::printf("\n");
    if (o_.zero.stage >= 2)
        std::printf("memory per rank (GiB), buffers made during the first step: gathered units %.2f (estimate), gradient buffers %.2f "
                    "(estimate)\n", gib(est.gathered), gib(est.grad_buffers));
    print_run_plan(stdout, make_plan(o_, c, in_.lora, in_.train, in_.tokens.pad, w_.size, w_.cpus), o_, c, in_.lora);
    std::string how;
    double flops_per_s = sustained_flops(o_, peak_flops_, how);
    print_step_on_paper(o_, c, in_.lora, Cluster{w_.size, w_.nodes, o_.interconnect_GBps}, flops_per_s, how, false);
}

// ------------------------------------------------------------------------------------------------ the loop

RunResult Trainer::run(const std::string& base_name) {
    if (chief_) make_out_dir(o_.out);
    world_barrier(w_);
    RunLog::Setup logged;
    logged.out = o_.out, logged.rank = w_.rank, logged.log_every = o_.log_every;
    logged.steps = plan_.steps, logged.steps_per_epoch = plan_.steps_per_epoch, logged.start_step = plan_.start_step;
    logged.flops_per_token = flops_per_token_, logged.peak_flops = peak_flops_;
    logged.tensorboard_dir = o_.tensorboard_dir.empty() ? o_.out + "/tensorboard" : o_.tensorboard_dir;
    log_.open(logged);

    if (o_.score_answers && plan_.start_step == 0) log_.result.answers_before = answer_questions("before training", -1);
    log_.start();
    sampler_.start(w_);  // GPU memory every 0.1 s, whatever the log lines do
    // Step s is read after step s + 1 is queued, except where the host needs the weights of step s itself
    // (evaluation, a checkpoint, the end): there the run waits, and the next step is timed from its start.
    int64_t unread = 0;
    bool fresh = true;
    for (int64_t step = plan_.start_step + 1; step <= plan_.steps; ++step) {
        queue_step(step, fresh);
        if (unread) read_step(unread, false), unread = 0;
        bool epoch_end = step % plan_.steps_per_epoch == 0, last = step == plan_.steps;
        bool do_eval = !in_.eval.rows.empty() && ((o_.eval_every && step % o_.eval_every == 0) || (!o_.eval_every && epoch_end) || last);
        bool do_save = o_.save_every && (step % o_.save_every == 0 || last);
        fresh = do_eval || do_save || last;
        if (!fresh) {
            unread = step;
            continue;
        }
        read_step(step, do_eval);
        if (do_save) save_checkpoint(*store_, o_.out + "/checkpoints", "step-" + std::to_string(step), in_.config, in_.lora, state(step));
    }
    if (profiler_.steps() > 0 && chief_) profiler_.print(stdout, step_work_, peak_flops_, gpu_bandwidth(w_.gpu));
    sampler_.stop();
    log_.result.comm_formula = formula_, log_.result.comm_unpadded = unpadded_, log_.result.parameters = double(in_.config.num_parameters());
    log_.finish(world_sum(w_, log_.timed_rows()), memory_stats(sampler_.rank()), memory_stats(sampler_.gpu()));
    write_charts();
    save_outputs(base_name);
    if (o_.score_answers) log_.result.answers_after = answer_questions("after training", -1);
    else if (o_.sample > 0) answer_questions("after training", o_.sample);
    world_check_collectives(w_, "after the last step (evaluation, outputs)");
    if (chief_) {
        MemoryReport m = store_->memory();
        std::printf("memory per rank at the end (GiB): weights %.2f, gathered %.2f, master %.2f, grads %.2f (+%.2f buffers), "
                    "moments %.2f, CPU %.2f, activations %.2f, this rank's peak on its GPU %.2f\n",
                    gib(m.base), gib(m.gathered), gib(m.master), gib(m.grads), gib(m.grad_buffers), gib(m.moments), gib(m.host),
                    gib(double(model_->activation_bytes())), log_.result.peak_gib);
    }
    return log_.result;
}

// Queues one optimizer step on the GPU without waiting for it: the host goes on to prepare the next
// step while this one runs. Its summed loss and gradient norm are copied into pinned memory at its end;
// read_step reads them.
void Trainer::queue_step(int64_t step, bool fresh_start) {
    world_at_step(step);  // the watchdog names the step of a collective that never completes
    QueuedStep& q = queued_[step % kQueuedSteps];
    q.step = step, q.fresh_start = fresh_start, q.targets = q.tokens = q.examples = 0;
    q.comm = w_.comm->counted();  // the step's collectives are the difference at its end
    bool profiled = o_.profile > 0 && step > plan_.start_step + 2 && step <= plan_.start_step + 2 + o_.profile;  // after 2 warm-up steps
    if (profiled) profiler_.begin_step(stream_);
    check_cuda(cudaEventRecord(q.start, stream_), "event");
    // the step's micro-batches, from the loader
    std::vector<Batch> batches;
    for (int a = 0; a < o_.grad_accum; ++a, ++micro_) {
        batches.push_back(loader_.batch(micro_ / plan_.micro_batches_per_epoch, micro_ % plan_.micro_batches_per_epoch));
        q.targets += double(batches.back().target_tokens);
        q.tokens += double(batches.back().tokens);  // real tokens: padding is not counted
        q.examples += double(batches.back().examples);
    }
    q.targets = world_sum(w_, q.targets);  // the loss is the mean over every rank's target tokens
    // forward and backward of each, the gradients reduced as the stage says
    store_->begin_step();
    for (size_t a = 0; a < batches.size(); ++a) {
        store_->begin_micro_batch(a + 1 == batches.size());
        model_->dropout_step = uint64_t(micro_ - int64_t(batches.size()) + int64_t(a));  // LoRA dropout's masks follow the data
        run_batch(batches[a], true, float(std::max(1.0, q.targets)));
    }
    // the optimizer step
    {
        Region r(&profiler_, Family::optimizer);
        store_->step(adam_, sched_.lr_at(int(step - 1)), int(step), o_.clip);
    }
    // the step's loss and gradient norm into pinned memory, read one step later
    float* out = step_results_ + 2 * (step % kQueuedSteps);
    check_cuda(cudaMemcpyAsync(out, model_->loss_sum(), 4, cudaMemcpyDeviceToHost, stream_), "copy loss");
    check_cuda(cudaMemsetAsync(model_->loss_sum(), 0, 4, stream_), "memset");
    check_cuda(cudaMemcpyAsync(out + 1, store_->grad_norm_sq(), 4, cudaMemcpyDeviceToHost, stream_), "copy norm");
    check_cuda(cudaEventRecord(q.done, stream_), "event");
    q.comm = w_.comm->counted() - q.comm;
    if (profiled) world_wait_event(w_, q.done), profiler_.end_step();
    world_check_collectives(w_, "at step " + std::to_string(step));  // --check-collectives: every rank issued the same
}

// Waits for a queued step (normally the one before the step just queued, so the GPU stays busy), hands its
// loss and time to the log, stops a run whose loss or norm is not finite, and logs (and evaluates) when due.
void Trainer::read_step(int64_t step, bool eval) {
    const QueuedStep& q = queued_[step % kQueuedSteps];
    world_wait_event(w_, q.done);  // watching for a lost peer meanwhile
    if (step == plan_.start_step + 1) report_first_step();
    const float* out = step_results_ + 2 * (step % kQueuedSteps);
    StepRecord r;
    r.step = step, r.targets = q.targets, r.tokens = q.tokens, r.rows = q.examples, r.comm = q.comm;
    r.loss_sum = world_sum(w_, double(out[0])), r.loss = q.targets > 0 ? r.loss_sum / q.targets : 0.0;
    float norm_sq = out[1];
    if (!std::isfinite(r.loss) || !std::isfinite(norm_sq))  // the same on every rank (summed over them): one line
        throw CollectiveError("loss is " + std::to_string(r.loss) + " at step " + std::to_string(step) + " (lower --lr, or check the data)");
    r.grad_norm = std::sqrt(double(norm_sq));
    float ms = 0;  // from the previous step's end, or from this step's start when the GPU was idle before it
    const QueuedStep& previous = queued_[(step - 1) % kQueuedSteps];
    check_cuda(cudaEventElapsedTime(&ms, q.fresh_start ? q.start : previous.done, q.done), "event");
    r.ms = ms, r.lr = sched_.lr_at(int(step - 1));
    log_.add_step(r);
    if (!log_.line_due(step, eval)) return;
    double eval_loss = eval ? evaluate() : NAN;  // after the timing of the steps
    log_.line(eval, eval_loss, gib(rank_gpu_bytes(w_)), gib(sampler_.last_gpu()));
}

// NCCL allocates its buffers when it starts and lazily, at the first collectives, beside the allocations
// this rank counts: what they took by the end of the first step joins this rank's figure (rank_gpu_bytes:
// progress lines, memory CSV and chart, summary), and one line says it.
void Trainer::report_first_step() {
    bool measured = untracked_measure_end(w_);
    if (chief_ && measured)
        std::printf("memory per rank after the first step (GiB): NCCL and library buffers %.3f (the GPU's in-use growth since this rank's "
                    "context less its counted allocations), this rank on its GPU %.3f (GPU in use %.3f)\n",
                    gib(untracked_gpu_bytes()), gib(rank_gpu_bytes(w_)), gib(gpu_in_use_bytes()));
}

// The next pinned slot, once the copy that last read it is done (the host runs at most kStagingSlots
// micro-batches ahead of the GPU), filled with ids, labels, positions and document starts, then copied
// to the device batch in one transfer.
DeviceBatch Trainer::upload_batch(const Batch& b) {
    Region r(&profiler_, Family::copies);
    int k = int(staged_count_++ % kStagingSlots);
    world_wait_event(w_, staged_[k]);
    size_t n = size_t(o_.micro_batch) * size_t(o_.seq);
    int32_t* slot = staging_ + size_t(k) * 4 * n;
    const std::vector<int32_t>* parts[4] = {&b.ids, &b.labels, &b.positions, &b.doc_start};
    for (int i = 0; i < 4; ++i) std::copy(parts[i]->begin(), parts[i]->end(), slot + size_t(i) * n);
    check_cuda(cudaMemcpyAsync(ids_, slot, 4 * n * sizeof(int32_t), cudaMemcpyHostToDevice, stream_), "copy batch");
    check_cuda(cudaEventRecord(staged_[k], stream_), "event");
    return DeviceBatch{b.B, b.T, ids_, labels_, positions_, doc_start_};
}

void Trainer::run_batch(const Batch& b, bool backward, float divisor) {
    DeviceBatch d = upload_batch(b);
    if (backward) model_->forward_backward(d, *store_, divisor);
    else model_->forward(d, *store_);
}

double Trainer::read_loss_sum() {
    float v = 0;
    world_wait(w_, stream_);  // first: a copy to pageable memory would block the host until the stream got there
    check_cuda(cudaMemcpy(&v, model_->loss_sum(), 4, cudaMemcpyDeviceToHost), "copy loss");
    check_cuda(cudaMemset(model_->loss_sum(), 0, 4), "memset");
    return v;
}

// ------------------------------------------------------------------------------------------------ evaluation

// Mean CE over the eval set's target tokens (forward only; each rank takes its shard).
double Trainer::evaluate() {
    Loader loader(in_.eval, o_.micro_batch, o_.seq, w_.rank, w_.size, o_.seed, false, in_.tokens.pad);
    double targets = 0, rows = 0, start = wall_seconds();
    read_loss_sum();
    for (int64_t i = 0; i < loader.micro_batches_per_epoch(); ++i) {
        Batch b = loader.batch(0, i);
        targets += double(b.target_tokens);
        rows += double(b.examples);
        run_batch(b, false, 1.0f);
    }
    double loss = world_sum(w_, read_loss_sum()), all = world_sum(w_, targets);
    log_.add_eval_time(wall_seconds() - start, rows);
    return all > 0 ? loss / all : NAN;
}

// Greedy answers to the eval questions (rows that start with a prompt: labels -100), `limit` of them (-1:
// all), a batch of sequences at a time; the first --sample are printed beside the reference, and with
// every question answered, the mean token F1 and exact match (SQuAD-style) over them. Every rank generates
// (stage 3 gathers are collective) and takes rank 0's tokens.
AnswerScore Trainer::answer_questions(const char* when, int limit) {
    AnswerScore score;
    if (!in_.tok) return score;  // pre-tokenized data: nothing to show as text
    std::vector<std::vector<int32_t>> prompts, refs;
    for (const Example& ex : in_.eval.rows) {
        if (limit >= 0 && int(prompts.size()) >= limit) break;
        const size_t p = prompt_length(ex);
        if (p == 0) continue;
        prompts.emplace_back(ex.ids.begin(), ex.ids.begin() + long(p));
        refs.emplace_back(ex.ids.begin() + long(p), ex.ids.end());
    }
    if (prompts.empty()) return score;
    constexpr int kMaxAnswer = 48;
    int longest = 0;
    for (const auto& p : prompts) longest = std::max(longest, int(p.size()));
    int rows = std::min<int>(64, int(prompts.size()));
    Generator gen(in_.config, {in_.lora.rank, in_.lora.scale()}, rows, std::min(longest + kMaxAnswer, in_.config.max_position_embeddings),
                  stream_);
    gen.agree = [this](std::vector<int32_t>& tokens) { world_broadcast(w_, tokens.data(), tokens.size() * sizeof(int32_t)); };
    gen.wait = [this](cudaStream_t s) { world_wait(w_, s); };
    Sampling greedy;
    greedy.max_new_tokens = kMaxAnswer;
    const std::vector<int32_t>& eos = in_.tokens.eos;
    auto text = [&](std::vector<int32_t> ids) {  // without BOS and the end token(s)
        while (!ids.empty() && std::find(eos.begin(), eos.end(), ids.back()) != eos.end()) ids.pop_back();
        if (!ids.empty() && ids.front() == in_.tokens.bos) ids.erase(ids.begin());
        return in_.tok->decode(ids);
    };
    double start = wall_seconds();
    for (size_t first = 0; first < prompts.size(); first += size_t(rows)) {
        std::vector<std::vector<int32_t>> batch(prompts.begin() + long(first), prompts.begin() + long(std::min(prompts.size(), first + rows)));
        std::vector<std::vector<int32_t>> out = gen.generate(*store_, batch, greedy, eos);
        for (size_t i = 0; i < out.size(); ++i) {
            size_t k = first + i;
            std::string answer = text({out[i].begin() + long(prompts[k].size()), out[i].end()}), reference = text(refs[k]);
            score.add(answer, reference);
            if (chief_ && int(k) < o_.sample)
                std::printf("sample %zu (%s)\n  prompt:    %s\n  model:     %s\n  reference: %s\n", k + 1, when, text(prompts[k]).c_str(),
                            answer.c_str(), reference.c_str());
        }
    }
    if (chief_ && limit < 0)
        std::printf("answers %s: mean token-F1 %.3f, exact match %.1f%% over %lld eval questions (greedy, at most %d new tokens; %.1f s)\n",
                    when, score.mean_f1(), 100 * score.exact_rate(), (long long)score.n, kMaxAnswer, wall_seconds() - start);
    return score;
}

// ------------------------------------------------------------------------------------------------ saving

TrainerState Trainer::state(int64_t step) const {
    TrainerState s;
    s.step = step, s.total_steps = plan_.steps, s.epoch = micro_ / plan_.micro_batches_per_epoch;
    s.sequences_into_epoch = (micro_ % plan_.micro_batches_per_epoch) * o_.micro_batch * w_.size;
    s.global_batch = int64_t(o_.micro_batch) * o_.grad_accum * w_.size, s.world_size = w_.size, s.seed = o_.seed;
    return s;
}

// The tokenizer beside an exported model, as save_pretrained does: tokenizer.json, and the model
// directory's tokenizer_config.json, special_tokens_map.json and generation_config.json when present.
void Trainer::copy_tokenizer_files(const std::string& dir) const {
    auto copy = [](const std::string& from, const std::string& to) {
        std::ifstream in(from, std::ios::binary);
        std::ofstream out(to, std::ios::binary);
        if (!(out << in.rdbuf())) fail("cannot write " + to);
    };
    if (in_.tok) copy(in_.tokenizer_path, dir + "/tokenizer.json");
    for (const char* name : {"tokenizer_config.json", "special_tokens_map.json", "generation_config.json"})
        if (!o_.model.empty() && exists(o_.model + "/" + name)) copy(o_.model + "/" + name, dir + "/" + name);
}

// The adapter in PEFT's format, or the whole model in HF's (collective; rank 0 writes).
void Trainer::save_outputs(const std::string& base_name) {
    if (in_.lora.rank > 0) {
        std::vector<std::vector<float>> layers = store_->lora_layers();
        if (chief_) {
            save_peft_adapter(o_.out + "/adapter", in_.config, in_.lora, layers, base_name);
            std::printf("saved: %s/adapter (PEFT: adapter_config.json + adapter_model.safetensors)\n", o_.out.c_str());
        }
        if (!o_.merge) return;
    }
    // full fine-tuning, or LoRA with --merge (the adapters merged into the base): the whole model in HF's format
    save_hf(*store_, o_.out + "/model", in_.config, in_.lora);
    if (!chief_) return;
    copy_tokenizer_files(o_.out + "/model");
    std::printf("saved: %s/model (HF: config.json + model.safetensors%s%s)\n", o_.out.c_str(), in_.tok ? " + tokenizer files" : "",
                in_.lora.rank > 0 ? "; the adapters merged into the base" : "");
}

// OUT/loss.svg (train and eval loss, learning rate) and, with several ranks, OUT/memory.svg (each
// rank's GPU memory over the run); rank 0 writes.
void Trainer::write_charts() {
    std::vector<std::vector<double>> memory = world_gather(w_, log_.memory_samples());
    std::string title = (o_.model.empty() ? in_.config.name : o_.model) + (in_.lora.rank ? ", LoRA r=" + std::to_string(in_.lora.rank) : ", full fine-tuning") +
                        ", ZeRO stage " + std::to_string(o_.zero.stage) + ", " + std::to_string(w_.size) + " rank" + (w_.size > 1 ? "s" : "");
    log_.write_charts(title, memory);
}

void write_summary(const Options& o, const World& w, const RunResult& r, const std::string& title, int lora_rank) {
    RunSummary s;
    s.title = title, s.world_size = w.size, s.zero_stage = o.zero.stage, s.offload = o.zero.offload;
    s.checkpoint_activations = o.checkpoint_activations, s.lora_rank = lora_rank, s.final_train_loss = r.final_loss;
    s.mean_train_loss = r.mean_loss, s.global_train_samples_per_s = r.global_samples_per_s;
    s.gpu_device_peak_gib = r.gpu_device_peak_gib, s.gpu_device_mean_gib = r.gpu_device_mean_gib;
    s.eval_losses = r.eval_losses, s.steps = r.steps, s.steps_per_epoch = r.steps_per_epoch;
    s.train_samples_per_s = r.samples_per_s, s.eval_samples_per_s = r.eval_samples_per_s, s.tokens_per_s = r.tokens_per_s;
    s.tflops = r.tflops, s.gpu_peak_gib = r.peak_gib, s.gpu_mean_gib = r.mean_gib, s.gpu_min_gib = r.min_gib, s.seconds = r.seconds;
    s.parameters = r.parameters, s.comm_step = r.comm_step, s.comm = r.comm, s.comm_formula = r.comm_formula;
    s.comm_padding_bytes = r.comm_formula.volume_bytes() - r.comm_unpadded.volume_bytes();
    write_summary_json(o.out + "/summary.json", s);
}

// Checks everything that can be checked without a GPU on every rank (the ranks agree on the outcome),
// then trains.
RunResult run_job(const Options& o, World& w, const std::string& title) {
    Inputs in;
    RunPlan plan;
    world_agree(w, o.check_timeout, [&] {
        in = load_inputs(o, w.rank == 0);
        plan = plan_run(o, in, w.size);
    });
    check_same_view(w, o, in);
    if (o.zero.offload && !o.plan_ranks) warn_if_few_cpus(w);
    world_check_same(w, in.resume, "the checkpoints to resume from (OUT/checkpoints/latest)");
    if (!in.resume.empty())
        world_check_same(w, read_file(in.resume + "/trainer.json") + read_file(in.resume + "/zero.json"), "the checkpoint files");
    if (o.dry_run) {
        Cluster cl{o.plan_ranks ? o.plan_ranks : w.size, o.nodes ? o.nodes : o.plan_ranks ? 1 : w.nodes, o.interconnect_GBps};
        if (o.plan_ranks || o.nodes) check_cluster(cl, "--nodes");
        std::string how;
        double flops_per_s = sustained_flops(o, 0, how);
        if (w.rank == 0) {
            print_dry_run(o, in.config, in.lora, in.train, in.tokens.pad, cl.ranks, o.plan_ranks ? 0 : w.cpus);
            print_step_on_paper(o, in.config, in.lora, cl, flops_per_s, how, true);
        }
        return RunResult();
    }
    if (!w.comm) {
        world_start_gpu(w, o.comm);
        cudaDeviceProp p;
        check_cuda(cudaGetDeviceProperties(&p, w.gpu), "cudaGetDeviceProperties");
        if (w.rank == 0)
            std::printf("world: %d rank%s on %d node%s, %s; ZeRO stage %d%s%s; collectives: %s\n", w.size, w.size > 1 ? "s" : "", w.nodes,
                        w.nodes > 1 ? "s" : "", p.name, o.zero.stage, o.zero.offload ? " + CPU optimizer offload" : "",
                        o.checkpoint_activations ? " + activation checkpointing" : "", w.comm->name());
    }
    RunResult r;
    {
        Trainer t(o, w, in, plan);
        r = t.run(o.model.empty() ? in.config.name : o.model);
    }
    if (w.rank == 0) {
        print_summary(r, title);
        write_summary(o, w, r, title, in.lora.rank);
        std::printf("wrote %s/summary.json, %s/loss.svg%s\n", o.out.c_str(), o.out.c_str(), w.size > 1 ? (", " + o.out + "/memory.svg").c_str() : "");
    }
    return r;
}

// The default job: pretrain `tiny` once on text that holds the knowledge (the corpus, and the WordNet
// definitions of every word written as a dictionary) and cache it in data/base; then LoRA on the QA rows
// teaches the question form, and the eval questions (words the QA rows never ask about) are answered from
// what pretraining stored. Greedy answers are scored against the references before and after.
constexpr const char* kBaseRecipe = "tiny; data/corpus,data/dictionary; seq 256; micro-batch 32; 32 epochs; lr 3e-3; wd 0.01";

// Whether data/base holds the base this recipe pretrains (then part 1 is skipped). Every rank decides for
// itself, from its own data/: main compares the decisions, since a rank that pretrains while another
// fine-tunes would issue other collectives.
bool base_cached() {
    std::string base = default_path("data/base");
    return exists(base + "/model.safetensors") && exists(base + "/recipe.txt") && read_file(base + "/recipe.txt") == kBaseRecipe;
}

int run_default(const Options& defaults, World& w) {
    std::string base = default_path("data/base");
    bool cached = base_cached();
    if (!cached) {
        if (w.rank == 0)
            std::printf("== default job, part 1: pretraining the tiny preset on data/corpus and data/dictionary (all weights, from random "
                        "init; cached in %s)\n", base.c_str());
        Options p = defaults;
        p.preset = "tiny", p.data = default_path("data/corpus") + "," + default_path("data/dictionary"), p.eval_data.clear();
        p.eval_fraction = 0.02, p.lora_rank = 0, p.seq = 256, p.micro_batch = 32, p.epochs = 32, p.lr = 3e-3f, p.weight_decay = 0.01f;
        p.sample = 0, p.out = base + ".part", p.log_every = 100, p.resume.clear(), p.save_every = 0;
        run_job(p, w, "pretraining summary");
        world_barrier(w);
        if (w.rank == 0) {
            std::string tmp = base + ".part/model";
            std::FILE* f = std::fopen((tmp + "/recipe.txt").c_str(), "w");
            if (!f || std::fputs(kBaseRecipe, f) < 0 || std::fclose(f) != 0) fail("cannot write " + tmp + "/recipe.txt");
            std::error_code gone;
            std::filesystem::remove_all(base, gone);  // an older base, pretrained by another recipe
            if (gone) fail("cannot remove the older base " + base + ": " + gone.message());
            if (std::rename(tmp.c_str(), base.c_str()) != 0) fail("cannot move " + tmp + " to " + base);
            std::printf("saved the pretrained base model to %s (HF format); later runs start from it\n", base.c_str());
        }
        world_barrier(w);
    }
    if (w.rank == 0) std::printf("== default job, part 2: LoRA fine-tuning %s on the WordNet QA set\n", base.c_str());
    Options f = defaults;
    f.model = base, f.tokenizer = default_path("data/tokenizer.json"), f.given.insert("--tokenizer");
    f.seq = 128, f.micro_batch = std::max(1, 32 / w.size), f.epochs = 4, f.lr = 2e-3f, f.log_every = 100, f.score_answers = true;
    run_job(f, w, "fine-tuning summary");
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    World w;
    try {
        std::vector<std::string> args(argv + 1, argv + argc);
        for (const std::string& a : args)
            if ((a == "-h" || a == "--help") && (args.empty() || args[0] != "generate")) { std::fputs(kUsage, stdout); return 0; }
        if (!args.empty() && args[0] == "tokenize") return run_tokenize({args.begin() + 1, args.end()});
        if (!args.empty() && args[0] == "generate") return run_generate({args.begin() + 1, args.end()});
        w = world_init(&argc, &argv);
        std::string signature;
        for (const std::string& a : args) signature += a + "\n";
        world_check_same(w, signature, "the command-line options");
        Options o;
        world_agree(w, o.check_timeout, [&] { o = parse_options(args, w.size); });
        world_set_timeout(o.comm_timeout);  // the watchdog (world.h)
        world_track_collectives(o.check_collectives);
        // The default job (no model, preset, data or adapter) replaces its own outputs, saying so.
        bool default_job = o.model.empty() && o.preset.empty() && o.given.count("--data") == 0 && o.adapter.empty();
        if (default_job) o.overwrite = true;
        if (default_job)
            world_check_same(w, base_cached() ? "cached" : "to pretrain", "the default job's pretrained bases (" + default_path("data/base") + ")",
                             base_cached() ? "there, with this recipe (part 1 skipped)" : "absent or from another recipe (part 1 pretrains it)");
        if (default_job && !o.dry_run) run_default(o, w);
        else run_job(o, w, "run summary");
        world_finalize(w);
        return 0;
    } catch (const CollectiveError& e) {  // every rank learnt of it at once: one says it
        std::fflush(stdout);  // what was printed so far comes before the error
        if (w.rank == e.speaker) std::fprintf(stderr, "error: %s\n", e.what());
        std::fflush(stderr);
        world_barrier(w);
        world_finalize(w);
        return 1;
    } catch (const Error& e) {
        exit_with_error(e.what());
    } catch (const std::bad_alloc&) {
        exit_with_error("out of host memory (std::bad_alloc)");
    } catch (const std::exception& e) {  // a failure no check foresaw: still one line, and every rank ends
        exit_with_error(std::string("unexpected failure: ") + e.what());
    }
}
