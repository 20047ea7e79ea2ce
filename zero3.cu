// zero3.cu — the ZeRO partitioner behind gather / release / reduce_grads (see zero3.h).
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
// 2 Psi + 2 Psi + K Psi with fp32 gradients and K = 12. Offload moves master, m and v to pinned host
// memory and runs AdamW on the CPU, overlapped with the GPU: gradients go down during the backward, the
// update runs unit by unit in a worker thread during the next forward (timeline at "the CPU step"), with
// the same bits as the GPU's update. Small units (the final norm) stay replicated at stage 3
// (persistence threshold). Gradient accumulation: stages 0, 1 keep full gradients and all-reduce once,
// after the last micro-batch of a step; stages 2, 3 reduce-scatter after every micro-batch into the
// shard, where micro-batches add up. Collectives run on their own stream, ordered with compute by events;
// stage 3 prefetches the next unit's weights while the current one computes. On one rank a stage-3 shard
// is the whole unit, and gather() hands it out in place (gathers_in_place; --copy-gathers copies it).
//
// Where each stage differs, in this file: stage 0 — the constructor (opt_begin = 0, opt_len = numel) and
// the norm in step(); stages 0/1 — reduce_grads' all-reduce branch; stages 1/2 — write_compute_copy's
// all-gather (and await_update's, with offload); stages 2/3 — take_grad_buffer and reduce_grads'
// reduce-scatter; stage 3 — Segment::sharded, take_slot, prefetch and gather's slot branch.
#include "zero3.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>

#include "support/cuda_calls.h"
#include "kernels/ops.h"
#include "support/report.h"
#include "support/safetensors.h"

// ================================================================================================ partitions

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

// ================================================================================================ store

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
    int host = -1;                   // offload: its index in host_
};

// Offload: what the worker needs of one trainable segment, besides its master, m and v.
struct ZeroStore::HostShard {
    int unit = -1;
    int64_t n = 0;            // the segment's opt_len (may be 0: every rank still takes part)
    float* grad = nullptr;    // [n] pinned: the gradient shard, copied down during the backward
    bf16* weights = nullptr;  // [n] pinned: the updated bf16 weights, on their way up
    struct Run {
        int64_t offset, count;  // elements [offset, offset + count) of master: one or more whole tensors
        bool decays;            // weight decay applies (matrices; norm weights never decay)
    };
    std::vector<Run> runs;    // the tensors' elements only: gaps between tensors are neither updated nor copied
    cudaEvent_t grad_copied = nullptr;  // recorded on the copy stream after the gradient's copy down (main thread)
    cudaEvent_t uploaded = nullptr;     // recorded on the copy stream after the weights' copy up (worker thread)
    int64_t copied_for = 0;   // the CPU step whose gradient copy is queued
    int64_t awaited = 0;      // the CPU step whose upload the GPU streams already wait for
};

struct ZeroStore::Unit {
    Segment seg[2];  // base weights, LoRA adapters
    int trainable = -1;  // the segment that trains (0 full fine-tuning, 1 LoRA), -1 none
    bool sharded = false;
    int slot = -1;        // stage 3: the slot holding it while gathered
    Pass pass = Pass::forward;
    int grad_buffer = -1;  // stages 2, 3: its full-gradient buffer during backward
};

namespace {

template <typename T>
T* host_alloc(size_t n, bool pinned) {
    void* p = nullptr;
    if (pinned) check_cuda(cudaMallocHost(&p, std::max<size_t>(1, n) * sizeof(T)), "cudaMallocHost (offloaded optimizer state)");
    else p = std::calloc(std::max<size_t>(1, n), sizeof(T));
    if (!p) fail("out of host memory for the offloaded optimizer state");
    return static_cast<T*>(p);
}

uint64_t name_seed(uint64_t seed, const std::string& name) { return fnv1a(name, 1469598103934665603ull ^ seed); }

// check_cuda for the optimizer's worker thread: throws (the main thread reports it at its next wait)
// instead of ending the process from a second thread.
void cuda_or_throw(cudaError_t status, const std::string& what) {
    if (status != cudaSuccess) fail(what + ": CUDA error: " + cudaGetErrorString(status));
}

}  // namespace

ZeroStore::ZeroStore(const LlamaConfig& c, const LoraConfig& lora, const ZeroOptions& z, const World& world, cudaStream_t stream)
    : c_(c), lora_(lora), z_(z), w_(world), layout_(lora_layout(c, lora)), stream_(stream) {
    int N = w_.size, r = w_.rank;
    for (int u = 0; u < num_units(c); ++u) {
        Unit* U = new Unit();
        U->seg[0].numel = unit_layout(c, u).numel;
        U->seg[1].numel = (lora.rank > 0 && u >= 1 && u <= c.num_hidden_layers) ? layout_.per_layer : 0;
        U->trainable = lora.rank > 0 ? (U->seg[1].numel ? 1 : -1) : 0;
        U->sharded = z.stage == 3 && U->seg[0].numel + U->seg[1].numel > z.persistence_threshold;
        for (int k = 0; k < 2; ++k) {
            Segment& s = U->seg[k];
            if (!s.numel) continue;
            s.trainable = U->trainable == k;
            s.sharded = U->sharded;
            s.shard = make_shard(s.numel, N);
            if (s.sharded) s.shard16 = device_alloc<bf16>(size_t(s.shard.size), "bf16 weight shard"), mem_.base += double(s.shard.size) * 2;
            else s.full16 = device_alloc<bf16>(size_t(s.shard.padded), "bf16 weights"), mem_.base += double(s.shard.padded) * 2;
            if (s.full16) check_cuda(cudaMemset(s.full16, 0, size_t(s.shard.padded) * 2), "memset");
            if (s.shard16) check_cuda(cudaMemset(s.shard16, 0, size_t(s.shard.size) * 2), "memset");
            if (!s.trainable) continue;
            s.opt_begin = z.stage == 0 ? 0 : s.shard.begin(r);
            s.opt_len = z.stage == 0 ? s.numel : s.shard.owned(r);
            size_t n = size_t(std::max<int64_t>(1, s.opt_len));
            if (z.offload) {
                s.master = host_alloc<float>(n, z.pin_memory), s.m = host_alloc<float>(n, z.pin_memory), s.v = host_alloc<float>(n, z.pin_memory);
                std::memset(s.master, 0, n * 4), std::memset(s.m, 0, n * 4), std::memset(s.v, 0, n * 4);
                mem_.host += double(n) * 12;
            } else {
                s.master = device_alloc<float>(n, "fp32 master weights"), s.m = device_alloc<float>(n, "AdamW moments");
                s.v = device_alloc<float>(n, "AdamW moments");
                for (float* p : {s.master, s.m, s.v}) check_cuda(cudaMemset(p, 0, n * 4), "memset");
                mem_.master += double(n) * 4, mem_.moments += double(n) * 8;
            }
            int64_t g = z.stage <= 1 ? s.shard.padded : s.shard.size;
            s.grad = device_alloc<float>(size_t(std::max<int64_t>(1, g)), "fp32 gradients");
            check_cuda(cudaMemset(s.grad, 0, size_t(g) * 4), "memset");
            s.opt_grad = z.stage <= 1 ? s.grad + s.opt_begin : s.grad;
            mem_.grads += double(g) * 4;
            n_train_ += s.numel;
        }
        units_.push_back(U);
    }
    if (z.offload) start_offload();
    norm_sq_ = device_alloc<float>(1, "grad norm");
    clip_scale_ = device_alloc<float>(1, "clip scale");
    check_cuda(cudaMallocHost(&host_scalars_, 16), "cudaMallocHost");
    check_cuda(cudaEventCreateWithFlags(&compute_done_, cudaEventDisableTiming), "event");
    check_cuda(cudaEventCreateWithFlags(&reduced_, cudaEventDisableTiming), "event");
}

ZeroStore::~ZeroStore() {
    worker_.reset();  // stops after the unit it is updating; nothing below is touched by it after this
    pool_.reset();
    if (copy_stream_) cudaStreamSynchronize(copy_stream_), cudaStreamDestroy(copy_stream_);
    for (HostShard& h : host_) cudaFreeHost(h.grad), cudaFreeHost(h.weights), cudaEventDestroy(h.grad_copied), cudaEventDestroy(h.uploaded);
    if (grad_reduced_) cudaEventDestroy(grad_reduced_), cudaEventDestroy(gathered_);
    for (Unit* U : units_) {
        for (Segment& s : U->seg) {
            device_free(s.full16), device_free(s.shard16), device_free(s.grad);
            if (z_.offload && s.master) {
                for (float* p : {s.master, s.m, s.v}) z_.pin_memory ? (void)cudaFreeHost(p) : std::free(p);
            } else {
                device_free(s.master), device_free(s.m), device_free(s.v);
            }
        }
        delete U;
    }
    for (Slot& s : slots_) device_free(s.data), cudaEventDestroy(s.free_event), cudaEventDestroy(s.ready_event);
    for (GradBuffer& g : grad_buffers_) device_free(g.data), cudaEventDestroy(g.free_event);
    device_free(norm_sq_), device_free(clip_scale_), cudaFreeHost(host_scalars_);
    cudaEventDestroy(compute_done_), cudaEventDestroy(reduced_);
}

MemoryReport ZeroStore::estimate(const LlamaConfig& c, const LoraConfig& lora, const ZeroOptions& z, int N) {
    MemoryReport m;
    LoraLayout layout = lora_layout(c, lora);
    double biggest = 0, biggest_train = 0;
    for (int u = 0; u < num_units(c); ++u) {
        int64_t base = unit_layout(c, u).numel, ad = (lora.rank > 0 && u >= 1 && u <= c.num_hidden_layers) ? layout.per_layer : 0;
        bool sharded = z.stage == 3 && base + ad > z.persistence_threshold;
        for (int64_t numel : {base, ad}) {
            if (!numel) continue;
            Shard s = make_shard(numel, N);
            m.base += double(sharded ? s.size : s.padded) * 2;
        }
        if (sharded) biggest = std::max(biggest, double(align_up(make_shard(base, N).padded) + (ad ? make_shard(ad, N).padded : 0)));
        int64_t t = lora.rank > 0 ? ad : base;
        if (!t) continue;
        Shard s = make_shard(t, N);
        double opt = double(z.stage == 0 ? t : s.size);
        if (z.offload) m.host += opt * 18;  // master, m, v; the pinned gradient (4) and bf16 weights (2) in transit
        else m.master += opt * 4, m.moments += opt * 8;
        m.grads += double(z.stage <= 1 ? s.padded : s.size) * 4;
        biggest_train = std::max(biggest_train, double(s.padded));
    }
    if (z.stage == 3 && !gathers_in_place(z, N)) m.gathered = biggest * 2 * kGatherSlots;
    if (z.stage >= 2) m.grad_buffers = biggest_train * 4 * (lora.rank > 0 || !c.tie_word_embeddings ? kGradBuffers - 1 : kGradBuffers);
    return m;
}

// Calls fn(spec, tensor_offset, segment_offset, count) for each parameter tensor of the unit's base
// segment overlapping [begin, end), or each LoRA tensor (A, B per target) of its adapter segment.
void ZeroStore::for_each_tensor(int unit, int seg, int64_t begin, int64_t end,
                                const std::function<void(const TensorSpec&, int64_t, int64_t, int64_t)>& fn) const {
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
        int64_t lo = std::max(begin, t.offset), hi = std::min(end, t.offset + t.spec.numel());
        if (lo < hi) fn(t.spec, lo - t.offset, lo, hi - lo);
    }
}

// bf16(master) into the resident weights this rank optimizes; stages 1, 2 then all-gather the replicated copy.
void ZeroStore::write_compute_copy(Segment& s) {
    bf16* dst = s.sharded ? s.shard16 : s.full16 + s.opt_begin;
    if (s.opt_len > 0) {
        if (z_.offload) {
            HostShard& h = host_[size_t(s.host)];
            check_cuda(cudaEventSynchronize(h.uploaded), "wait");  // the worker's last upload has left h.weights
            for (int64_t i = 0; i < s.opt_len; ++i) h.weights[i] = __float2bfloat16(s.master[i]);
            check_cuda(cudaMemcpyAsync(dst, h.weights, size_t(s.opt_len) * 2, cudaMemcpyHostToDevice, stream_), "copy weights");
            world_wait(w_, stream_);  // h.weights is written again by the next update
        } else {
            f32_to_bf16(s.master, dst, s.opt_len, stream_);
        }
    }
    if (!s.sharded && z_.stage >= 1) w_.comm->all_gather(s.full16 + s.shard.begin(w_.rank), s.full16, size_t(s.shard.size), DType::bf16, stream_);
    if (s.host >= 0) host_[size_t(s.host)].awaited = cpu_steps_;  // these weights are newer than the last upload
}

void ZeroStore::init_random(uint64_t seed) {
    finish_step();
    for (int u = 0; u < int(units_.size()); ++u) {
        Segment& s = units_[size_t(u)]->seg[0];
        int64_t lo = s.sharded ? s.shard.begin(w_.rank) : 0, hi = s.sharded ? lo + s.shard.owned(w_.rank) : s.numel;
        bf16* resident = s.sharded ? s.shard16 : s.full16;
        for_each_tensor(u, 0, lo, hi, [&](const TensorSpec& t, int64_t toff, int64_t soff, int64_t n) {
            bool norm = t.shape.size() == 1;
            init_normal(resident + (soff - lo), nullptr, n, name_seed(seed, t.name), toff, norm ? 0.0f : 0.02f, 1.0f, stream_);
        });
        if (!s.trainable) continue;
        float* dev = z_.offload ? device_alloc<float>(size_t(std::max<int64_t>(1, s.opt_len)), "init staging") : s.master;
        if (z_.offload) check_cuda(cudaMemsetAsync(dev, 0, size_t(s.opt_len) * 4, stream_), "memset");
        for_each_tensor(u, 0, s.opt_begin, s.opt_begin + s.opt_len, [&](const TensorSpec& t, int64_t toff, int64_t soff, int64_t n) {
            bool norm = t.shape.size() == 1;
            init_normal(nullptr, dev + (soff - s.opt_begin), n, name_seed(seed, t.name), toff, norm ? 0.0f : 0.02f, 1.0f, stream_);
        });
        if (z_.offload) {
            check_cuda(cudaMemcpyAsync(s.master, dev, size_t(s.opt_len) * 4, cudaMemcpyDeviceToHost, stream_), "copy master");
            world_wait(w_, stream_);
            device_free(dev);
        }
    }
    world_wait(w_, stream_);
}

void ZeroStore::load(const std::string& dir) {
    finish_step();
    SafetensorsReader reader(dir);
    std::vector<TensorSpec> specs = parameter_specs(c_);
    for (const auto& [name, t] : reader.tensors()) {
        bool known = name.size() > 19 && name.compare(name.size() - 19, 19, "rotary_emb.inv_freq") == 0;
        known |= name == "lm_head.weight" && c_.tie_word_embeddings;
        for (const TensorSpec& s : specs) known |= s.name == name;
        if (!known) fail(t.file + ": unexpected tensor " + name + " (not a parameter of this Llama config)");
    }
    std::string cached_name;
    std::vector<float> cached;
    auto values = [&](const TensorSpec& t) -> const std::vector<float>& {
        if (t.name != cached_name) cached = reader.read_float(t.name, t.shape), cached_name = t.name;
        return cached;
    };
    std::vector<uint16_t> h16;
    double bytes = 0, done = 0;
    for (const auto& [name, t] : reader.tensors()) bytes += double(t.bytes);
    Progress shown("loading " + dir, bytes, Progress::Units::Bytes, w_.rank == 0);
    for (int u = 0; u < int(units_.size()); ++u) {
        for (const UnitTensor& t : unit_layout(c_, u).tensors)
            if (const SafeTensor* f = reader.find(t.spec.name)) done += double(f->bytes);
        shown.update(done);
        Segment& s = units_[size_t(u)]->seg[0];
        int64_t lo = s.sharded ? s.shard.begin(w_.rank) : 0, hi = s.sharded ? lo + s.shard.owned(w_.rank) : s.numel;
        bf16* resident = s.sharded ? s.shard16 : s.full16;
        for_each_tensor(u, 0, lo, hi, [&](const TensorSpec& t, int64_t toff, int64_t soff, int64_t n) {
            const std::vector<float>& w = values(t);
            h16.resize(size_t(n));
            for (int64_t i = 0; i < n; ++i) h16[size_t(i)] = float_to_bf16(w[size_t(toff + i)]);
            check_cuda(cudaMemcpy(resident + (soff - lo), h16.data(), size_t(n) * 2, cudaMemcpyHostToDevice), "copy weights");
        });
        if (!s.trainable) continue;
        for_each_tensor(u, 0, s.opt_begin, s.opt_begin + s.opt_len, [&](const TensorSpec& t, int64_t toff, int64_t soff, int64_t n) {
            const float* w = values(t).data() + toff;
            float* dst = s.master + (soff - s.opt_begin);
            if (z_.offload) std::memcpy(dst, w, size_t(n) * 4);
            else check_cuda(cudaMemcpy(dst, w, size_t(n) * 4, cudaMemcpyHostToDevice), "copy master");
        });
    }
    shown.finish();
}

void ZeroStore::set_lora(const std::vector<std::vector<float>>& layers) {
    finish_step();
    for (int l = 0; l < c_.num_hidden_layers; ++l) {
        Segment& s = units_[size_t(l + 1)]->seg[1];
        const float* src = layers[size_t(l)].data();
        if (z_.offload) std::memcpy(s.master, src + s.opt_begin, size_t(s.opt_len) * 4);
        else check_cuda(cudaMemcpy(s.master, src + s.opt_begin, size_t(std::max<int64_t>(0, s.opt_len)) * 4, cudaMemcpyHostToDevice), "copy LoRA");
        write_compute_copy(s);
    }
    world_wait(w_, stream_);
}

void ZeroStore::init_lora(uint64_t seed) {
    std::vector<std::vector<float>> layers(size_t(c_.num_hidden_layers), std::vector<float>(size_t(layout_.per_layer)));
    for (int l = 0; l < c_.num_hidden_layers; ++l) lora_init_layer(lora_, layout_, seed, l, layers[size_t(l)].data());
    set_lora(layers);
}

// ------------------------------------------------------------------------------------------ gather / release
//
// Stage 3, one unit u: the two streams (compute = stream_, comm = the comm stream) and their events.
//   1. take_slot(u)       comm waits slot.free_event: the slot's previous unit is no longer read by compute
//   2.                    comm all-gathers u's shards into the slot (base, then adapters at a 16-byte-aligned
//                         offset), then records slot.ready_event
//   3. gather(u)          compute waits slot.ready_event; gather issues steps 1-2 for the unit this pass
//                         needs next (u+1 forward, u-1 backward): the prefetch, overlapping u's compute
//   4.                    compute runs u's forward or backward, reading the slot
//   5. release(u)         compute records slot.free_event after the last kernel that reads the slot
//   6. reduce_grads(u)    compute records compute_done_; comm waits it, reduce-scatters u's full gradient
//                         into this rank's shard and adds it up there, then records buffer.free_event
//   7. take_grad_buffer   compute waits buffer.free_event before zeroing that buffer for another unit
//   8. step()             compute waits reduced_, recorded on comm after every reduction; comm waits for
//                         compute's update before the next step's gathers
// On one rank (gathers_in_place) steps 1-5 are gone: gather(u) returns the shard, which compute reads and
// the GPU update writes in stream order (with offload, compute waits u.uploaded: O4).

int64_t ZeroStore::slot_numel(const Unit& U) const {
    return align_up(U.seg[0].shard.padded) + (U.seg[1].numel ? U.seg[1].shard.padded : 0);
}

int ZeroStore::take_slot(int unit) {
    Unit& U = *units_[size_t(unit)];
    int found = -1;
    for (int i = 0; i < int(slots_.size()) && found < 0; ++i)
        if (slots_[size_t(i)].unit < 0 && slots_[size_t(i)].capacity >= slot_numel(U)) found = i;
    if (found < 0) {  // a new slot, big enough for any unit
        Slot s;
        for (Unit* V : units_)
            if (V->sharded) s.capacity = std::max(s.capacity, slot_numel(*V));
        s.data = device_alloc<bf16>(size_t(s.capacity), "stage-3 gather buffer");
        mem_.gathered += double(s.capacity) * 2;
        check_cuda(cudaEventCreateWithFlags(&s.free_event, cudaEventDisableTiming), "event");
        check_cuda(cudaEventCreateWithFlags(&s.ready_event, cudaEventDisableTiming), "event");
        check_cuda(cudaEventRecord(s.free_event, stream_), "event");
        slots_.push_back(s);
        found = int(slots_.size()) - 1;
    }
    Slot& s = slots_[size_t(found)];
    cudaStream_t cs = comm_stream();
    await_update(unit);                                                                             // offload: O4
    check_cuda(cudaStreamWaitEvent(cs, s.free_event, 0), "wait");                                   // 1
    w_.comm->all_gather(U.seg[0].shard16, s.data, size_t(U.seg[0].shard.size), DType::bf16, cs);    // 2
    if (U.seg[1].numel)
        w_.comm->all_gather(U.seg[1].shard16, s.data + align_up(U.seg[0].shard.padded), size_t(U.seg[1].shard.size), DType::bf16, cs);
    check_cuda(cudaEventRecord(s.ready_event, cs), "event");
    s.unit = unit, U.slot = found;
    return found;
}

void ZeroStore::prefetch(int unit) {
    if (!prefetches(z_) || gathers_in_place(z_, w_.size) || unit < 0 || unit >= int(units_.size())) return;
    Unit& U = *units_[size_t(unit)];
    if (!U.sharded || U.slot >= 0) return;
    // offload: rather than hold the host here, gather() waits for it (O4). Skipping keeps every rank's
    // all-gathers in the same order: no other collective is issued before that unit's gather.
    if (update_pending(unit)) return;
    int busy = 0;
    for (const Slot& s : slots_) busy += s.unit >= 0;
    if (busy >= kGatherSlots && !z_.keep_gathered) return;
    take_slot(unit);
    ++prefetched_;
}

UnitView ZeroStore::gather(int unit, Pass pass) {
    Unit& U = *units_[size_t(unit)];
    U.pass = pass;
    const bf16* seg16[2] = {U.seg[0].full16, U.seg[1].full16};
    bool in_place = U.sharded && gathers_in_place(z_, w_.size);
    if (!U.sharded || in_place) await_update(unit);  // offload: O4
    if (in_place) {  // one rank: the shard is the whole unit
        seg16[0] = U.seg[0].shard16, seg16[1] = U.seg[1].shard16;
    } else if (U.sharded) {
        if (U.slot < 0) take_slot(unit);
        Slot& s = slots_[size_t(U.slot)];
        check_cuda(cudaStreamWaitEvent(stream_, s.ready_event, 0), "wait");  // 3
        seg16[0] = s.data, seg16[1] = s.data + align_up(U.seg[0].shard.padded);
    }
    prefetch(pass == Pass::forward ? unit + 1 : unit - 1);
    float* grads = nullptr;
    if (pass == Pass::backward && U.trainable >= 0) {
        Segment& s = U.seg[U.trainable];
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
        check_cuda(cudaEventCreateWithFlags(&b.free_event, cudaEventDisableTiming), "event");
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
    if (z_.stage <= 1) {  // all-reduce the full gradient once per step, in buckets
        if (!last_micro_) return;
        check_cuda(cudaEventRecord(compute_done_, stream_), "event");  // 6: the comm stream waits for this unit's backward
        check_cuda(cudaStreamWaitEvent(cs, compute_done_, 0), "wait");
        for (int64_t off = 0; off < s.shard.padded; off += z_.reduce_bucket_size)
            w_.comm->all_reduce(s.grad + off, size_t(std::min(z_.reduce_bucket_size, s.shard.padded - off)), cs);
        if (z_.offload) download_grads(unit);  // O1
        return;
    }
    // stages 2, 3: reduce-scatter this micro-batch's gradient, add this rank's part into the shard
    check_cuda(cudaEventRecord(compute_done_, stream_), "event");  // 6
    check_cuda(cudaStreamWaitEvent(cs, compute_done_, 0), "wait");
    GradBuffer& b = grad_buffers_[size_t(U.grad_buffer)];
    float* mine = b.data + s.shard.begin(w_.rank);
    w_.comm->reduce_scatter(b.data, mine, size_t(s.shard.size), cs);
    if (s.opt_len > 0) {
        accumulate(s.grad, mine, s.opt_len, cs);
    }
    check_cuda(cudaEventRecord(b.free_event, cs), "event");
    b.unit = -1, b.released = releases_++, U.grad_buffer = -1;
    if (z_.offload && last_micro_) download_grads(unit);  // O1: this step's gradient is complete
}

// ------------------------------------------------------------------------------------------ the step

void ZeroStore::begin_step() {
    for (HostShard& h : host_)  // offload: the last step's copies down have read the gradients (O5)
        check_cuda(cudaStreamWaitEvent(stream_, h.grad_copied, 0), "wait");
    for (Unit* U : units_)
        if (U->trainable >= 0) {
            Segment& s = U->seg[U->trainable];
            check_cuda(cudaMemsetAsync(s.grad, 0, size_t(z_.stage <= 1 ? s.shard.padded : s.shard.size) * 4, stream_), "zero grads");
        }
}

void ZeroStore::begin_micro_batch(bool last) { last_micro_ = last; }

void ZeroStore::step(const AdamWConfig& c, float lr, int step, float max_norm) {
    finish_step();  // offload: the last update has finished (the forward since waited for every unit)
    cudaStream_t cs = comm_stream();
    check_cuda(cudaEventRecord(reduced_, cs), "event");  // 8: every reduction has landed
    check_cuda(cudaStreamWaitEvent(stream_, reduced_, 0), "wait");
    // Global gradient norm: each rank sums the squares of the elements it optimizes (stage 0: its shard's
    // slice of the identical full gradient), then the sums are all-reduced.
    check_cuda(cudaMemsetAsync(norm_sq_, 0, 4, stream_), "memset");
    for (Unit* U : units_) {
        if (U->trainable < 0) continue;
        Segment& s = U->seg[U->trainable];
        if (z_.stage == 0) grad_sum_squares(s.grad + s.shard.begin(w_.rank), s.shard.owned(w_.rank), norm_sq_, stream_);
        else grad_sum_squares(s.opt_grad, s.opt_len, norm_sq_, stream_);
    }
    w_.comm->all_reduce(norm_sq_, 1, stream_);
    clip_coefficient(norm_sq_, max_norm, clip_scale_, stream_);
    if (z_.offload) start_cpu_step(c, lr, step);  // returns while the worker updates; gathers wait per unit
    else update_on_gpu(c, lr, step);
    // Gathered copies are stale now; the next gathers read the new shards after this step.
    for (Slot& s : slots_)
        if (s.unit >= 0) units_[size_t(s.unit)]->slot = -1, s.unit = -1, check_cuda(cudaEventRecord(s.free_event, stream_), "event");
    check_cuda(cudaEventRecord(compute_done_, stream_), "event");
    check_cuda(cudaStreamWaitEvent(cs, compute_done_, 0), "wait");
}

// AdamW on the GPU, unit by unit, on the compute stream; stages 1, 2 then all-gather the new weights.
void ZeroStore::update_on_gpu(const AdamWConfig& c, float lr, int step) {
    for (int u = 0; u < int(units_.size()); ++u) {
        Unit& U = *units_[size_t(u)];
        if (U.trainable < 0) continue;
        Segment& s = U.seg[U.trainable];
        bf16* dst = s.sharded ? s.shard16 : s.full16 + s.opt_begin;
        // Runs of elements with the same weight decay (norm weights never decay), one update call each.
        std::vector<std::pair<int64_t, int64_t>> runs;  // (segment offset, count)
        std::vector<float> decays;
        for_each_tensor(u, U.trainable, s.opt_begin, s.opt_begin + s.opt_len, [&](const TensorSpec& t, int64_t, int64_t soff, int64_t n) {
            float decay = t.shape.size() > 1 ? c.weight_decay : 0.0f;
            if (!runs.empty() && decays.back() == decay && runs.back().first + runs.back().second == soff) runs.back().second += n;
            else runs.push_back({soff, n}), decays.push_back(decay);
        });
        for (size_t k = 0; k < runs.size(); ++k) {
            int64_t i = runs[k].first - s.opt_begin, n = runs[k].second;
            adamw_step_gpu(s.master + i, s.opt_grad + i, s.m + i, s.v + i, dst + i, n, c, lr, decays[k], step, clip_scale_, stream_);
        }
        if (!s.sharded && z_.stage >= 1)  // stages 1, 2: everyone's new weights
            w_.comm->all_gather(s.full16 + s.shard.begin(w_.rank), s.full16, size_t(s.shard.size), DType::bf16, stream_);
    }
}

// ------------------------------------------------------------------------------------------ the CPU step
//
// Offload: the update runs on the host while the GPU goes on. Three streams (compute = stream_, comm, copy =
// copy_stream_) and two threads (main, the worker; the worker hands the element loop to the pool). For each
// trainable unit u (host_[k], in forward order), in step N:
//   O1. reduce_grads(u)  at the last micro-batch, main: waits (host) until the worker is done with u's
//                        update of step N-1, so u's pinned gradient buffer is free (normally long since);
//                        comm records grad_reduced_ after u's reduction, copy waits it, copies u's gradient
//                        shard down and records u.grad_copied. The backward of the other units goes on.
//   O2. step()           main: the norm and clip scale on compute as without offload, then the clip scale
//                        to the host: the one sync. After it, every reduction has landed and every kernel
//                        and collective that read the old weights has finished. Starts the worker's round
//                        and returns.
//   O3. worker, u = 0, 1, 2, ...  synchronizes u.grad_copied (the gradient is on the host) and u.uploaded
//                        (the last upload has left u's pinned weights), runs AdamW on the pool (the same
//                        per-element operations as the GPU kernel, so the same bits), copies the new bf16
//                        weights up on copy (the tensors' elements; gaps keep their zeros), records
//                        u.uploaded, then marks u done for step N.
//   O4. gather(u), take_slot(u)  main, the first time after step N: waits (host) until u is marked done,
//                        since a stream waiting on an event not yet recorded would not wait at all; then
//                        comm waits u.uploaded. A stage-3 shard is all-gathered there into its slot as usual
//                        (handed out in place on one rank: compute waits u.uploaded);
//                        a replicated unit (stages 1, 2) all-gathers everyone's new part there and compute
//                        waits gathered_. Units that do not train never wait. The stage-3 prefetch skips a
//                        unit not marked done yet instead of holding the host, which goes on to queue the
//                        current unit's compute; gather() then waits for it. Either way each rank all-gathers
//                        the units in the same order, so the collectives still match across ranks.
//   O5. begin_step()     compute waits every u.grad_copied before zeroing the gradients.
//   O6. finish_step()    waits for the whole round: step() and everything that reads or writes master, m,
//                        v or the pinned buffers from the host (checkpoints, lora_layers, unit_weights, ...).
// A failure in the worker is rethrown by the next wait in O1, O4 or O6 (threads.h), never a hang.

// Pinned buffers, events and threads for every trainable unit, made once and reused every step.
void ZeroStore::start_offload() {
    check_cuda(cudaStreamCreateWithFlags(&copy_stream_, cudaStreamNonBlocking), "cudaStreamCreate");
    check_cuda(cudaEventCreateWithFlags(&grad_reduced_, cudaEventDisableTiming), "event");
    check_cuda(cudaEventCreateWithFlags(&gathered_, cudaEventDisableTiming), "event");
    for (int u = 0; u < int(units_.size()); ++u) {
        Unit& U = *units_[size_t(u)];
        if (U.trainable < 0) continue;
        Segment& s = U.seg[U.trainable];
        HostShard h;
        h.unit = u, h.n = s.opt_len;
        size_t n = size_t(std::max<int64_t>(1, s.opt_len));
        h.grad = host_alloc<float>(n, true), h.weights = host_alloc<bf16>(n, true);
        mem_.host += double(n) * 6;
        for_each_tensor(u, U.trainable, s.opt_begin, s.opt_begin + s.opt_len, [&](const TensorSpec& t, int64_t, int64_t soff, int64_t count) {
            bool decays = t.shape.size() > 1;
            int64_t at = soff - s.opt_begin;
            if (!h.runs.empty() && h.runs.back().decays == decays && h.runs.back().offset + h.runs.back().count == at) h.runs.back().count += count;
            else h.runs.push_back({at, count, decays});
        });
        check_cuda(cudaEventCreateWithFlags(&h.grad_copied, cudaEventDisableTiming), "event");
        check_cuda(cudaEventCreateWithFlags(&h.uploaded, cudaEventDisableTiming), "event");
        s.host = int(host_.size());
        host_.push_back(h);
    }
    // By default the cores this rank's share of the node leaves beside the main thread and the worker: the
    // update of each unit must keep pace with the next forward.
    int cores = int(std::thread::hardware_concurrency()) / std::max(1, w_.local_size);
    pool_ = std::make_unique<ThreadPool>(z_.offload_threads > 0 ? z_.offload_threads : std::max(1, cores - 2));
    worker_ = std::make_unique<InOrderWorker>(int(host_.size()), [this](int k) { update_on_cpu(k); });
}

// O1: the unit's finished gradient shard to its pinned host buffer, on the copy stream.
void ZeroStore::download_grads(int unit) {
    Segment& s = units_[size_t(unit)]->seg[units_[size_t(unit)]->trainable];
    HostShard& h = host_[size_t(s.host)];
    worker_->wait(s.host);
    check_cuda(cudaEventRecord(grad_reduced_, comm_stream()), "event");
    check_cuda(cudaStreamWaitEvent(copy_stream_, grad_reduced_, 0), "wait");
    if (h.n > 0) check_cuda(cudaMemcpyAsync(h.grad, s.opt_grad, size_t(h.n) * 4, cudaMemcpyDeviceToHost, copy_stream_), "copy grads");
    check_cuda(cudaEventRecord(h.grad_copied, copy_stream_), "event");
    h.copied_for = cpu_steps_ + 1;
}

// O2, after the clip scale is computed on the GPU.
void ZeroStore::start_cpu_step(const AdamWConfig& c, float lr, int step) {
    for (HostShard& h : host_)  // a unit whose reduce_grads did not run at the last micro-batch
        if (h.copied_for <= cpu_steps_) download_grads(h.unit);
    check_cuda(cudaMemcpyAsync(host_scalars_, clip_scale_, 4, cudaMemcpyDeviceToHost, stream_), "copy");
    world_wait(w_, stream_);
    cpu_step_.c = c, cpu_step_.lr = lr, cpu_step_.grad_scale = host_scalars_[0], cpu_step_.step = step;
    ++cpu_steps_;
    worker_->start();
}

// O3, in the worker thread: one unit's AdamW on the host, its new bf16 weights up.
void ZeroStore::update_on_cpu(int k) {
    HostShard& h = host_[size_t(k)];
    Unit& U = *units_[size_t(h.unit)];
    Segment& s = U.seg[U.trainable];
    const CpuStep& j = cpu_step_;
    std::string where = "unit " + std::to_string(h.unit) + ": ";
    cuda_or_throw(cudaSetDevice(w_.gpu), where + "cudaSetDevice");  // the device is per thread
    cuda_or_throw(cudaEventSynchronize(h.grad_copied), where + "the gradient's copy to the host");
    cuda_or_throw(cudaEventSynchronize(h.uploaded), where + "the last copy of the weights to the GPU");
    for (const HostShard::Run& r : h.runs)
        adamw_step_cpu(s.master + r.offset, h.grad + r.offset, s.m + r.offset, s.v + r.offset, h.weights + r.offset, r.count, j.c, j.lr,
                       r.decays ? j.c.weight_decay : 0.0f, j.step, j.grad_scale, *pool_);
    bf16* dst = s.sharded ? s.shard16 : s.full16 + s.opt_begin;
    for (const HostShard::Run& r : h.runs)
        cuda_or_throw(cudaMemcpyAsync(dst + r.offset, h.weights + r.offset, size_t(r.count) * 2, cudaMemcpyHostToDevice, copy_stream_),
                      where + "copy weights");
    cuda_or_throw(cudaEventRecord(h.uploaded, copy_stream_), where + "event");
}

// O4: called before the unit's resident weights are read (its slot's all-gather, or compute for a
// replicated unit); once per step and unit.
void ZeroStore::await_update(int unit) {
    Unit& U = *units_[size_t(unit)];
    if (!worker_ || U.trainable < 0) return;
    Segment& s = U.seg[U.trainable];
    HostShard& h = host_[size_t(s.host)];
    if (h.awaited == cpu_steps_) return;
    worker_->wait(s.host);
    cudaStream_t cs = comm_stream();
    check_cuda(cudaStreamWaitEvent(cs, h.uploaded, 0), "wait");
    if (!s.sharded) {  // stages 1, 2 (and a replicated stage-3 unit): everyone's new part, then compute reads it
        w_.comm->all_gather(s.full16 + s.shard.begin(w_.rank), s.full16, size_t(s.shard.size), DType::bf16, cs);
        check_cuda(cudaEventRecord(gathered_, cs), "event");
        check_cuda(cudaStreamWaitEvent(stream_, gathered_, 0), "wait");
    } else if (gathers_in_place(z_, w_.size)) {  // compute reads the shard itself
        check_cuda(cudaStreamWaitEvent(stream_, h.uploaded, 0), "wait");
    }
    h.awaited = cpu_steps_;
}

bool ZeroStore::update_pending(int unit) {
    Unit& U = *units_[size_t(unit)];
    if (!worker_ || U.trainable < 0) return false;
    Segment& s = U.seg[U.trainable];
    return host_[size_t(s.host)].awaited != cpu_steps_ && !worker_->done(s.host);
}

// O6
void ZeroStore::finish_step() {
    if (worker_) worker_->finish();
}

// ------------------------------------------------------------------------------------------ whole tensors

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
    float* full = device_alloc<float>(size_t(shard.padded), "gather staging");
    check_cuda(cudaMemset(full, 0, size_t(shard.padded) * 4), "memset");
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
    finish_step();
    std::vector<std::vector<float>> layers;
    for (int l = 0; l < c_.num_hidden_layers; ++l) {
        Segment& s = units_[size_t(l + 1)]->seg[1];
        layers.push_back(gather_master(w_, z_, s.master, s.shard, s.opt_len, stream_));
    }
    return layers;
}

std::vector<float> ZeroStore::unit_weights(int unit) {
    finish_step();
    Segment& s = units_[size_t(unit)]->seg[0];
    if (s.trainable) return gather_master(w_, z_, s.master, s.shard, s.opt_len, stream_);
    std::vector<float> out(size_t(s.numel));
    bf16* full = s.full16;
    if (s.sharded) {
        full = device_alloc<bf16>(size_t(s.shard.padded), "gather staging");
        w_.comm->all_gather(s.shard16, full, size_t(s.shard.size), DType::bf16, stream_);
    }
    float* f32 = device_alloc<float>(size_t(s.numel), "gather staging");
    bf16_to_f32(full, f32, s.numel, stream_);
    world_wait(w_, stream_);
    check_cuda(cudaMemcpy(out.data(), f32, out.size() * 4, cudaMemcpyDeviceToHost), "copy");
    device_free(f32);
    if (s.sharded) device_free(full);
    return out;
}

std::vector<float> ZeroStore::trainable_grads() {
    finish_step();
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

std::vector<OwnedSlice> ZeroStore::owned_slices() {
    finish_step();  // the caller reads or writes master, m and v through these pointers
    world_wait(w_, stream_);
    std::vector<OwnedSlice> out;
    for (int u = 0; u < int(units_.size()); ++u) {
        Unit& U = *units_[size_t(u)];
        if (U.trainable < 0) continue;
        Segment& s = U.seg[U.trainable];
        for_each_tensor(u, U.trainable, s.opt_begin, s.opt_begin + s.opt_len, [&](const TensorSpec& t, int64_t toff, int64_t soff, int64_t n) {
            int64_t at = soff - s.opt_begin;
            out.push_back({t.name, toff, n, s.master + at, s.m + at, s.v + at, z_.offload});
        });
    }
    return out;
}

void ZeroStore::refresh_weights() {
    finish_step();
    for (Unit* U : units_)
        if (U->trainable >= 0) write_compute_copy(U->seg[U->trainable]);
    world_wait(w_, stream_);
}
