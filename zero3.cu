// zero3.cu — the ZeRO partitioner behind gather / release / reduce_grads (zero3.h), in the order a step runs
// it: the plan; gather / release (plain stage 3, then prefetch); reduce_grads; the step; weights in and out.
//
// Units and segments. A unit (embedding, a decoder layer, the final norm) is one or two flat tensors:
// its base weights, and for a layer with LoRA its adapters. Each segment is partitioned on its own:
// padded to a multiple of N ranks, rank r owns elements [r*size, r*size + owned(r)) (make_shard).
// What a rank keeps of a segment (Psi = its elements, the trainable part Phi = Psi or the adapters):
//
//   stage | bf16 weights   | fp32 gradients            | fp32 master, m, v (optimizer)
//   ------+----------------+---------------------------+------------------------------
//     0   | all            | all (all-reduced)         | all
//     1   | all            | all (all-reduced)         | own shard; bf16 all-gathered after step
//     2   | all            | own shard (reduce-scatter)| own shard; bf16 all-gathered after step
//     3   | own shard      | own shard (reduce-scatter)| own shard; gather() all-gathers weights
//
// Per rank: 2 Psi/(N at stage 3) + 4 Phi/(N at stages 2, 3) + 12 Phi/(N at stages 1-3): the paper's
// 2 Psi + 2 Psi + K Psi with fp32 gradients and K = 12. Small units (the final norm) stay replicated at
// stage 3 (persistence threshold). Gradient accumulation: stages 0, 1 keep full gradients and all-reduce
// once, after the last micro-batch of a step; stages 2, 3 reduce-scatter after every micro-batch into the
// shard, where micro-batches add up. Collectives run on their own stream, ordered with compute by events;
// stage 3 prefetches the next unit's weights while the current one computes. On one rank a stage-3 shard
// is the whole unit, and gather() hands it out in place (gathers_in_place; --copy-gathers copies it).
// Offload (ZeRO-Offload, distributed/offload.h) keeps master, m and v in host memory and runs AdamW on the
// CPU, overlapped with the GPU, with the same bits; this file calls it at the points marked O1-O6. The
// memory and the traffic all this makes, counted on paper: distributed/zero_estimate.cpp.
//
// Where each stage differs, in this file: stage 0 — the constructor (opt_begin = 0, opt_len = numel) and
// the norm in step(); stages 0/1 — reduce_grads' all-reduce branch; stages 1/2 — the all-gather in
// update_on_gpu and write_compute_copy (await_update's, with offload); stages 2/3 — take_grad_buffer and
// reduce_grads' reduce-scatter; stage 3 — Segment::sharded, gather's slot branch, all_gather_unit, prefetch.
#include "zero3.h"

#include <algorithm>
#include <cstring>
#include <string>

#include "distributed/offload.h"
#include "kernels/ops.h"
#include "support/cuda_calls.h"
#include "support/report.h"
#include "support/safetensors.h"

// ================================================================================================ the plan

int64_t Shard::owned(int rank) const { return std::max<int64_t>(0, std::min<int64_t>(size, numel - begin(rank))); }

Shard make_shard(int64_t numel, int ranks) {
    Shard s;
    s.numel = numel;
    s.size = (numel + ranks - 1) / ranks;
    s.padded = s.size * ranks;
    return s;
}

void check_zero_options(const ZeroOptions& z, const std::string& where) {
    if (z.stage < 0 || z.stage > 3) fail(where + ": ZeRO stage must be 0, 1, 2 or 3, not " + std::to_string(z.stage));
    if (z.offload && z.stage == 0) fail(where + ": optimizer offload needs ZeRO stage 1, 2 or 3 (the optimizer state must be partitioned)");
    if (z.reduce_bucket_size <= 0) fail(where + ": reduce_bucket_size must be positive");
    if (z.allgather_bucket_size <= 0) fail(where + ": allgather_bucket_size must be positive");
    if (z.prefetch_bucket_size < 0) fail(where + ": stage3_prefetch_bucket_size must be >= 0");
    if (z.persistence_threshold < 0) fail(where + ": stage3_param_persistence_threshold must be >= 0");
    if (z.copy_gathers && z.stage != 3) fail(where + ": --copy-gathers applies to ZeRO stage 3 only");
}

bool prefetches(const ZeroOptions& z) { return z.stage == 3 && z.prefetch_bucket_size > 0; }

bool gathers_in_place(const ZeroOptions& z, int ranks) { return z.stage == 3 && ranks == 1 && !z.copy_gathers; }

struct ZeroStore::Segment {
    int64_t numel = 0;  // 0: absent
    bool trainable = false;
    bool sharded = false;            // stage 3 and not persistent: only this rank's bf16 shard is resident
    Shard shard;
    bf16* full16 = nullptr;          // [shard.padded] replicated bf16 (when !sharded)
    bf16* shard16 = nullptr;         // [shard.size] this rank's bf16 part (when sharded)
    int64_t opt_begin = 0, opt_len = 0;  // the elements this rank optimizes
    float *master = nullptr, *m = nullptr, *v = nullptr;  // [opt_len]; host memory when offloaded
    float* grad = nullptr;           // stages 0, 1: [shard.padded]; stages 2, 3: [shard.size], accumulated
    float* opt_grad = nullptr;       // the gradient elements aligned with master
    std::vector<UpdateRun> runs;     // master's tensors by weight decay (offsets from opt_begin)
    bool stale_grad = false;         // grad still holds the last step's: zeroed when this step first needs it
    int cpu = -1;                    // offload: its shard's index in the CPU optimizer
    bool update_pending = false;     // overlap_update: its update may still run; the next reader waits for it
    bf16* opt16() const { return sharded ? shard16 : full16 + opt_begin; }  // [opt_len] the bf16 weights of master
};

struct ZeroStore::Unit {
    Segment seg[2];  // base weights, LoRA adapters
    int trainable = -1;  // the segment that trains (0 full fine-tuning, 1 LoRA), -1 none
    bool sharded = false;
    int slot = -1;        // stage 3: the slot holding it while gathered
    Pass pass = Pass::forward;
    int grad_buffer = -1;  // stages 2, 3: its full-gradient buffer during backward
};

ZeroStore::ZeroStore(const LlamaConfig& c, const LoraConfig& lora, const ZeroOptions& z, const World& world, cudaStream_t stream)
    : c_(c), lora_(lora), z_(z), w_(world), layout_(lora_layout(c, lora)), stream_(stream) {
    int N = w_.size, r = w_.rank;
    LlamaConfig slots = with_lora_slots(c, lora);
    for (int t = 0; t < kLayerTensors; ++t)  // padded rows: LoRA's layout, the base frozen (it never trains padded)
        if (c.row_pad[t] && (z.inference || slots.row_pad[t] != c.row_pad[t]))
            exit_with_error("ZeroStore: weights with padded rows are LoRA training's layout (lora.h with_lora_slots) only");
    if (z.offload && !z.inference) cpu_ = std::make_unique<CpuOptimizer>(w_, z.offload_threads, z.pin_memory, stream_, comm_stream());
    for (int u = 0; u < num_units(c); ++u) {
        Unit* U = new Unit();
        U->seg[0].numel = unit_layout(c, u).numel;
        U->seg[1].numel = (lora.rank > 0 && u >= 1 && u <= c.num_hidden_layers) ? layout_.per_layer : 0;
        U->trainable = z.inference ? -1 : lora.rank > 0 ? (U->seg[1].numel ? 1 : -1) : 0;
        U->sharded = z.stage == 3 && U->seg[0].numel + U->seg[1].numel > z.persistence_threshold;
        for (int k = 0; k < 2; ++k) {
            Segment& s = U->seg[k];
            if (!s.numel) continue;
            s.trainable = U->trainable == k;
            s.sharded = U->sharded;
            s.shard = make_shard(s.numel, N);
            if (s.sharded) s.shard16 = device_zeros<bf16>(size_t(s.shard.size), "bf16 weight shard"), mem_.base += double(s.shard.size) * 2;
            else s.full16 = device_zeros<bf16>(size_t(s.shard.padded), "bf16 weights"), mem_.base += double(s.shard.padded) * 2;
            if (!s.trainable) continue;
            s.opt_begin = z.stage == 0 ? 0 : s.shard.begin(r);
            s.opt_len = z.stage == 0 ? s.numel : s.shard.owned(r);
            int64_t g = z.stage <= 1 ? s.shard.padded : s.shard.size;
            s.grad = device_zeros<float>(size_t(std::max<int64_t>(1, g)), "fp32 gradients");
            s.opt_grad = z.stage <= 1 ? s.grad + s.opt_begin : s.grad;
            mem_.grads += double(g) * 4;
            n_train_ += s.numel;
            for_each_tensor(u, k, s.opt_begin, s.opt_begin + s.opt_len, [&](const UnitTensor& t, int64_t, int64_t soff, int64_t n) {
                bool decays = t.spec.shape.size() > 1;  // matrices; norm weights never decay
                int64_t at = soff - s.opt_begin;
                if (!s.runs.empty() && s.runs.back().decays == decays && s.runs.back().offset + s.runs.back().count == at) s.runs.back().count += n;
                else s.runs.push_back({at, n, decays});
            });
            if (cpu_) {  // master, m and v in host memory
                s.cpu = cpu_->add(u, s.opt_len, s.runs, s.opt_grad, s.opt16());
                CpuOptimizer::HostState h = cpu_->state(s.cpu);
                s.master = h.master, s.m = h.m, s.v = h.v;
                continue;
            }
            size_t n = size_t(std::max<int64_t>(1, s.opt_len));
            s.master = device_zeros<float>(n, "fp32 master weights"), s.m = device_zeros<float>(n, "AdamW moments");
            s.v = device_zeros<float>(n, "AdamW moments");
            mem_.master += double(n) * 4, mem_.moments += double(n) * 8;
        }
        units_.push_back(U);
    }
    if (cpu_) cpu_->start(), mem_.host = cpu_->host_bytes();
    norm_sq_ = device_alloc<float>(1, "grad norm");
    clip_scale_ = device_alloc<float>(1, "clip scale");
    compute_done_ = sync_event(), reduced_ = sync_event(), gathered_ = sync_event();
    if (z.overlap_update && !cpu_ && n_train_ > 0) {
        check_cuda(cudaStreamCreateWithFlags(&update_stream_, cudaStreamNonBlocking), "cudaStreamCreate");
        clipped_ = sync_event();
        for (size_t u = 0; u < units_.size(); ++u) updated_.push_back(sync_event());
    }
}

ZeroStore::~ZeroStore() {
    cpu_.reset();  // the worker stops and the copies finish before the buffers they use are freed
    for (Unit* U : units_) {
        for (Segment& s : U->seg) {
            device_free(s.full16), device_free(s.shard16), device_free(s.grad);
            if (s.cpu < 0) device_free(s.master), device_free(s.m), device_free(s.v);  // else host memory, the CPU optimizer's
        }
        delete U;
    }
    for (Slot& s : slots_) device_free(s.data), cudaEventDestroy(s.free_event), cudaEventDestroy(s.ready_event);
    for (GradBuffer& g : grad_buffers_) device_free(g.data), cudaEventDestroy(g.free_event);
    device_free(norm_sq_), device_free(clip_scale_);
    cudaEventDestroy(compute_done_), cudaEventDestroy(reduced_), cudaEventDestroy(gathered_);
    if (update_stream_) cudaStreamSynchronize(update_stream_), cudaStreamDestroy(update_stream_), cudaEventDestroy(clipped_);
    for (cudaEvent_t e : updated_) cudaEventDestroy(e);
}

// ================================================================================================ gather / release
//
// Plain stage 3, one unit u on N ranks: all that runs with prefetching off. The code below adds the prefetch,
// the one-rank shortcut and offload's wait for the CPU update.
//   gather(u)        slot = a free buffer; comm: all_gather(u's shards -> slot); compute waits for it
//                    ... the model runs u's forward or backward, reading the slot ...
//   release(u)       compute is past the slot: it may take another unit
//   reduce_grads(u)  comm: reduce_scatter(u's full gradient -> this rank's part); shard gradient += it
//   step()           AdamW on the shard; the next gather(u) all-gathers the new weights
// Prefetch hides the all-gather behind compute: gather(u) also issues the all-gather of the unit needed
// next (u+1 forward, u-1 backward), so it is in its slot, or on its way, when its own gather comes.
//
// The two streams (compute = stream_, comm = the comm stream) and their events, for one unit u:
//   1. all_gather_unit(u) comm waits slot.free_event: the slot's previous unit is no longer read by compute
//   2.                    comm all-gathers u's shards into the slot (base, then adapters at a 16-byte-aligned
//                         offset), then records slot.ready_event
//   3. gather(u)          compute waits slot.ready_event (steps 1-2 ran here, or earlier as a prefetch)
//   4.                    compute runs u's forward or backward, reading the slot
//   5. release(u)         compute records slot.free_event after the last kernel that reads the slot
//   6. reduce_grads(u)    compute records compute_done_; comm waits it, reduce-scatters u's full gradient
//                         into this rank's shard and adds it up there, then records buffer.free_event
//   7. take_grad_buffer   compute waits buffer.free_event before zeroing that buffer for another unit
//   8. step()             compute waits reduced_, recorded on comm after every reduction; comm waits for
//                         compute's part of the step before the next step's gathers; u's update runs on the
//                         update stream (overlap_update) and records updated_[u], which step 1 of u's next
//                         all-gather waits for (await_update)
// On one rank (gathers_in_place) steps 1-5 are gone: gather(u) returns the shard, which compute reads once
// it has waited for u's update (with offload, for the unit's upload: O4). Stages 0-2 and persistent units
// keep their weights resident: gather(u) hands them out (stage 0 after the same wait).

UnitView ZeroStore::gather(int unit, Pass pass) {
    Unit& U = *units_[size_t(unit)];
    U.pass = pass;
    world_at_unit(unit, pass == Pass::forward ? "gathered for the forward" : "gathered for the backward");  // the watchdog's label
    world_pace(w_, stream_);  // the host stays a few units ahead of the GPU, in waits the watchdog bounds
    const bf16* seg16[2] = {U.seg[0].full16, U.seg[1].full16};
    if (U.sharded && !gathers_in_place(z_, w_.size)) {  // stage 3
        if (U.slot < 0) all_gather_unit(unit);  // not prefetched: steps 1-2 now
        Slot& s = slots_[size_t(U.slot)];
        check_cuda(cudaStreamWaitEvent(stream_, s.ready_event, 0), "wait");  // 3
        seg16[0] = s.data, seg16[1] = s.data + align_up(U.seg[0].shard.padded);
    } else {
        await_update(unit, stream_);  // the step's update of these weights (offload: O4)
        if (U.sharded) seg16[0] = U.seg[0].shard16, seg16[1] = U.seg[1].shard16;  // one rank: the shard is the whole unit
    }
    prefetch(pass == Pass::forward ? unit + 1 : unit - 1);
    float* grads = nullptr;
    if (pass == Pass::backward && U.trainable >= 0) {
        Segment& s = U.seg[U.trainable];
        zero_gradient(s);
        if (z_.stage <= 1) grads = s.grad;
        else grads = U.grad_buffer >= 0 ? grad_buffers_[size_t(U.grad_buffer)].data : take_grad_buffer(unit);
    }
    UnitView v;
    v.weights = seg16[0];
    if (U.trainable == 0) v.grads = grads;
    if (U.seg[1].numel) v.lora = lora_view(lora_, layout_, seg16[1], U.trainable == 1 ? grads : nullptr);
    return v;
}

void ZeroStore::release(int unit) {
    Unit& U = *units_[size_t(unit)];
    if (!U.sharded || U.slot < 0) return;
    if (z_.keep_gathered && U.pass == Pass::forward) return;  // kept for this unit's backward
    Slot& s = slots_[size_t(U.slot)];
    check_cuda(cudaEventRecord(s.free_event, stream_), "event");  // 5
    s.unit = -1, U.slot = -1;
}

// Steps 1-2: the unit's shards into a free slot, on the comm stream.
void ZeroStore::all_gather_unit(int unit) {
    Unit& U = *units_[size_t(unit)];
    int found = free_slot(slot_numel(U));
    Slot& s = slots_[size_t(found)];
    cudaStream_t cs = comm_stream();
    await_update(unit, cs);                                                                         // (offload: O4)
    check_cuda(cudaStreamWaitEvent(cs, s.free_event, 0), "wait");                                   // 1
    w_.comm->all_gather(U.seg[0].shard16, s.data, size_t(U.seg[0].shard.size), DType::bf16, cs);    // 2
    if (U.seg[1].numel)
        w_.comm->all_gather(U.seg[1].shard16, s.data + align_up(U.seg[0].shard.padded), size_t(U.seg[1].shard.size), DType::bf16, cs);
    check_cuda(cudaEventRecord(s.ready_event, cs), "event");
    s.unit = unit, U.slot = found;
}

int64_t ZeroStore::slot_numel(const Unit& U) const {
    return align_up(U.seg[0].shard.padded) + (U.seg[1].numel ? U.seg[1].shard.padded : 0);
}

// A slot no unit holds with room for `numel`; else a new one, big enough for any unit.
int ZeroStore::free_slot(int64_t numel) {
    for (int i = 0; i < int(slots_.size()); ++i)
        if (slots_[size_t(i)].unit < 0 && slots_[size_t(i)].capacity >= numel) return i;
    Slot s;
    for (Unit* V : units_)
        if (V->sharded) s.capacity = std::max(s.capacity, slot_numel(*V));
    s.data = device_alloc<bf16>(size_t(s.capacity), "stage-3 gather buffer");
    mem_.gathered += double(s.capacity) * 2;
    s.free_event = sync_event(), s.ready_event = sync_event();
    check_cuda(cudaEventRecord(s.free_event, stream_), "event");
    slots_.push_back(s);
    return int(slots_.size()) - 1;
}

// The prefetch: steps 1-2 for the unit the pass needs next, while this one computes. At most kGatherSlots
// units are gathered at once (the one computing, the one prefetched, one being released).
void ZeroStore::prefetch(int unit) {
    if (!prefetches(z_) || gathers_in_place(z_, w_.size) || unit < 0 || unit >= int(units_.size())) return;
    Unit& U = *units_[size_t(unit)];
    if (!U.sharded || U.slot >= 0) return;
    // offload: rather than hold the host here, gather() waits for it (O4). Skipping keeps every rank's
    // all-gathers in the same order: no other collective is issued before that unit's gather.
    if (cpu_ && U.trainable >= 0 && cpu_->pending(U.seg[U.trainable].cpu)) return;
    int busy = 0;
    for (const Slot& s : slots_) busy += s.unit >= 0;
    if (busy >= kGatherSlots && !z_.keep_gathered) return;
    world_at_unit(unit, "prefetched");
    all_gather_unit(unit);
    ++prefetched_;
}

// ================================================================================================ reduce_grads

// The free gradient buffer released longest ago, so the buffer whose reduce-scatter was just queued keeps
// running while the next unit's backward fills another (a new one is made while fewer than kGradBuffers exist).
float* ZeroStore::take_grad_buffer(int unit) {
    Unit& U = *units_[size_t(unit)];
    int64_t need = U.seg[U.trainable].shard.padded;
    int found = -1;
    for (int i = 0; i < int(grad_buffers_.size()); ++i) {
        const GradBuffer& b = grad_buffers_[size_t(i)];
        if (b.unit < 0 && b.capacity >= need && (found < 0 || b.released < grad_buffers_[size_t(found)].released)) found = i;
    }
    bool just_queued = found >= 0 && grad_buffers_[size_t(found)].released == releases_ - 1;
    if (found < 0 || (just_queued && int(grad_buffers_.size()) < kGradBuffers)) {
        GradBuffer b;
        for (Unit* V : units_)
            if (V->trainable >= 0) b.capacity = std::max(b.capacity, V->seg[V->trainable].shard.padded);
        b.data = device_alloc<float>(size_t(b.capacity), "full-gradient buffer");
        mem_.grad_buffers += double(b.capacity) * 4;
        b.free_event = sync_event();
        check_cuda(cudaEventRecord(b.free_event, stream_), "event");
        grad_buffers_.push_back(b);
        found = int(grad_buffers_.size()) - 1;
    }
    GradBuffer& b = grad_buffers_[size_t(found)];
    check_cuda(cudaStreamWaitEvent(stream_, b.free_event, 0), "wait");  // 7: its reduce-scatter has finished
    check_cuda(cudaMemsetAsync(b.data, 0, size_t(need) * 4, stream_), "memset");
    b.unit = unit, U.grad_buffer = found;
    return b.data;
}

void ZeroStore::reduce_grads(int unit) {
    Unit& U = *units_[size_t(unit)];
    if (U.trainable < 0) return;
    Segment& s = U.seg[U.trainable];
    cudaStream_t cs = comm_stream();
    world_at_unit(unit, "gradients reduced");
    if (z_.stage <= 1) {  // all-reduce the full gradient once per step, in buckets
        if (!last_micro_) return;
        check_cuda(cudaEventRecord(compute_done_, stream_), "event");  // 6: the comm stream waits for this unit's backward
        check_cuda(cudaStreamWaitEvent(cs, compute_done_, 0), "wait");
        for (int64_t off = 0; off < s.shard.padded; off += z_.reduce_bucket_size)
            w_.comm->all_reduce(s.grad + off, size_t(std::min(z_.reduce_bucket_size, s.shard.padded - off)), cs);
        if (cpu_) cpu_->gradient_ready(s.cpu);  // offload: O1
        return;
    }
    // stages 2, 3: reduce-scatter this micro-batch's gradient, add this rank's part into the shard
    check_cuda(cudaEventRecord(compute_done_, stream_), "event");  // 6
    check_cuda(cudaStreamWaitEvent(cs, compute_done_, 0), "wait");
    GradBuffer& b = grad_buffers_[size_t(U.grad_buffer)];
    float* mine = b.data + s.shard.begin(w_.rank);
    w_.comm->reduce_scatter(b.data, mine, size_t(s.shard.size), cs);
    if (s.opt_len > 0) accumulate(s.grad, mine, s.opt_len, cs);
    check_cuda(cudaEventRecord(b.free_event, cs), "event");
    b.unit = -1, b.released = releases_++, U.grad_buffer = -1;
    if (cpu_ && last_micro_) cpu_->gradient_ready(s.cpu);  // offload: O1, this step's gradient is complete
}

// ================================================================================================ the step

void ZeroStore::step(const AdamWConfig& c, float lr, int step, float max_norm) {
    finish_update();  // the last update has finished (the forward since waited for every unit)
    for (Unit* U : units_)
        if (U->trainable >= 0) zero_gradient(U->seg[U->trainable]);  // a unit no backward reached this step
    cudaStream_t cs = comm_stream();
    check_cuda(cudaEventRecord(reduced_, cs), "event");  // 8: every reduction has landed
    check_cuda(cudaStreamWaitEvent(stream_, reduced_, 0), "wait");
    // Global gradient norm: each rank sums the squares of the elements it optimizes (stage 0: its shard's
    // slice of the identical full gradient), then the sums are all-reduced.
    check_cuda(cudaMemsetAsync(norm_sq_, 0, 4, stream_), "memset");
    world_at_unit(-1, "gradient norm");
    for (Unit* U : units_) {
        if (U->trainable < 0) continue;
        Segment& s = U->seg[U->trainable];
        if (z_.stage == 0) grad_sum_squares(s.grad + s.shard.begin(w_.rank), s.shard.owned(w_.rank), norm_sq_, stream_);
        else grad_sum_squares(s.opt_grad, s.opt_len, norm_sq_, stream_);
    }
    w_.comm->all_reduce(norm_sq_, 1, stream_);
    clip_coefficient(norm_sq_, max_norm, clip_scale_, stream_);
    if (cpu_) cpu_->start_step(c, lr, step, clip_scale_);  // offload: O2; returns while the worker updates (O3)
    else update_on_gpu(c, lr, step);
    // Gathered copies are stale now; the next gathers read the new shards after this step.
    for (Slot& s : slots_)
        if (s.unit >= 0) units_[size_t(s.unit)]->slot = -1, s.unit = -1, check_cuda(cudaEventRecord(s.free_event, stream_), "event");
    check_cuda(cudaEventRecord(compute_done_, stream_), "event");
    check_cuda(cudaStreamWaitEvent(cs, compute_done_, 0), "wait");
}

// AdamW on the GPU, unit by unit; stages 1, 2 then all-gather the new weights. With overlap_update, a unit
// whose new weights need no all-gather (stage 0, stage 3's sharded units) is updated on update_stream_ once
// the clip coefficient is ready, in unit order, while the compute stream goes on: the next step's forward of
// unit u waits only for u's update (await_update), so the updates of later units run beside the forward of
// earlier ones (memory-bound AdamW beside compute-bound products). The compute stream has the greater
// priority (train.cpp), so the update's blocks take the SMs its kernels leave. The rest run on the compute
// stream.
//   compute:  ... backward | norm, clip -> clipped_ | (forward u=0: waits updated_[0]) (forward u=1: waits ..
//   update:                  waits clipped_ | AdamW u=0 -> updated_[0] | AdamW u=1 -> updated_[1] | ...
void ZeroStore::update_on_gpu(const AdamWConfig& c, float lr, int step) {
    if (update_stream_) {
        check_cuda(cudaEventRecord(clipped_, stream_), "event");
        check_cuda(cudaStreamWaitEvent(update_stream_, clipped_, 0), "wait");
    }
    for (int u = 0; u < int(units_.size()); ++u) {
        Unit* U = units_[size_t(u)];
        if (U->trainable < 0) continue;
        Segment& s = U->seg[U->trainable];
        world_at_unit(u, "updated weights gathered");
        bf16* dst = s.opt16();
        const bool aside = overlaps_update(s);
        for (const UpdateRun& r : s.runs)
            adamw_step_gpu(s.master + r.offset, s.opt_grad + r.offset, s.m + r.offset, s.v + r.offset, dst + r.offset, r.count, c, lr,
                           r.decays ? c.weight_decay : 0.0f, step, clip_scale_, aside ? update_stream_ : stream_);
        if (aside) check_cuda(cudaEventRecord(updated_[size_t(u)], update_stream_), "event"), s.update_pending = true;
        if (!s.sharded && z_.stage >= 1)  // stages 1, 2: everyone's new weights
            w_.comm->all_gather(s.full16 + s.shard.begin(w_.rank), s.full16, size_t(s.shard.size), DType::bf16, stream_);
    }
}

bool ZeroStore::overlaps_update(const Segment& s) const { return update_stream_ && (s.sharded || z_.stage == 0); }

// Before a trainable unit's weights are first read after a step (by `reader`: compute, or the comm stream's
// all-gather), its update has run. On the GPU with overlap_update: the reader waits for the unit's event.
// Offload, O4: the step finishes in the next forward, unit by unit: the upload of the CPU's update is waited
// for; a replicated unit (stages 1, 2) then all-gathers everyone's new part, as update_on_gpu does.
void ZeroStore::await_update(int unit, cudaStream_t reader) {
    Unit& U = *units_[size_t(unit)];
    if (U.trainable < 0) return;
    Segment& s = U.seg[U.trainable];
    if (!cpu_) {
        if (s.update_pending) check_cuda(cudaStreamWaitEvent(reader, updated_[size_t(unit)], 0), "wait"), s.update_pending = false;
        return;
    }
    cudaEvent_t uploaded = cpu_->before_read(s.cpu);
    if (!uploaded) return;  // already waited for since the last step
    cudaStream_t cs = comm_stream();
    check_cuda(cudaStreamWaitEvent(cs, uploaded, 0), "wait");
    world_at_unit(unit, "updated weights gathered (offload)");
    if (!s.sharded) {  // stages 1, 2 (and a replicated stage-3 unit): everyone's new part, then compute reads it
        w_.comm->all_gather(s.full16 + s.shard.begin(w_.rank), s.full16, size_t(s.shard.size), DType::bf16, cs);
        check_cuda(cudaEventRecord(gathered_, cs), "event");
        check_cuda(cudaStreamWaitEvent(stream_, gathered_, 0), "wait");
    } else if (gathers_in_place(z_, w_.size)) {  // compute reads the shard itself
        check_cuda(cudaStreamWaitEvent(stream_, uploaded, 0), "wait");
    }
}

// The update in flight has finished, before anything reads or writes master, m or v (or the gradients the
// update reads): on the GPU with overlap_update, the host waits for the update stream; offload, O6: for the
// CPU's update.
void ZeroStore::finish_update() {
    if (cpu_) return cpu_->finish();
    if (!update_stream_) return;
    world_wait(w_, update_stream_);
    for (Unit* U : units_)
        for (Segment& s : U->seg) s.update_pending = false;
}

// The gradients start each step at zero. Each is zeroed when the step first needs it (gather for its
// backward), not here: with offload the last step's gradient waits on the GPU until the CPU optimizer's
// transit ring takes it down, while the forward runs.
void ZeroStore::begin_step() {
    for (Unit* U : units_)
        if (U->trainable >= 0) U->seg[U->trainable].stale_grad = true;
}

void ZeroStore::zero_gradient(Segment& s) {
    if (!s.stale_grad) return;
    if (cpu_) cpu_->before_zeroing(s.cpu);  // offload: O5, the last step's copy down has read it
    check_cuda(cudaMemsetAsync(s.grad, 0, size_t(z_.stage <= 1 ? s.shard.padded : s.shard.size) * 4, stream_), "zero grads");
    s.stale_grad = false;
}

// ================================================================================================ weights in and out

// Calls fn(tensor, tensor_offset, segment_offset, count) for each parameter tensor of the unit's base
// segment overlapping [begin, end), or each LoRA tensor (A, B per target) of its adapter segment: elements
// tensor_offset.. of the tensor, the first at segment_offset (the rest contiguous, or rows apart where the
// tensor's rows carry a pad: frozen base weights under LoRA only).
void ZeroStore::for_each_tensor(int unit, int seg, int64_t begin, int64_t end,
                                const std::function<void(const UnitTensor&, int64_t, int64_t, int64_t)>& fn) const {
    std::vector<UnitTensor> tensors;
    if (seg == 0) {
        tensors = unit_layout(c_, unit).tensors;
    } else {
        for (int t = 0; t < kTargets; ++t)  // in the order of the layout (every A, then every B): runs stay whole
            if (lora_.target[t]) tensors.push_back({{peft_key(unit - 1, LoraTarget(t), 'A'), {lora_.rank, layout_.in[t]}}, layout_.a_offset[t]});
        for (int t = 0; t < kTargets; ++t)
            if (lora_.target[t]) tensors.push_back({{peft_key(unit - 1, LoraTarget(t), 'B'), {layout_.out[t], lora_.rank}}, layout_.b_offset[t]});
    }
    for (const UnitTensor& t : tensors) {
        int64_t lo = t.first(begin), hi = t.first(end);
        if (lo < hi) fn(t, lo, t.at(lo), hi - lo);
    }
}

// bf16(master) into the resident weights this rank optimizes; stages 1, 2 then all-gather the replicated copy.
void ZeroStore::write_compute_copy(Segment& s) {
    if (cpu_ && s.cpu >= 0) cpu_->upload_master(s.cpu);  // offload: master is in host memory
    else if (s.opt_len > 0) f32_to_bf16(s.master, s.opt16(), s.opt_len, stream_);
    if (!s.sharded && z_.stage >= 1) w_.comm->all_gather(s.full16 + s.shard.begin(w_.rank), s.full16, size_t(s.shard.size), DType::bf16, stream_);
}

namespace {
uint64_t name_seed(uint64_t seed, const std::string& name) { return fnv1a(name, 1469598103934665603ull ^ seed); }
}  // namespace

void ZeroStore::init_random(uint64_t seed) {
    finish_update();
    for (int u = 0; u < int(units_.size()); ++u) {
        Segment& s = units_[size_t(u)]->seg[0];
        int64_t lo = s.sharded ? s.shard.begin(w_.rank) : 0, hi = s.sharded ? lo + s.shard.owned(w_.rank) : s.numel;
        bf16* resident = s.sharded ? s.shard16 : s.full16;
        for_each_tensor(u, 0, lo, hi, [&](const UnitTensor& t, int64_t toff, int64_t soff, int64_t n) {
            float stddev = t.spec.shape.size() == 1 ? 0.0f : 0.02f;
            if (!t.pad) return init_normal(resident + (soff - lo), nullptr, n, name_seed(seed, t.spec.name), toff, stddev, 1.0f, stream_);
            bf16* staged = device_alloc<bf16>(size_t(n), "init staging");  // drawn contiguously, then laid into its rows
            init_normal(staged, nullptr, n, name_seed(seed, t.spec.name), toff, stddev, 1.0f, stream_);
            check_cuda(copy_into_rows(resident + (soff - lo), staged, toff, n, t.cols(), t.pad, cudaMemcpyDeviceToDevice, stream_), "copy");
            check_cuda(cudaStreamSynchronize(stream_), "init");
            device_free(staged);
        });
        if (!s.trainable) continue;
        float* dev = z_.offload ? device_alloc<float>(size_t(std::max<int64_t>(1, s.opt_len)), "init staging") : s.master;
        if (z_.offload) check_cuda(cudaMemsetAsync(dev, 0, size_t(s.opt_len) * 4, stream_), "memset");
        for_each_tensor(u, 0, s.opt_begin, s.opt_begin + s.opt_len, [&](const UnitTensor& t, int64_t toff, int64_t soff, int64_t n) {
            bool norm = t.spec.shape.size() == 1;
            init_normal(nullptr, dev + (soff - s.opt_begin), n, name_seed(seed, t.spec.name), toff, norm ? 0.0f : 0.02f, 1.0f, stream_);
        });
        if (z_.offload) {
            check_cuda(cudaMemcpyAsync(s.master, dev, size_t(s.opt_len) * 4, cudaMemcpyDeviceToHost, stream_), "copy master");
            world_wait(w_, stream_);
            device_free(dev);
        }
    }
    world_wait(w_, stream_);
}

// Each rank reads the bytes of the elements it keeps (its shard at stage 3), in the files' dtype, through
// the loader's threads and pinned staging (distributed/load.h); the elements it optimizes also become fp32
// master weights, float(stored value), on the GPU or (offload) on the host.
LoadReport ZeroStore::load(const std::string& dir) {
    finish_update();
    SafetensorsReader reader(dir);
    std::vector<TensorSpec> specs = parameter_specs(c_);
    for (const auto& [name, t] : reader.tensors()) {
        bool known = name.size() > 19 && name.compare(name.size() - 19, 19, "rotary_emb.inv_freq") == 0;
        known |= name == "lm_head.weight" && c_.tie_word_embeddings;
        for (const TensorSpec& s : specs) known |= s.name == name;
        if (!known) fail(t.file + ": unexpected tensor " + name + " (not a parameter of this Llama config)");
    }
    std::vector<WeightCopy> copies;
    double bytes = 0;
    for (int u = 0; u < int(units_.size()); ++u) {
        Segment& s = units_[size_t(u)]->seg[0];
        int64_t lo = s.sharded ? s.shard.begin(w_.rank) : 0, hi = s.sharded ? lo + s.shard.owned(w_.rank) : s.numel;
        int64_t m0 = s.trainable ? s.opt_begin : hi, m1 = s.trainable ? s.opt_begin + s.opt_len : hi;  // inside [lo, hi)
        bf16* resident = s.sharded ? s.shard16 : s.full16;
        for (const FileRead& r : plan_unit_reads(c_, reader, u, lo, hi, {m0, m1})) {
            WeightCopy w{r, resident + (r.at - lo)};
            if (r.at >= m0 && r.at < m1) w.to32 = s.master + (r.at - m0), w.to32_host = cpu_ != nullptr;
            copies.push_back(w);
            bytes += double(r.bytes());
        }
    }
    check_cuda(cudaDeviceSynchronize(), "before loading");  // the constructor's zeroing is done
    Progress shown("loading " + dir, bytes, Progress::Units::Bytes, w_.rank == 0);
    LoadReport report = load_weights(copies, w_.gpu, load_threads(w_.local_size), [&](double done) { shown.update(done); });
    shown.finish();
    return report;
}

void ZeroStore::set_lora(const std::vector<std::vector<float>>& layers) {
    finish_update();
    for (int l = 0; l < c_.num_hidden_layers; ++l) {  // every copy first: a synchronous copy waits for the stream's collectives
        Segment& s = units_[size_t(l + 1)]->seg[1];
        const float* src = layers[size_t(l)].data();
        if (!s.trainable) {  // inference: the adapters' bf16 weights only, bf16(adapter) as the trained copy
            int64_t lo = s.sharded ? s.shard.begin(w_.rank) : 0, n = s.sharded ? s.shard.owned(w_.rank) : s.numel;
            std::vector<uint16_t> h(size_t(std::max<int64_t>(0, n)));
            for (size_t i = 0; i < h.size(); ++i) h[i] = float_to_bf16(src[size_t(lo) + i]);
            check_cuda(cudaMemcpy(s.sharded ? s.shard16 : s.full16, h.data(), h.size() * 2, cudaMemcpyHostToDevice), "copy LoRA");
            continue;
        }
        if (z_.offload) std::memcpy(s.master, src + s.opt_begin, size_t(s.opt_len) * 4);
        else check_cuda(cudaMemcpy(s.master, src + s.opt_begin, size_t(std::max<int64_t>(0, s.opt_len)) * 4, cudaMemcpyHostToDevice), "copy LoRA");
    }
    for (int l = 0; l < c_.num_hidden_layers; ++l) {
        world_at_unit(l + 1, "adapters set");
        write_compute_copy(units_[size_t(l + 1)]->seg[1]);
    }
    world_wait(w_, stream_);
}

void ZeroStore::init_lora(uint64_t seed) {
    std::vector<std::vector<float>> layers(size_t(c_.num_hidden_layers), std::vector<float>(size_t(layout_.per_layer)));
    for (int l = 0; l < c_.num_hidden_layers; ++l) lora_init_layer(lora_, layout_, seed, l, layers[size_t(l)].data());
    set_lora(layers);
}

std::vector<OwnedSlice> ZeroStore::owned_slices() {
    finish_update();  // the caller reads or writes master, m and v through these pointers
    world_wait(w_, stream_);
    std::vector<OwnedSlice> out;
    for (int u = 0; u < int(units_.size()); ++u) {
        Unit& U = *units_[size_t(u)];
        if (U.trainable < 0) continue;
        Segment& s = U.seg[U.trainable];
        for_each_tensor(u, U.trainable, s.opt_begin, s.opt_begin + s.opt_len, [&](const UnitTensor& t, int64_t toff, int64_t soff, int64_t n) {
            int64_t at = soff - s.opt_begin;
            out.push_back({t.spec.name, toff, n, s.master + at, s.m + at, s.v + at, z_.offload});
        });
    }
    return out;
}

void ZeroStore::refresh_weights() {
    finish_update();
    for (int u = 0; u < int(units_.size()); ++u) {
        Unit* U = units_[size_t(u)];
        if (U->trainable < 0) continue;
        world_at_unit(u, "weights set from the master");
        write_compute_copy(U->seg[U->trainable]);
    }
    world_wait(w_, stream_);
}

namespace {
// The full fp32 values of a segment from the parts the ranks optimize (collective).
std::vector<float> gather_master(const World& w, const ZeroOptions& z, const float* master, const Shard& shard, int64_t opt_len,
                                 cudaStream_t stream) {
    std::vector<float> out(size_t(shard.numel));
    if (z.stage == 0) {
        if (z.offload) std::memcpy(out.data(), master, out.size() * 4);
        else check_cuda(cudaMemcpy(out.data(), master, out.size() * 4, cudaMemcpyDeviceToHost), "copy master");
        return out;
    }
    float* full = device_zeros<float>(size_t(shard.padded), "gather staging");
    float* mine = full + shard.begin(w.rank);
    if (opt_len > 0)
        check_cuda(cudaMemcpy(mine, master, size_t(opt_len) * 4, z.offload ? cudaMemcpyHostToDevice : cudaMemcpyDeviceToDevice), "copy");
    w.comm->all_gather(mine, full, size_t(shard.size), DType::f32, stream);
    world_wait(w, stream);
    check_cuda(cudaMemcpy(out.data(), full, out.size() * 4, cudaMemcpyDeviceToHost), "copy");
    device_free(full);
    return out;
}
}  // namespace

std::vector<std::vector<float>> ZeroStore::lora_layers() {
    finish_update();
    std::vector<std::vector<float>> layers;
    for (int l = 0; l < c_.num_hidden_layers; ++l) {
        Segment& s = units_[size_t(l + 1)]->seg[1];
        world_at_unit(l + 1, "adapters gathered to the host");
        layers.push_back(gather_master(w_, z_, s.master, s.shard, s.opt_len, stream_));
    }
    return layers;
}

std::vector<float> ZeroStore::unit_weights(int unit) {
    Segment& s = units_[size_t(unit)]->seg[0];
    if (!s.trainable) {  // frozen: the bf16 weights are the values
        std::vector<float> out;
        for (uint16_t b : unit_weights16(unit)) out.push_back(bf16_to_float(b));
        return out;
    }
    finish_update();
    world_at_unit(unit, "weights gathered to the host");
    return gather_master(w_, z_, s.master, s.shard, s.opt_len, stream_);
}

std::vector<uint16_t> ZeroStore::unit_weights16(int unit) {
    finish_update();
    await_update(unit, stream_);  // offload: this step's new weights are in place (and, replicated, all-gathered)
    Segment& s = units_[size_t(unit)]->seg[0];
    std::vector<uint16_t> out(size_t(s.numel));
    bf16* full = s.full16;
    cudaStream_t cs = comm_stream();
    if (s.sharded) {
        full = device_alloc<bf16>(size_t(s.shard.padded), "gather staging");
        check_cuda(cudaEventRecord(compute_done_, stream_), "event");  // the shard's last writes
        check_cuda(cudaStreamWaitEvent(cs, compute_done_, 0), "wait");
        w_.comm->all_gather(s.shard16, full, size_t(s.shard.size), DType::bf16, cs);
    }
    world_wait(w_, cs);
    world_wait(w_, stream_);
    check_cuda(cudaMemcpy(out.data(), full, out.size() * 2, cudaMemcpyDeviceToHost), "copy");
    if (s.sharded) device_free(full);
    return out;
}

bool ZeroStore::weights_in_place() const { return !cpu_ && (z_.stage < 3 || gathers_in_place(z_, w_.size)); }

std::vector<float> ZeroStore::trainable_grads() {
    finish_update();
    world_wait(w_, stream_);
    world_wait(w_, comm_stream());
    std::vector<float> out;
    for (Unit* U : units_) {
        if (U->trainable < 0) continue;
        Segment& s = U->seg[U->trainable];
        size_t at = out.size();
        out.resize(at + size_t(s.opt_len));
        check_cuda(cudaMemcpy(out.data() + at, s.opt_grad, size_t(s.opt_len) * 4, cudaMemcpyDeviceToHost), "copy grads");
    }
    return out;
}
