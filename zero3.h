// zero3.h — ZeRO (Rajbhandari et al. 2020): every parameter byte lives here, partitioned across ranks.
// The model asks for one unit's weights at a time:
//   gather(u, pass)   stage 3: all-gather u's shards into a full bf16 buffer (the next unit is prefetched);
//                     on one rank the shard is the whole unit and is handed out in place (no copy)
//   release(u)        the buffer may be reused
//   reduce_grads(u)   u's gradients for this micro-batch are done: all-reduce (stages 0, 1, at the last
//                     micro-batch of a step) or reduce-scatter into this rank's shard (stages 2, 3)
//   step()            AdamW on this rank's shard (GPU, or CPU with offload); stages 1, 2: all-gather the
//                     updated bf16 weights; stage 3: nothing, the next gather reads the new shards
// With offload (ZeRO-Offload, Ren et al. 2021) the CPU update overlaps the GPU: step() returns after
// reading the clip scale, and a worker thread updates the units in forward order while the next forward
// runs, each gather waiting only for its own unit's new weights; the gradient shards come down to the host
// through a small ring of pinned buffers as the worker reaches them (distributed/offload.h), so the host
// holds 12 bytes per optimized element and the ring. The update is the same bits as on the GPU.
// Weights come in from safetensors files through distributed/load.h, each rank reading only the bytes it
// keeps. With ZeroOptions::inference nothing trains: the store holds bf16 weights only (generation).
// Stage 0 is data parallelism (everything replicated), so one protocol covers DDP and ZeRO 1/2/3.
// The collectives go through the world's transport (world.h); checkpoints and exports are checkpoint.h.
#pragma once
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "adamw.h"
#include "llama.h"
#include "lora.h"
#include "distributed/load.h"
#include "distributed/world.h"

// ---------------------------------------------------------------------------------------------- partitions
// A flat tensor of `numel` elements padded to a multiple of `ranks`; rank r owns [r*size, r*size + owned(r)).
struct Shard {
    int64_t numel = 0, padded = 0, size = 0;
    int64_t begin(int rank) const { return int64_t(rank) * size; }
    int64_t owned(int rank) const;
};
Shard make_shard(int64_t numel, int ranks);

struct ZeroOptions {
    int stage = 0;                          // zero_optimization.stage
    bool offload = false;                   // offload_optimizer.device = cpu (stages 1-3)
    bool pin_memory = true;                 // offload_optimizer.pin_memory
    int offload_threads = 0;                // CPU AdamW threads; 0: the CPUs this rank may use (World::cpus), less two
    bool keep_gathered = false;             // stage 3: keep each unit from its forward to its backward
    bool copy_gathers = false;              // stage 3 on one rank: copy each unit into a gather buffer as N
                                            // ranks do, instead of handing out the shard (--copy-gathers)
    bool overlap_comm = true;               // collectives on their own stream (else on the compute stream)
    bool overlap_update = true;             // the GPU update of each unit on its own stream, beside the next
                                            // forward of the units before it (--serial-update: all of it on the
                                            // compute stream, before the forward)
    int64_t reduce_bucket_size = 500000000;     // elements per all-reduce collective (stages 0, 1)
    int64_t allgather_bucket_size = 500000000;  // accepted; all-gathers run one unit at a time
    int64_t prefetch_bucket_size = 50000000;    // stage 3: 0 turns prefetching off (DeepSpeed's default 5e7)
    int64_t persistence_threshold = 100000;     // stage 3: units this small stay replicated
    bool inference = false;                 // nothing trains: bf16 weights only, no gradients, masters or
                                            // moments (generation)
};
void check_zero_options(const ZeroOptions& z, const std::string& where);
// Stage 3: whether the next unit is gathered ahead while this one computes. A unit is the smallest piece
// the store moves, so any positive prefetch bucket prefetches one whole unit, however large.
bool prefetches(const ZeroOptions& z);
// Stage 3 on one rank: a unit's shard is the whole unit, so gather() hands the shard itself to the model;
// all-gathering it would only copy it into a buffer (7.8 GB a step for Llama-3.2-1B at seq 1024, ~3% of
// the step: bench/PROFILE.md). --copy-gathers keeps the copy, to see the N-rank machinery on one GPU.
bool gathers_in_place(const ZeroOptions& z, int ranks);

// Bytes per rank by category; estimated (before allocating) and measured.
struct MemoryReport {
    double base = 0, gathered = 0, master = 0, grads = 0, grad_buffers = 0, moments = 0, host = 0;
    double model_states() const { return base + gathered + master + grads + grad_buffers + moments; }  // on the GPU
};
constexpr int kGatherSlots = 3;  // stage 3: the unit computing, the one prefetched, and one being released
constexpr int kGradBuffers = 3;  // stages 2, 3: the unit computing, one reduce-scattering, one held (tied head)

// The slice of one trainable tensor that this rank optimizes: fp32 master weights and AdamW moments,
// in host memory with offload (checkpoints read and write these by name). With offload, everything that
// reads or writes them from the host first waits for the CPU update in flight
// (distributed/offload.h, O6).
struct OwnedSlice {
    std::string name;          // HF/PEFT name of the tensor
    int64_t begin = 0, count = 0;  // elements [begin, begin + count) of the flattened tensor
    float *master, *m, *v;     // [count] each
    bool host = false;
};

class CpuOptimizer;

class ZeroStore : public UnitStore {
  public:
    // lora.rank == 0: full fine-tuning (every base weight trains); else only the adapters train.
    ZeroStore(const LlamaConfig& c, const LoraConfig& lora, const ZeroOptions& z, const World& world, cudaStream_t stream);
    ~ZeroStore() override;
    ZeroStore(const ZeroStore&) = delete;
    ZeroStore& operator=(const ZeroStore&) = delete;

    void init_random(uint64_t seed);                              // HF's init: N(0, 0.02) matrices, norms 1
    LoadReport load(const std::string& model_dir);                // HF safetensors; each rank reads its part
    void init_lora(uint64_t seed);                                // PEFT's init
    void set_lora(const std::vector<std::vector<float>>& layers); // from an adapter (fp32, per layer)

    UnitView gather(int unit, Pass pass) override;
    void release(int unit) override;
    void reduce_grads(int unit) override;
    // Without offload, at stages 0-2 or stage 3 on one rank, gather hands out resident weights, no work.
    bool weights_in_place() const override;

    void begin_step();                  // zero the gradients (offload: after the last step's copies to the host)
    void begin_micro_batch(bool last) { last_micro_ = last; }  // stages 0, 1 reduce only after the last micro-batch of a step
    // Clips by the global norm (max_norm <= 0: off) and applies AdamW to this rank's trainable shard.
    // Offload: returns once the CPU update has started; gather() waits for each unit's new weights.
    void step(const AdamWConfig& c, float lr, int step, float max_norm);
    const float* grad_norm_sq() const { return norm_sq_; }  // device scalar, before clipping

    int64_t trainable_numel() const { return n_train_; }
    MemoryReport memory() const { return mem_; }
    static MemoryReport estimate(const LlamaConfig& c, const LoraConfig& lora, const ZeroOptions& z, int ranks);
    // What one optimizer step of `accumulation` micro-batches sends through the transport, per rank, by kind:
    // the calls this store makes, counted from the plan (what world.h's Comm counts as it runs them).
    // padded = false counts each buffer without the padding of its shards to a multiple of `ranks`.
    static Traffic traffic(const LlamaConfig& c, const LoraConfig& lora, const ZeroOptions& z, int ranks, int accumulation,
                           bool padded = true);
    int64_t prefetched_units() const { return prefetched_; }  // stage 3 gathers issued ahead (a counter)

    // Whole tensors (collective: every rank calls).
    std::vector<std::vector<float>> lora_layers();  // full fp32 adapters, per layer
    std::vector<float> unit_weights(int unit);      // full fp32 base weights of a unit (padding gaps included)
    std::vector<uint16_t> unit_weights16(int unit); // its full bf16 weights as the model reads them (the export)
    std::vector<float> trainable_grads();           // this rank's fp32 gradient, all trainable elements (tests)

    // What this rank optimizes, tensor by tensor (checkpoints); after writing into the masters,
    // refresh_weights() makes the bf16 weights follow (collective).
    std::vector<OwnedSlice> owned_slices();
    void refresh_weights();
    const World& world() const { return w_; }

  private:
    struct Segment;
    struct Unit;
    void for_each_tensor(int unit, int seg, int64_t begin, int64_t end,
                         const std::function<void(const UnitTensor&, int64_t, int64_t, int64_t)>& fn) const;
    int64_t slot_numel(const Unit& U) const;
    int free_slot(int64_t numel);
    void all_gather_unit(int unit);  // stage 3: into a free slot, on the comm stream
    void prefetch(int unit);
    float* take_grad_buffer(int unit);
    void update_on_gpu(const AdamWConfig& c, float lr, int step);  // step()'s AdamW without offload
    void zero_gradient(Segment& s);  // before the step first writes a stale gradient (offload: O5)
    void await_update(int unit, cudaStream_t reader);  // the unit's weights are read after its update (offload: O4)
    void finish_update();  // the update in flight has finished: the GPU's (overlapped) or the CPU's (offload: O6)
    bool overlaps_update(const Segment& s) const;  // its GPU update runs on update_stream_
    void write_compute_copy(Segment& s);  // bf16(master) into the resident copy (+ all-gather)
    cudaStream_t comm_stream() const { return z_.overlap_comm ? w_.comm_stream : stream_; }

    LlamaConfig c_;
    LoraConfig lora_;
    ZeroOptions z_;
    World w_;
    LoraLayout layout_;
    cudaStream_t stream_;
    std::vector<Unit*> units_;
    struct Slot {  // stage 3: a buffer one gathered unit occupies
        bf16* data = nullptr;
        int64_t capacity = 0;
        int unit = -1;
        cudaEvent_t free_event, ready_event;
    };
    std::vector<Slot> slots_;
    struct GradBuffer {  // stages 2, 3: a unit's full gradient for one micro-batch, before its reduce-scatter
        float* data = nullptr;
        int64_t capacity = 0;
        int unit = -1;
        int64_t released = -1;  // when it was last handed back (a counter): the oldest free one is reused
        cudaEvent_t free_event;
    };
    std::vector<GradBuffer> grad_buffers_;
    int64_t releases_ = 0, prefetched_ = 0;
    bool last_micro_ = true;
    int64_t n_train_ = 0;
    float *norm_sq_ = nullptr, *clip_scale_ = nullptr;
    cudaEvent_t compute_done_ = nullptr, reduced_ = nullptr;
    cudaEvent_t gathered_ = nullptr;     // offload: compute waits here for a replicated unit's new weights
    cudaStream_t update_stream_ = nullptr;  // overlap_update: the GPU updates, unit by unit
    cudaEvent_t clipped_ = nullptr;         // overlap_update: the clip coefficient is ready (compute stream)
    std::vector<cudaEvent_t> updated_;      // overlap_update: [unit] its update has written its weights
    std::unique_ptr<CpuOptimizer> cpu_;  // offload: master, m, v and the update (distributed/offload.h)
    MemoryReport mem_;
};
