// support/plan.cpp — the resolved plan of a run and its memory per rank, before any GPU (plan.h); the step on paper.
#include "support/plan.h"

#include <algorithm>
#include <cmath>

#include "distributed/threads.h"
#include "llama.h"

namespace {

double gib(double bytes) { return bytes / double(1 << 30); }

std::string number(double v) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.3g", v);
    return buf;
}

std::string lr_text(double v) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.3e", v);
    return buf;
}

// The LoRA line's target list: "all seven projections" or "q_proj,v_proj".
std::string targets(const LoraConfig& lora) {
    std::string list;
    int n = 0;
    for (int t = 0; t < kTargets; ++t)
        if (lora.target[t]) list += (list.empty() ? "" : ",") + std::string(lora_target_name(LoraTarget(t))), ++n;
    return n == kTargets ? "all seven projections" : list;
}

// How the schedule's shape reads, in its own family's terms (adamw.h has the formulas).
std::string schedule_text(const Schedule& s, const Options& o, int64_t steps) {
    std::string warmup = std::to_string(s.warmup_steps) + " step" + (s.warmup_steps == 1 ? "" : "s");
    if (o.warmup_steps < 0) warmup += " (3% of the steps, the default)";
    else if (o.given.count("--warmup-steps")) warmup += " (--warmup-steps)";
    std::string text;
    if (s.deepspeed()) {
        int W = std::max(2, s.warmup_steps);
        text = s.kind + " (DeepSpeed's formulas): warmup " + warmup + (W != s.warmup_steps ? " (DeepSpeed warms up over at least 2)" : "") + ", " + s.warmup_type +
               (s.kind == "WarmupCosineLR" ? " from " + number(s.warmup_min_ratio) + " x peak" : " from " + lr_text(s.warmup_min_lr)) +
               " to the peak " + lr_text(s.lr);
        if (s.kind == "WarmupDecayLR") text += ", then linear to " + lr_text(s.warmup_min_lr);
        if (s.kind == "WarmupCosineLR") text += ", then cosine to " + number(s.min_ratio) + " x peak";
        if (s.kind != "WarmupLR") text += " at step " + std::to_string(s.total_steps);
        text += "; DeepSpeed steps the scheduler after each optimizer step, so step s runs at iteration s - 2";
    } else if (s.kind == "constant") {
        text = "constant " + lr_text(s.lr);
    } else {
        text = s.kind + ": linear warmup over " + warmup + " from " + lr_text(s.warmup_min_lr) + " to the peak " + lr_text(s.lr);
        if (s.kind == "warmup-linear") text += ", then linear to 0 at step " + std::to_string(s.total_steps);
        if (s.kind == "warmup-cosine") text += ", then cosine to " + number(s.min_ratio) + " x peak at step " + std::to_string(s.total_steps);
    }
    if (o.schedule_steps > 0 && o.schedule_steps != steps)
        text += " (scheduler.params.total_num_steps " + std::to_string(o.schedule_steps) + "; the run is " + std::to_string(steps) + " steps)";
    return text;
}

// lr at a few telling steps: the first two, the end of warmup, the middle and the last (1-based steps).
std::string lr_samples(const Schedule& s, int64_t steps) {
    std::vector<int64_t> at = {1, 2, int64_t(s.deepspeed() ? std::max(2, s.warmup_steps) + 2 : s.warmup_steps), steps / 2, steps};
    std::sort(at.begin(), at.end());
    at.erase(std::unique(at.begin(), at.end()), at.end());
    std::string text;
    for (int64_t step : at)
        if (step >= 1 && step <= steps) text += (text.empty() ? "" : ", ") + std::to_string(step) + ": " + lr_text(s.lr_at(int(step - 1)));
    return text;
}

// Units that stay replicated at stage 3 (at most the persistence threshold, weights and adapters together).
int replicated_units(const LlamaConfig& c, const LoraConfig& lora, const ZeroOptions& z) {
    int64_t adapter = lora.rank > 0 ? lora_layout(c, lora).per_layer : 0;
    int n = 0;
    for (int u = 0; u < num_units(c); ++u)
        n += unit_layout(c, u).numel + (u >= 1 && u <= c.num_hidden_layers ? adapter : 0) <= z.persistence_threshold;
    return n;
}

// Offload's host threads: the pool's size from the CPUs a rank may use (threads.h), when known.
std::string offload_threads_text(const ZeroOptions& z, int cpus) {
    if (z.offload_threads > 0) return std::to_string(z.offload_threads) + " threads per rank";
    if (cpus <= 0) return "each rank's CPUs less two threads";
    int n = offload_pool_threads(cpus);
    return std::to_string(n) + " thread" + (n == 1 ? "" : "s") + " per rank: the " + std::to_string(cpus) + " CPU" + (cpus == 1 ? "" : "s") +
           " rank 0 may use, less the main thread and the worker";
}

std::string zero_text(const ZeroOptions& z, const LlamaConfig& c, const LoraConfig& lora, int ranks, int cpus) {
    static const char* what[] = {"data parallel: every rank holds everything, gradients all-reduced after the last micro-batch",
                                 "optimizer state sharded; gradients all-reduced, updated weights all-gathered",
                                 "optimizer state and gradients sharded (reduce-scattered after every micro-batch)",
                                 "optimizer state, gradients and weights sharded (each unit all-gathered before use)"};
    std::string text = "ZeRO stage " + std::to_string(z.stage) + " over " + std::to_string(ranks) + " rank" + (ranks == 1 ? "" : "s") + ": " +
                       what[z.stage];
    if (z.offload)
        text += std::string("; optimizer offload to CPU (") + (z.pin_memory ? "pinned" : "pageable") + " memory, AdamW on " +
                offload_threads_text(z, cpus) + ")";
    if (z.stage <= 1) text += "; all-reduce buckets of " + thousands(z.reduce_bucket_size) + " elements";
    if (z.stage == 3) {
        text += prefetches(z) ? "; the next unit prefetched (stage3_prefetch_bucket_size " + thousands(z.prefetch_bucket_size) + ")"
                              : "; no prefetch (stage3_prefetch_bucket_size 0)";
        int kept = replicated_units(c, lora, z);
        text += "; units of at most " + thousands(z.persistence_threshold) + " elements stay replicated (" + std::to_string(kept) + " of " +
                std::to_string(num_units(c)) + ")";
        if (z.keep_gathered) text += "; units kept gathered from forward to backward";
    }
    text += z.overlap_comm ? "; collectives on their own stream (overlap_comm)" : "; collectives on the compute stream (overlap_comm false)";
    if (!z.offload && (z.stage == 0 || z.stage == 3))
        text += z.overlap_update ? "; each unit's AdamW on a stream of its own, beside the next forward" : "; AdamW on the compute stream (--serial-update)";
    return text;
}

}  // namespace

int64_t run_steps(const Options& o, int64_t steps_per_epoch) { return o.steps ? o.steps : steps_per_epoch * std::max(1, o.epochs); }

bool has_weights(const std::string& dir) { return exists(dir + "/model.safetensors") || exists(dir + "/model.safetensors.index.json"); }

Plan make_plan(const Options& o, const LlamaConfig& c, const LoraConfig& lora, const Dataset& train, int32_t pad, int ranks, int cpus) {
    Plan p;
    p.ranks = ranks, p.cpus = cpus;
    Loader loader(train, o.micro_batch, o.seq, 0, ranks, o.seed, true, pad);
    p.micro_batches_per_epoch = loader.micro_batches_per_epoch();
    p.steps_per_epoch = std::max<int64_t>(1, p.micro_batches_per_epoch / o.grad_accum);
    p.steps = run_steps(o, p.steps_per_epoch);
    p.global_batch = int64_t(o.micro_batch) * o.grad_accum * ranks;
    p.schedule = make_schedule(o, p.steps);
    p.trainable = lora.rank > 0 ? lora_layout(c, lora).per_layer * c.num_hidden_layers : c.num_parameters();
    p.memory = ZeroStore::estimate(c, lora, o.zero, ranks);
    p.activations = double(LlamaModel::arena_bytes(c, lora.shape(o.seed), o.micro_batch, o.seq, o.checkpoint_activations));
    return p;
}

void print_run_plan(FILE* out, const Plan& p, const Options& o, const LlamaConfig& c, const LoraConfig& lora) {
    double share = 100.0 * double(p.trainable) / double(c.num_parameters());
    if (lora.rank > 0)
        std::fprintf(out, "plan: %s, %s parameters; LoRA r=%d, alpha %g (scale %g)%s, dropout %g, on %s: %s trainable (%.2f%%)%s\n", c.name.c_str(),
                     thousands(c.num_parameters()).c_str(), lora.rank, double(lora.alpha), double(lora.scale()), lora.use_rslora ? ", rsLoRA" : "",
                     double(lora.dropout), targets(lora).c_str(), thousands(p.trainable).c_str(), share,
                     o.lora_folded ? "; s B folded into the base products (--lora-layout folded)" : "");
    else
        std::fprintf(out, "plan: %s, %s parameters; full fine-tuning: every weight trains\n", c.name.c_str(), thousands(c.num_parameters()).c_str());
    std::fprintf(out, "plan: batch %lld sequences of %d tokens per step = micro-batch %d x accumulation %d x %d rank%s (%s tokens)%s\n",
                 (long long)p.global_batch, o.seq, o.micro_batch, o.grad_accum, p.ranks, p.ranks == 1 ? "" : "s",
                 thousands(p.global_batch * o.seq).c_str(), o.plan_ranks ? " (--ranks: planned, not started)" : "");
    std::string length = o.steps ? "--steps" : o.epochs ? "--epochs " + std::to_string(o.epochs) : "1 epoch, the default";
    std::fprintf(out, "plan: %lld steps (%s), %.2f epochs of %lld steps (%lld micro-batches per rank per epoch)\n", (long long)p.steps,
                 length.c_str(), double(p.steps) / double(p.steps_per_epoch), (long long)p.steps_per_epoch, (long long)p.micro_batches_per_epoch);
    std::fprintf(out, "plan: lr %s\n", schedule_text(p.schedule, o, p.steps).c_str());
    std::fprintf(out, "plan: lr at step %s\n", lr_samples(p.schedule, p.steps).c_str());
    std::fprintf(out, "plan: AdamW betas (%g, %g), eps %g, weight decay %g; gradient clipping %s\n", double(o.beta1), double(o.beta2),
                 double(o.eps), double(o.weight_decay), o.clip > 0 ? ("at global norm " + number(o.clip)).c_str() : "off");
    std::fprintf(out, "plan: %s\n", zero_text(o.zero, c, lora, p.ranks, p.cpus).c_str());
    std::fprintf(out, "plan: activation checkpointing %s; %s\n", o.checkpoint_activations ? "on (each layer recomputed in backward)" : "off",
                 o.pack ? "rows packed into sequences" : "one row per sequence (--no-pack)");
    for (const std::string& note : o.config_notes) std::fprintf(out, "config: %s: %s\n", o.config_file.c_str(), note.c_str());
}

void print_memory_plan(FILE* out, const Plan& p, const Options& o, const LlamaConfig& c, const LoraConfig& lora) {
    const MemoryReport& m = p.memory;
    double gpu = m.model_states() + p.activations;
    std::fprintf(out, "memory per rank, estimate (GiB): weights %.2f, gathered units %.2f, master %.2f, grads %.2f (+%.2f buffers), "
                      "moments %.2f, activations %.2f; on each GPU %.2f, plus the CUDA context (about 0.5) and library workspaces%s\n",
                 gib(m.base), gib(m.gathered), gib(m.master), gib(m.grads), gib(m.grad_buffers), gib(m.moments), gib(p.activations), gib(gpu),
                 m.host > 0 ? (", and " + number(gib(m.host)) + " GiB of CPU memory (offload)").c_str() : "");
    std::string line, offload;
    for (int stage = 0; stage <= 3; ++stage) {
        ZeroOptions z = o.zero;
        z.stage = stage, z.offload = false;
        line += (stage ? ", " : "") + std::to_string(stage) + ": " + number(gib(ZeroStore::estimate(c, lora, z, p.ranks).model_states() + p.activations));
        if (stage == 0) continue;
        z.offload = true;
        MemoryReport off = ZeroStore::estimate(c, lora, z, p.ranks);
        offload += (stage > 1 ? ", " : "") + std::to_string(stage) + ": " + number(gib(off.model_states() + p.activations)) + " (CPU " +
                   number(gib(off.host)) + ")";
    }
    std::fprintf(out, "memory per rank at each ZeRO stage on %d rank%s (GiB on each GPU, activations included): %s; with optimizer offload: %s\n",
                 p.ranks, p.ranks == 1 ? "" : "s", line.c_str(), offload.c_str());
}

void print_dry_run(const Options& o, const LlamaConfig& c, const LoraConfig& lora, const Dataset& train, int32_t pad, int ranks, int cpus) {
    Plan p = make_plan(o, c, lora, train, pad, ranks, cpus);
    print_run_plan(stdout, p, o, c, lora);
    print_memory_plan(stdout, p, o, c, lora);
    if (!o.model.empty() && !has_weights(o.model))
        std::printf("dry run: %s holds a config.json without weights: a plan only (training needs model.safetensors)\n", o.model.c_str());
    std::printf("dry run: inputs are valid (model %s, %s parameters)\n", c.name.c_str(), thousands(c.num_parameters()).c_str());
}

// ================================================================================================ the step on paper

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

// A step on paper for `cl.ranks` ranks, a GPU each, on `cl.nodes` nodes: the bytes each rank sends
// (ZeroStore::traffic) and the time the step takes at `flops_per_s` and the cluster's bus bandwidth
// (distributed/traffic.h); with every_stage, the same at each ZeRO stage on one line.
void print_step_on_paper(const Options& o, const LlamaConfig& c, const LoraConfig& lora, const Cluster& cl, double flops_per_s,
                         const std::string& how, bool every_stage) {
    double psi = double(c.num_parameters());
    int64_t adapters = lora.rank > 0 ? lora_layout(c, lora).per_layer * c.num_hidden_layers : 0;
    double flops = flops_per_token(c, adapters, o.seq, o.checkpoint_activations) * double(o.micro_batch) * o.seq * o.grad_accum;
    Traffic t = ZeroStore::traffic(c, lora, o.zero, cl.ranks, o.grad_accum);
    double padding = t.volume_bytes() - ZeroStore::traffic(c, lora, o.zero, cl.ranks, o.grad_accum, false).volume_bytes();
    std::printf("communication per step per rank (ZeRO stage %d, %d rank%s, formula): %s; padding shards to a multiple of %d adds %.0f bytes "
                "(%.2g%%)\n", o.zero.stage, cl.ranks, cl.ranks > 1 ? "s" : "", traffic_text(t, psi).c_str(), cl.ranks, padding,
                100 * padding / t.volume_bytes());
    StepTime time = step_time(t, cl, flops, flops_per_s);
    std::printf("on paper, one step with a GPU per rank: %s\n", step_time_text(time, cl, flops, flops_per_s, how).c_str());
    if (!every_stage) return;
    std::string line;
    for (int stage = 0; stage <= 3; ++stage) {
        ZeroOptions z = o.zero;
        z.stage = stage;
        Traffic ts = ZeroStore::traffic(c, lora, z, cl.ranks, o.grad_accum);
        StepTime st = step_time(ts, cl, flops, flops_per_s);
        char cell[160];
        std::snprintf(cell, sizeof cell, "%s%d: %.3g Psi, %.3g GB sent, %.3g ms (%s)", stage ? "; " : "", stage, ts.volume_elements() / psi,
                      ts.wire_bytes() / 1e9, st.comm() * 1e3, st.communication_bound() ? "communication-bound" : "compute-bound");
        line += cell;
    }
    std::printf("communication per step per rank at each ZeRO stage: %s\n", line.c_str());
}

// What one GPU sustains for the compute time on paper: --tflops, else kAssumedMfu of `peak` (an H100's when 0).
double sustained_flops(const Options& o, double peak, std::string& how) {
    if (o.tflops > 0) {
        how = "--tflops";
        return o.tflops * 1e12;
    }
    how = peak > 0 ? "assumed: 45% of this GPU's bf16 peak, --tflops to set" : "assumed: 45% of an H100's bf16 peak, --tflops to set";
    return kAssumedMfu * (peak > 0 ? peak : kH100PeakFlops);
}
