// zero3.h — ZeRO (Rajbhandari et al. 2020): every parameter byte lives here, partitioned across ranks.
// The model asks for one unit's weights at a time:
//   gather(u, pass)   stage 3: all-gather u's shards into a full bf16 buffer (the next unit is prefetched)
//   release(u)        the buffer may be reused
//   reduce_grads(u)   u's gradients for this micro-batch are done: all-reduce (stages 0, 1, at the last
//                     micro-batch of a step) or reduce-scatter into this rank's shard (stages 2, 3)
//   step()            AdamW on this rank's shard (GPU, or CPU with offload); stages 1, 2: all-gather the
//                     updated bf16 weights; stage 3: nothing, the next gather reads the new shards
// Stage 0 is data parallelism (everything replicated), so one protocol covers DDP and ZeRO 1/2/3.
#pragma once
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <nccl.h>

#include "adamw.h"
#include "llama.h"
#include "lora.h"

// ---------------------------------------------------------------------------------------------- the world
// One process per GPU. Started by mpirun or srun (or alone as ./train): MPI gives rank, size and the
// node-local rank (which picks the GPU); rank 0 makes an ncclUniqueId and MPI broadcasts it.
struct World {
    int rank = 0, size = 1, local_rank = 0, local_size = 1, nodes = 1;
    bool mpi = false;             // started by mpirun or srun
    ncclComm_t nccl = nullptr;
    cudaStream_t comm = nullptr;  // collectives run here, ordered with compute by events
};
World world_init(int* argc, char*** argv);  // MPI only: rank, size, nodes
void world_start_gpu(World& w);              // the rank's GPU, NCCL, the comm stream
void world_finalize(World& w);
double world_sum(const World& w, double x);  // x added over ranks (host, MPI)
// Waits for `stream` while watching NCCL for asynchronous errors (a lost peer), which end all ranks.
void world_wait(const World& w, cudaStream_t stream);
// Fails on every rank when `text` (e.g. the options) differs between ranks.
void world_check_same(const World& w, const std::string& text, const std::string& what);
void world_barrier(const World& w);

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
    int offload_threads = 8;
    bool keep_gathered = false;             // stage 3: keep each unit from its forward to its backward
    bool overlap_comm = true;               // collectives on their own stream (else on the compute stream)
    int64_t reduce_bucket_size = 500000000;     // elements per reduce collective
    int64_t allgather_bucket_size = 500000000;  // elements per all-gather collective
    int64_t prefetch_bucket_size = 50000000;    // stage 3: prefetch the next unit if it is at most this big
    int64_t persistence_threshold = 100000;     // stage 3: units this small stay replicated
};
void check_zero_options(const ZeroOptions& z, const std::string& where);

// Bytes per rank by category; estimated (before allocating) and measured.
struct MemoryReport {
    double base = 0, gathered = 0, compute_copy = 0, master = 0, grads = 0, grad_buffers = 0, moments = 0, host = 0;
    double gpu_total() const { return base + gathered + compute_copy + master + grads + grad_buffers + moments; }
};

// Checkpoint files: DIR/rank-R-of-N.safetensors hold slices "KIND:NAME:BEGIN" (KIND = master, m, v) of
// the trainable tensors by HF/PEFT name; any rank count can read back any range of any tensor.
std::string checkpoint_rank_file(const std::string& dir, int rank, int size);
std::string checkpoint_key(const std::string& kind, const std::string& name, int64_t begin);
class CheckpointIndex {
  public:
    CheckpointIndex(const std::string& dir, int files);  // reads every file's header (fails on a damaged one)
    // Elements [begin, begin + n) of tensor `name`, assembled from whichever slices hold them.
    std::vector<float> read(const std::string& kind, const std::string& name, int64_t begin, int64_t n) const;

  private:
    struct Slice { std::string kind, key; int64_t begin, count; int file; };
    std::string dir_;
    std::vector<std::unique_ptr<SafetensorsReader>> readers_;
    std::map<std::string, std::vector<Slice>> slices_;
};

class ZeroStore : public UnitStore {
  public:
    // lora.rank == 0: full fine-tuning (every base weight trains); else only the adapters train.
    ZeroStore(const LlamaConfig& c, const LoraConfig& lora, const ZeroOptions& z, const World& world, cudaStream_t stream);
    ~ZeroStore() override;
    ZeroStore(const ZeroStore&) = delete;
    ZeroStore& operator=(const ZeroStore&) = delete;

    void init_random(uint64_t seed);                              // HF's init: N(0, 0.02) matrices, norms 1
    void load(const std::string& model_dir);                      // HF safetensors; each rank keeps its part
    void init_lora(uint64_t seed);                                // PEFT's init
    void set_lora(const std::vector<std::vector<float>>& layers); // from an adapter (fp32, per layer)

    UnitView gather(int unit, Pass pass) override;
    void release(int unit) override;
    void reduce_grads(int unit) override;

    void begin_step();                  // zero the gradients
    void begin_micro_batch(bool last);  // stages 0, 1 reduce only after the last micro-batch of a step
    // Clips by the global norm (max_norm <= 0: off) and applies AdamW to this rank's trainable shard.
    void step(const AdamWConfig& c, float lr, int step, float max_norm);
    const float* grad_norm_sq() const { return norm_sq_; }  // device scalar, before clipping

    int64_t trainable_numel() const { return n_train_; }
    MemoryReport memory() const { return mem_; }
    static MemoryReport estimate(const LlamaConfig& c, const LoraConfig& lora, const ZeroOptions& z, int ranks);

    std::vector<std::vector<float>> lora_layers();  // full fp32 adapters, per layer (collective)
    std::vector<float> unit_weights(int unit);      // full fp32 base weights of a unit (collective)
    std::vector<float> trainable_grads();           // this rank's fp32 gradient, all trainable elements (stage 0/1 full; tests)
    // Writes model.safetensors + config.json (full fine-tune, or the base with adapters merged); rank 0 writes.
    void save_hf(const std::string& dir);

    // Checkpoint of the trainable state by parameter name: each rank writes the slices it owns.
    void save_checkpoint(const std::string& dir);
    void load_checkpoint(const std::string& dir);  // any rank count or stage

  private:
    struct Segment;
    struct Unit;
    void for_each_tensor(int unit, int seg, int64_t begin, int64_t end,
                         const std::function<void(const TensorSpec&, int64_t, int64_t, int64_t)>& fn) const;
    bf16* replicated(Segment& s);
    void all_gather(bf16* full, const Shard& shard, cudaStream_t s);
    void prefetch(int unit);
    int take_slot(int unit);
    float* take_grad_buffer(int unit);
    void write_compute_copy(Segment& s);  // bf16(master) into the resident copy (+ all-gather)

    LlamaConfig c_;
    LoraConfig lora_;
    ZeroOptions z_;
    World w_;
    LoraLayout layout_;
    cudaStream_t stream_;
    std::vector<Unit*> units_;
    struct Slot { bf16* data = nullptr; int64_t capacity = 0; int unit = -1; cudaEvent_t free_event, ready_event; };
    std::vector<Slot> slots_;
    struct GradBuffer { float* data = nullptr; int64_t capacity = 0; int unit = -1; cudaEvent_t free_event; };
    std::vector<GradBuffer> grad_buffers_;
    int last_gathered_ = -1;
    bool last_micro_ = true;
    int64_t n_train_ = 0;
    float *norm_sq_ = nullptr, *clip_scale_ = nullptr, *host_scalars_ = nullptr;
    cudaEvent_t compute_done_ = nullptr;
    std::vector<float> host_grad_;  // offload: this rank's gradient shard on the host
    MemoryReport mem_;
};
