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
// memory and runs AdamW on the CPU. Small units (the final norm) stay replicated at stage 3
// (persistence threshold). Gradient accumulation: stages 0, 1 keep full gradients and all-reduce once,
// after the last micro-batch of a step; stages 2, 3 reduce-scatter after every micro-batch into the
// shard, where micro-batches add up. Collectives run on their own stream, ordered with compute by events;
// stage 3 prefetches the next unit's weights while the current one computes.
#include "zero3.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <thread>

#include "common.h"
#include "json.h"

// ================================================================================================ world

World world_init(int* argc, char*** argv) {
    World w;
    const char* launched[] = {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "SLURM_PROCID"};
    for (const char* v : launched) w.mpi |= std::getenv(v) != nullptr;
    if (!w.mpi) return w;  // ./train alone: one rank, no MPI needed
    check_mpi(MPI_Init(argc, argv), "MPI_Init");
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    check_mpi(MPI_Comm_rank(MPI_COMM_WORLD, &w.rank), "MPI_Comm_rank");
    check_mpi(MPI_Comm_size(MPI_COMM_WORLD, &w.size), "MPI_Comm_size");
    MPI_Comm node;  // ranks sharing this machine
    check_mpi(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, w.rank, MPI_INFO_NULL, &node), "MPI_Comm_split_type");
    check_mpi(MPI_Comm_rank(node, &w.local_rank), "MPI_Comm_rank");
    check_mpi(MPI_Comm_size(node, &w.local_size), "MPI_Comm_size");
    MPI_Comm_free(&node);
    int leader = w.local_rank == 0, nodes = 0;
    check_mpi(MPI_Allreduce(&leader, &nodes, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD), "MPI_Allreduce");
    w.nodes = nodes;
    return w;
}

// Picks the GPU and starts NCCL (after the inputs are checked, so a bad flag never waits on the GPU).
void world_start_gpu(World& w) {
    int gpus = 0;
    if (cudaGetDeviceCount(&gpus) != cudaSuccess || gpus == 0) fail("no CUDA GPU is visible (--dry-run checks the inputs without one)");
    if (w.local_rank >= gpus)
        fail(std::to_string(w.local_size) + " ranks on one node but only " + std::to_string(gpus) + " GPUs (use mpirun -np <= GPUs per node)");
    check_cuda(cudaSetDevice(w.local_rank), "cudaSetDevice");
    ncclUniqueId id;
    if (w.rank == 0) check_nccl(ncclGetUniqueId(&id), "ncclGetUniqueId");
    if (w.mpi) check_mpi(MPI_Bcast(&id, sizeof id, MPI_BYTE, 0, MPI_COMM_WORLD), "MPI_Bcast");
    check_nccl(ncclCommInitRank(&w.nccl, w.size, id, w.rank), "ncclCommInitRank");
    check_cuda(cudaStreamCreateWithFlags(&w.comm, cudaStreamNonBlocking), "cudaStreamCreate");
}

void world_finalize(World& w) {
    if (w.nccl) ncclCommDestroy(w.nccl);
    if (w.comm) cudaStreamDestroy(w.comm);
    w.nccl = nullptr, w.comm = nullptr;
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (w.mpi && !finalized) MPI_Finalize();
}

void world_wait(const World& w, cudaStream_t stream) {
    for (;;) {
        cudaError_t status = cudaStreamQuery(stream);
        if (status == cudaSuccess) return;
        if (status != cudaErrorNotReady) check_cuda(status, "the GPU work of this step");
        if (w.nccl) {
            ncclResult_t async = ncclSuccess;
            check_nccl(ncclCommGetAsyncError(w.nccl, &async), "ncclCommGetAsyncError");
            if (async != ncclSuccess) {
                ncclCommAbort(w.nccl);
                fail(std::string("NCCL failed while waiting for the other ranks: ") + ncclGetErrorString(async));
            }
        }
        std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
}

double world_sum(const World& w, double x) {
    if (!w.mpi) return x;
    double total = 0;
    check_mpi(MPI_Allreduce(&x, &total, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD), "MPI_Allreduce");
    return total;
}

void world_barrier(const World& w) {
    if (w.mpi) check_mpi(MPI_Barrier(MPI_COMM_WORLD), "MPI_Barrier");
}

void world_check_same(const World& w, const std::string& text, const std::string& what) {
    if (!w.mpi) return;
    uint64_t h = 1469598103934665603ull;
    for (unsigned char c : text) h = (h ^ c) * 1099511628211ull;
    uint64_t lo = h, hi = h;
    check_mpi(MPI_Allreduce(MPI_IN_PLACE, &lo, 1, MPI_UINT64_T, MPI_MIN, MPI_COMM_WORLD), "MPI_Allreduce");
    check_mpi(MPI_Allreduce(MPI_IN_PLACE, &hi, 1, MPI_UINT64_T, MPI_MAX, MPI_COMM_WORLD), "MPI_Allreduce");
    if (lo != hi) fail(what + " differ between ranks (start every rank with the same command line and files)");
}

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
}

// ================================================================================================ store

struct ZeroStore::Segment {
    int64_t numel = 0;  // 0: absent
    bool trainable = false;
    bool sharded = false;            // stage 3 and not persistent: only this rank's bf16 shard is resident
    Shard shard;
    bf16* full16 = nullptr;          // replicated bf16, padded (when !sharded)
    bf16* shard16 = nullptr;         // this rank's bf16 part (when sharded)
    int64_t opt_begin = 0, opt_len = 0;  // the elements this rank optimizes
    float *master = nullptr, *m = nullptr, *v = nullptr;  // [opt_len]; host memory when offloaded
    float* grad = nullptr;           // stages 0, 1: full, padded; stages 2, 3: [shard.size], accumulated
    float* opt_grad = nullptr;       // the gradient elements aligned with master
};

struct ZeroStore::Unit {
    Segment seg[2];  // base weights, LoRA adapters
    int trainable = -1;
    bool sharded = false;
    int slot = -1;
    Pass pass = Pass::forward;
    int grad_buffer = -1;
};

namespace {

// w[i] = stddev * N(0,1) from a counter-based hash of (seed, index0 + i) (Box-Muller), or `fill`.
__global__ void init_normal_kernel(bf16* w16, float* w32, int64_t n, uint64_t seed, int64_t index0, float stddev, float fill) {
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
        float x = fill;
        if (stddev > 0) {
            uint64_t z = seed + uint64_t(index0 + i) * 0x9E3779B97F4A7C15ull;
            z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
            z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
            z ^= z >> 31;
            float u1 = (float(z >> 40) + 1.0f) / 16777217.0f, u2 = float((z >> 16) & 0xFFFFFF) / 16777216.0f;
            x = __bfloat162float(__float2bfloat16(stddev * sqrtf(-2.0f * logf(u1)) * cospif(2.0f * u2)));
        }
        if (w16) w16[i] = __float2bfloat16(x);
        if (w32) w32[i] = x;
    }
}

__global__ void f32_to_bf16_kernel(const float* x, bf16* y, int64_t n) {
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
        y[i] = __float2bfloat16(x[i]);
}

__global__ void bf16_to_f32_kernel(const bf16* x, float* y, int64_t n) {
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
        y[i] = __bfloat162float(x[i]);
}

// acc += x  (a reduce-scattered micro-batch gradient into the shard)
__global__ void accumulate_kernel(float* acc, const float* x, int64_t n) {
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) acc[i] += x[i];
}

int grid_for(int64_t n) { return int(std::max<int64_t>(1, std::min<int64_t>((n + 255) / 256, 132 * 16))); }

template <typename T>
T* host_alloc(size_t n, bool pinned) {
    void* p = nullptr;
    if (pinned) check_cuda(cudaMallocHost(&p, std::max<size_t>(1, n) * sizeof(T)), "cudaMallocHost (offloaded optimizer state)");
    else p = std::calloc(std::max<size_t>(1, n), sizeof(T));
    if (!p) fail("out of host memory for the offloaded optimizer state");
    return static_cast<T*>(p);
}

}  // namespace

ZeroStore::ZeroStore(const LlamaConfig& c, const LoraConfig& lora, const ZeroOptions& z, const World& world, cudaStream_t stream)
    : c_(c), lora_(lora), z_(z), w_(world), layout_(lora_layout(c, lora)), stream_(stream) {
    int N = w_.size, r = w_.rank;
    for (int u = 0; u < num_units(c); ++u) {
        Unit* U = new Unit();
        U->seg[0].numel = unit_numel(c, u);
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
            if (!s.trainable) continue;
            s.opt_begin = z.stage == 0 ? 0 : s.shard.begin(r);
            s.opt_len = z.stage == 0 ? s.numel : s.shard.owned(r);
            size_t n = size_t(std::max<int64_t>(1, s.opt_len));
            if (z.offload) {
                s.master = host_alloc<float>(n, z.pin_memory), s.m = host_alloc<float>(n, z.pin_memory), s.v = host_alloc<float>(n, z.pin_memory);
                std::memset(s.m, 0, n * 4), std::memset(s.v, 0, n * 4);
                mem_.host += double(n) * 12;
            } else {
                s.master = device_alloc<float>(n, "fp32 master weights"), s.m = device_alloc<float>(n, "AdamW moments");
                s.v = device_alloc<float>(n, "AdamW moments");
                check_cuda(cudaMemset(s.m, 0, n * 4), "memset"), check_cuda(cudaMemset(s.v, 0, n * 4), "memset");
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
    norm_sq_ = device_alloc<float>(1, "grad norm");
    clip_scale_ = device_alloc<float>(1, "clip scale");
    check_cuda(cudaMallocHost(&host_scalars_, 16), "cudaMallocHost");
    check_cuda(cudaEventCreateWithFlags(&compute_done_, cudaEventDisableTiming), "event");
}

ZeroStore::~ZeroStore() {
    for (Unit* U : units_) {
        for (Segment& s : U->seg) {
            cudaFree(s.full16), cudaFree(s.shard16), cudaFree(s.grad);
            if (z_.offload && s.master) {
                for (float* p : {s.master, s.m, s.v}) z_.pin_memory ? (void)cudaFreeHost(p) : std::free(p);
            } else {
                cudaFree(s.master), cudaFree(s.m), cudaFree(s.v);
            }
        }
        delete U;
    }
    for (Slot& s : slots_) cudaFree(s.data), cudaEventDestroy(s.free_event), cudaEventDestroy(s.ready_event);
    for (GradBuffer& g : grad_buffers_) cudaFree(g.data), cudaEventDestroy(g.free_event);
    cudaFree(norm_sq_), cudaFree(clip_scale_), cudaFreeHost(host_scalars_);
    cudaEventDestroy(compute_done_);
}

MemoryReport ZeroStore::estimate(const LlamaConfig& c, const LoraConfig& lora, const ZeroOptions& z, int N) {
    MemoryReport m;
    LoraLayout layout = lora_layout(c, lora);
    double biggest = 0, biggest_train = 0;
    for (int u = 0; u < num_units(c); ++u) {
        int64_t base = unit_numel(c, u), ad = (lora.rank > 0 && u >= 1 && u <= c.num_hidden_layers) ? layout.per_layer : 0;
        bool sharded = z.stage == 3 && base + ad > z.persistence_threshold;
        for (int64_t numel : {base, ad}) {
            if (!numel) continue;
            Shard s = make_shard(numel, N);
            m.base += double(sharded ? s.size : s.padded) * 2;
        }
        if (sharded) biggest = std::max(biggest, double(make_shard(base, N).padded + (ad ? make_shard(ad, N).padded : 0)));
        int64_t t = lora.rank > 0 ? ad : base;
        if (!t) continue;
        Shard s = make_shard(t, N);
        double opt = double(z.stage == 0 ? t : s.size);
        if (z.offload) m.host += opt * 12;
        else m.master += opt * 4, m.moments += opt * 8;
        m.grads += double(z.stage <= 1 ? s.padded : s.size) * 4;
        biggest_train = std::max(biggest_train, double(s.padded));
    }
    if (z.stage == 3) m.gathered = biggest * 2 * 3;           // three gather slots
    if (z.stage >= 2) m.grad_buffers = biggest_train * 4 * 3;  // three full-gradient buffers
    return m;
}

// Calls fn(spec, tensor_offset, segment_offset, count) for each parameter tensor of the unit's base
// segment overlapping [begin, end), or each LoRA tensor (A, B per target) of its adapter segment.
void ZeroStore::for_each_tensor(int unit, int seg, int64_t begin, int64_t end,
                                const std::function<void(const TensorSpec&, int64_t, int64_t, int64_t)>& fn) const {
    std::vector<std::pair<TensorSpec, int64_t>> tensors;  // spec and its offset in the segment
    if (seg == 0) {
        std::vector<TensorSpec> specs = parameter_specs(c_);
        for (int i = 0; i < int(specs.size()); ++i) {
            int u;
            int64_t off;
            locate_parameter(c_, i, u, off);
            if (u == unit) tensors.push_back({specs[size_t(i)], off});
        }
    } else {
        for (int t = 0; t < kTargets; ++t) {
            if (!lora_.target[t]) continue;
            tensors.push_back({{peft_key(unit - 1, LoraTarget(t), 'A'), {lora_.rank, layout_.in[t]}}, layout_.a_offset[t]});
            tensors.push_back({{peft_key(unit - 1, LoraTarget(t), 'B'), {layout_.out[t], lora_.rank}}, layout_.b_offset[t]});
        }
    }
    for (const auto& [spec, off] : tensors) {
        int64_t lo = std::max(begin, off), hi = std::min(end, off + spec.numel());
        if (lo < hi) fn(spec, lo - off, lo, hi - lo);
    }
}

namespace {
uint64_t name_seed(uint64_t seed, const std::string& name) {
    uint64_t h = 1469598103934665603ull ^ seed;
    for (unsigned char ch : name) h = (h ^ ch) * 1099511628211ull;
    return h;
}
}  // namespace

// bf16(master) into the resident weights this rank optimizes; stages >= 1 then all-gather replicated copies.
void ZeroStore::write_compute_copy(Segment& s) {
    bf16* dst = s.sharded ? s.shard16 : s.full16 + s.opt_begin;
    if (s.opt_len > 0) {
        if (z_.offload) {
            std::vector<uint16_t> h(size_t(s.opt_len));
            for (size_t i = 0; i < h.size(); ++i) h[i] = float_to_bf16(s.master[i]);
            check_cuda(cudaMemcpyAsync(dst, h.data(), h.size() * 2, cudaMemcpyHostToDevice, stream_), "copy weights");
            check_cuda(cudaStreamSynchronize(stream_), "copy weights");
        } else {
            f32_to_bf16_kernel<<<grid_for(s.opt_len), 256, 0, stream_>>>(s.master, dst, s.opt_len);
            check_launch("f32_to_bf16_kernel");
        }
    }
    if (!s.sharded && z_.stage >= 1) all_gather(s.full16, s.shard, stream_);
}

void ZeroStore::all_gather(bf16* full, const Shard& shard, cudaStream_t s) {  // in place: each rank's part to all
    check_nccl(ncclAllGather(full + shard.begin(w_.rank), full, size_t(shard.size), ncclBfloat16, w_.nccl, s), "ncclAllGather");
}

void ZeroStore::init_random(uint64_t seed) {
    for (int u = 0; u < int(units_.size()); ++u) {
        Segment& s = units_[size_t(u)]->seg[0];
        int64_t lo = s.sharded ? s.shard.begin(w_.rank) : 0, hi = s.sharded ? lo + s.shard.owned(w_.rank) : s.numel;
        bf16* resident = s.sharded ? s.shard16 : s.full16;
        for_each_tensor(u, 0, lo, hi, [&](const TensorSpec& t, int64_t toff, int64_t soff, int64_t n) {
            bool norm = t.shape.size() == 1;
            init_normal_kernel<<<grid_for(n), 256, 0, stream_>>>(resident + (soff - lo), nullptr, n, name_seed(seed, t.name), toff,
                                                                 norm ? 0.0f : 0.02f, 1.0f);
            check_launch("init_normal_kernel");
        });
        if (!s.trainable) continue;
        float* dev = z_.offload ? device_alloc<float>(size_t(std::max<int64_t>(1, s.opt_len)), "init staging") : s.master;
        for_each_tensor(u, 0, s.opt_begin, s.opt_begin + s.opt_len, [&](const TensorSpec& t, int64_t toff, int64_t soff, int64_t n) {
            bool norm = t.shape.size() == 1;
            init_normal_kernel<<<grid_for(n), 256, 0, stream_>>>(nullptr, dev + (soff - s.opt_begin), n, name_seed(seed, t.name), toff,
                                                                 norm ? 0.0f : 0.02f, 1.0f);
            check_launch("init_normal_kernel");
        });
        if (z_.offload) {
            check_cuda(cudaMemcpy(s.master, dev, size_t(s.opt_len) * 4, cudaMemcpyDeviceToHost), "copy master");
            cudaFree(dev);
        }
    }
    check_cuda(cudaStreamSynchronize(stream_), "init");
}

void ZeroStore::load(const std::string& dir) {
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
    for (int u = 0; u < int(units_.size()); ++u) {
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
}

void ZeroStore::set_lora(const std::vector<std::vector<float>>& layers) {
    for (int l = 0; l < c_.num_hidden_layers; ++l) {
        Segment& s = units_[size_t(l + 1)]->seg[1];
        const float* src = layers[size_t(l)].data();
        if (z_.offload) std::memcpy(s.master, src + s.opt_begin, size_t(s.opt_len) * 4);
        else check_cuda(cudaMemcpy(s.master, src + s.opt_begin, size_t(std::max<int64_t>(0, s.opt_len)) * 4, cudaMemcpyHostToDevice), "copy LoRA");
        write_compute_copy(s);
    }
    check_cuda(cudaStreamSynchronize(stream_), "set_lora");
}

void ZeroStore::init_lora(uint64_t seed) {
    std::vector<std::vector<float>> layers(size_t(c_.num_hidden_layers), std::vector<float>(size_t(layout_.per_layer)));
    for (int l = 0; l < c_.num_hidden_layers; ++l) lora_init_layer(lora_, layout_, seed, l, layers[size_t(l)].data());
    set_lora(layers);
}

// ------------------------------------------------------------------------------------------ gather / release

int ZeroStore::take_slot(int unit) {
    Unit& U = *units_[size_t(unit)];
    int64_t need = U.seg[0].shard.padded + (U.seg[1].numel ? U.seg[1].shard.padded : 0);
    int found = -1;
    for (int i = 0; i < int(slots_.size()) && found < 0; ++i)
        if (slots_[size_t(i)].unit < 0 && slots_[size_t(i)].capacity >= need) found = i;
    if (found < 0) {  // a new slot, big enough for any unit
        Slot s;
        for (Unit* V : units_)
            if (V->sharded) s.capacity = std::max(s.capacity, V->seg[0].shard.padded + (V->seg[1].numel ? V->seg[1].shard.padded : 0));
        s.data = device_alloc<bf16>(size_t(s.capacity), "stage-3 gather buffer");
        mem_.gathered += double(s.capacity) * 2;
        check_cuda(cudaEventCreateWithFlags(&s.free_event, cudaEventDisableTiming), "event");
        check_cuda(cudaEventCreateWithFlags(&s.ready_event, cudaEventDisableTiming), "event");
        check_cuda(cudaEventRecord(s.free_event, stream_), "event");
        slots_.push_back(s);
        found = int(slots_.size()) - 1;
    }
    Slot& s = slots_[size_t(found)];
    cudaStream_t cs = z_.overlap_comm ? w_.comm : stream_;
    check_cuda(cudaStreamWaitEvent(cs, s.free_event, 0), "wait");  // its last user is done with it
    int64_t at = 0;
    for (int k = 0; k < 2; ++k) {
        Segment& g = U.seg[k];
        if (!g.numel) continue;
        check_nccl(ncclAllGather(g.shard16, s.data + at, size_t(g.shard.size), ncclBfloat16, w_.nccl, cs), "ncclAllGather");
        at += g.shard.padded;
    }
    check_cuda(cudaEventRecord(s.ready_event, cs), "event");
    s.unit = unit, U.slot = found;
    return found;
}

void ZeroStore::prefetch(int unit) {
    if (z_.stage != 3 || unit < 0 || unit >= int(units_.size())) return;
    Unit& U = *units_[size_t(unit)];
    if (!U.sharded || U.slot >= 0 || z_.prefetch_bucket_size == 0) return;
    if (U.seg[0].numel + U.seg[1].numel > z_.prefetch_bucket_size) return;
    int busy = 0;
    for (const Slot& s : slots_) busy += s.unit >= 0;
    if (busy >= 3 && !z_.keep_gathered) return;  // two in use and one ahead is enough
    take_slot(unit);
}

float* ZeroStore::take_grad_buffer(int unit) {
    Unit& U = *units_[size_t(unit)];
    int64_t need = U.seg[U.trainable].shard.padded;
    int found = -1;
    for (int i = 0; i < int(grad_buffers_.size()) && found < 0; ++i)
        if (grad_buffers_[size_t(i)].unit < 0 && grad_buffers_[size_t(i)].capacity >= need) found = i;
    if (found < 0) {
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
    check_cuda(cudaStreamWaitEvent(stream_, b.free_event, 0), "wait");  // its reduce-scatter has finished
    check_cuda(cudaMemsetAsync(b.data, 0, size_t(need) * 4, stream_), "memset");
    b.unit = unit, U.grad_buffer = found;
    return b.data;
}

UnitView ZeroStore::gather(int unit, Pass pass) {
    Unit& U = *units_[size_t(unit)];
    U.pass = pass;
    const bf16* seg16[2] = {U.seg[0].full16, U.seg[1].full16};
    if (U.sharded) {
        if (U.slot < 0) take_slot(unit);
        Slot& s = slots_[size_t(U.slot)];
        check_cuda(cudaStreamWaitEvent(stream_, s.ready_event, 0), "wait");
        seg16[0] = s.data, seg16[1] = s.data + U.seg[0].shard.padded;
    }
    prefetch(pass == Pass::forward ? unit + 1 : unit - 1);  // the unit this pass needs next
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
    check_cuda(cudaEventRecord(s.free_event, stream_), "event");
    s.unit = -1, U.slot = -1;
}

void ZeroStore::reduce_grads(int unit) {
    Unit& U = *units_[size_t(unit)];
    if (U.trainable < 0) return;
    Segment& s = U.seg[U.trainable];
    cudaStream_t cs = z_.overlap_comm ? w_.comm : stream_;
    check_cuda(cudaEventRecord(compute_done_, stream_), "event");  // the comm stream waits for this unit's backward
    check_cuda(cudaStreamWaitEvent(cs, compute_done_, 0), "wait");
    if (z_.stage <= 1) {  // all-reduce the full gradient once per step, in buckets
        if (!last_micro_) return;
        for (int64_t off = 0; off < s.shard.padded; off += z_.reduce_bucket_size) {
            size_t n = size_t(std::min(z_.reduce_bucket_size, s.shard.padded - off));
            check_nccl(ncclAllReduce(s.grad + off, s.grad + off, n, ncclFloat, ncclSum, w_.nccl, cs), "ncclAllReduce");
        }
        return;
    }
    // stages 2, 3: reduce-scatter this micro-batch's gradient, add this rank's part into the shard
    GradBuffer& b = grad_buffers_[size_t(U.grad_buffer)];
    float* mine = b.data + s.shard.begin(w_.rank);
    check_nccl(ncclReduceScatter(b.data, mine, size_t(s.shard.size), ncclFloat, ncclSum, w_.nccl, cs), "ncclReduceScatter");
    if (s.opt_len > 0) {
        accumulate_kernel<<<grid_for(s.opt_len), 256, 0, cs>>>(s.grad, mine, s.opt_len);
        check_launch("accumulate_kernel");
    }
    check_cuda(cudaEventRecord(b.free_event, cs), "event");
    b.unit = -1, U.grad_buffer = -1;
}

// ------------------------------------------------------------------------------------------ the step

void ZeroStore::begin_step() {
    for (Unit* U : units_)
        if (U->trainable >= 0) {
            Segment& s = U->seg[U->trainable];
            check_cuda(cudaMemsetAsync(s.grad, 0, size_t(z_.stage <= 1 ? s.shard.padded : s.shard.size) * 4, stream_), "zero grads");
        }
}

void ZeroStore::begin_micro_batch(bool last) { last_micro_ = last; }

void ZeroStore::step(const AdamWConfig& c, float lr, int step, float max_norm) {
    cudaStream_t cs = z_.overlap_comm ? w_.comm : stream_;
    cudaEvent_t ev;
    check_cuda(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming), "event");
    check_cuda(cudaEventRecord(ev, cs), "event");
    check_cuda(cudaStreamWaitEvent(stream_, ev, 0), "wait");  // every reduction has landed
    // Global gradient norm: each rank sums the squares of the elements it optimizes (stage 0: its shard's
    // slice of the identical full gradient), then the sums are all-reduced.
    check_cuda(cudaMemsetAsync(norm_sq_, 0, 4, stream_), "memset");
    for (Unit* U : units_) {
        if (U->trainable < 0) continue;
        Segment& s = U->seg[U->trainable];
        if (z_.stage == 0) grad_sum_squares(s.grad + s.shard.begin(w_.rank), s.shard.owned(w_.rank), norm_sq_, stream_);
        else grad_sum_squares(s.opt_grad, s.opt_len, norm_sq_, stream_);
    }
    check_nccl(ncclAllReduce(norm_sq_, norm_sq_, 1, ncclFloat, ncclSum, w_.nccl, stream_), "ncclAllReduce");
    clip_coefficient(norm_sq_, max_norm, clip_scale_, stream_);
    float host_scale = 1.0f;
    if (z_.offload) {
        check_cuda(cudaMemcpyAsync(host_scalars_, clip_scale_, 4, cudaMemcpyDeviceToHost, stream_), "copy");
        check_cuda(cudaStreamSynchronize(stream_), "sync");
        host_scale = host_scalars_[0];
    }
    for (int u = 0; u < int(units_.size()); ++u) {
        Unit& U = *units_[size_t(u)];
        if (U.trainable < 0) continue;
        Segment& s = U.seg[U.trainable];
        bf16* dst = s.sharded ? s.shard16 : s.full16 + s.opt_begin;
        if (z_.offload) {  // gradients to the host, AdamW on the CPU, bf16 weights back
            host_grad_.resize(size_t(std::max<int64_t>(1, s.opt_len)));
            check_cuda(cudaMemcpy(host_grad_.data(), s.opt_grad, size_t(s.opt_len) * 4, cudaMemcpyDeviceToHost), "copy grads");
        }
        std::vector<__nv_bfloat16> h16(z_.offload ? size_t(std::max<int64_t>(1, s.opt_len)) : 0);
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
            float decay = decays[k];
            if (z_.offload)
                adamw_step_cpu(s.master + i, host_grad_.data() + i, s.m + i, s.v + i, h16.data() + i, n, c, lr, decay, step, host_scale,
                               z_.offload_threads);
            else
                adamw_step_gpu(s.master + i, s.opt_grad + i, s.m + i, s.v + i, dst + i, n, c, lr, decay, step, clip_scale_, stream_);
        }
        if (z_.offload && s.opt_len > 0)
            check_cuda(cudaMemcpyAsync(dst, h16.data(), size_t(s.opt_len) * 2, cudaMemcpyHostToDevice, stream_), "copy weights");
        if (z_.offload) check_cuda(cudaStreamSynchronize(stream_), "sync");
        if (!s.sharded && z_.stage >= 1) all_gather(s.full16, s.shard, stream_);  // stages 1, 2: everyone's new weights
    }
    // Gathered copies are stale now; the next gathers read the new shards after this step.
    for (Slot& s : slots_)
        if (s.unit >= 0) units_[size_t(s.unit)]->slot = -1, s.unit = -1, check_cuda(cudaEventRecord(s.free_event, stream_), "event");
    check_cuda(cudaEventRecord(ev, stream_), "event");
    check_cuda(cudaStreamWaitEvent(cs, ev, 0), "wait");
    cudaEventDestroy(ev);
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
    check_nccl(ncclAllGather(mine, full, size_t(shard.size), ncclFloat, w.nccl, stream), "ncclAllGather");
    check_cuda(cudaStreamSynchronize(stream), "sync");
    check_cuda(cudaMemcpy(out.data(), full, out.size() * 4, cudaMemcpyDeviceToHost), "copy");
    cudaFree(full);
    return out;
}
}  // namespace

std::vector<std::vector<float>> ZeroStore::lora_layers() {
    std::vector<std::vector<float>> layers;
    for (int l = 0; l < c_.num_hidden_layers; ++l) {
        Segment& s = units_[size_t(l + 1)]->seg[1];
        layers.push_back(gather_master(w_, z_, s.master, s.shard, s.opt_len, stream_));
    }
    return layers;
}

std::vector<float> ZeroStore::unit_weights(int unit) {
    Segment& s = units_[size_t(unit)]->seg[0];
    if (s.trainable) return gather_master(w_, z_, s.master, s.shard, s.opt_len, stream_);
    std::vector<float> out(size_t(s.numel));
    bf16* full = s.full16;
    if (s.sharded) {
        full = device_alloc<bf16>(size_t(s.shard.padded), "gather staging");
        check_nccl(ncclAllGather(s.shard16, full, size_t(s.shard.size), ncclBfloat16, w_.nccl, stream_), "ncclAllGather");
    }
    float* f32 = device_alloc<float>(size_t(s.numel), "gather staging");
    bf16_to_f32_kernel<<<grid_for(s.numel), 256, 0, stream_>>>(full, f32, s.numel);
    check_launch("bf16_to_f32_kernel");
    check_cuda(cudaStreamSynchronize(stream_), "sync");
    check_cuda(cudaMemcpy(out.data(), f32, out.size() * 4, cudaMemcpyDeviceToHost), "copy");
    cudaFree(f32);
    if (s.sharded) cudaFree(full);
    return out;
}

std::vector<float> ZeroStore::trainable_grads() {
    check_cuda(cudaDeviceSynchronize(), "sync");
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

void ZeroStore::save_hf(const std::string& dir) {
    std::vector<TensorSpec> specs = parameter_specs(c_);
    std::vector<std::vector<float>> adapters = lora_.rank ? lora_layers() : std::vector<std::vector<float>>();
    std::unique_ptr<SafetensorsWriter> out;
    if (w_.rank == 0) {
        mkdir(dir.c_str(), 0755);
        std::vector<SafetensorsWriter::Entry> entries;
        for (int u = 0; u < num_units(c_); ++u)  // unit order, which is the order the data is written in
            for (int i = 0; i < int(specs.size()); ++i) {
                int unit;
                int64_t off;
                locate_parameter(c_, i, unit, off);
                if (unit == u) entries.push_back({specs[size_t(i)].name, "BF16", specs[size_t(i)].shape});
            }
        out.reset(new SafetensorsWriter(dir + "/model.safetensors", entries, {{"format", "pt"}}));
    }
    for (int u = 0; u < num_units(c_); ++u) {  // one unit in host memory at a time
        std::vector<float> w = unit_weights(u);
        if (w_.rank != 0) continue;
        if (lora_.rank && u >= 1 && u <= c_.num_hidden_layers) merge_lora_layer(c_, lora_, adapters[size_t(u - 1)].data(), w.data());
        std::vector<uint16_t> h(w.size());
        for (size_t k = 0; k < w.size(); ++k) h[k] = float_to_bf16(w[k]);
        out->write(h.data(), h.size() * 2);
    }
    if (w_.rank != 0) return;
    out->finish();
    std::string cfg = config_json(c_);
    FILE* f = std::fopen((dir + "/config.json").c_str(), "w");
    if (!f) fail("cannot write " + dir + "/config.json");
    std::fputs(cfg.c_str(), f);
    std::fclose(f);
}

// ------------------------------------------------------------------------------------------ checkpoints
// DIR/rank-R-of-N.safetensors holds, for every trainable tensor slice rank R optimizes, three entries
// "master:NAME:BEGIN", "m:NAME:BEGIN", "v:NAME:BEGIN" (fp32, BEGIN = first element within tensor NAME).
// DIR/zero.json (written last, by rank 0) names the world size, the model and the LoRA configuration.
// Loading reassembles each tensor by name from whichever files hold its slices, so the rank count and
// the stage may change between save and load.

namespace {
std::string lora_signature(const LoraConfig& l) {
    std::string s = "r=" + std::to_string(l.rank) + " alpha=" + std::to_string(l.alpha) + " rslora=" + std::to_string(l.use_rslora) + " targets=";
    for (int t = 0; t < kTargets; ++t)
        if (l.target[t] && l.rank) s += std::string(lora_target_name(LoraTarget(t))) + ",";
    return s;
}
}  // namespace

std::string checkpoint_rank_file(const std::string& dir, int rank, int size) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "/rank-%05d-of-%05d.safetensors", rank, size);
    return dir + buf;
}

void ZeroStore::save_checkpoint(const std::string& dir) {
    if (w_.rank == 0) mkdir(dir.c_str(), 0755);
    world_barrier(w_);
    check_cuda(cudaDeviceSynchronize(), "sync");
    std::vector<TensorToWrite> entries;
    std::vector<std::vector<float>> data;  // keeps the host copies alive until written
    std::vector<std::string> names;
    for (int u = 0; u < int(units_.size()); ++u) {
        Unit& U = *units_[size_t(u)];
        if (U.trainable < 0) continue;
        Segment& s = U.seg[U.trainable];
        int64_t lo = s.shard.begin(w_.rank), hi = lo + s.shard.owned(w_.rank);  // stage 0 too: each rank writes a slice
        int64_t base = z_.stage == 0 ? 0 : s.opt_begin;                         // where master[0] sits in the segment
        for_each_tensor(u, U.trainable, lo, hi, [&](const TensorSpec& t, int64_t toff, int64_t soff, int64_t n) {
            const char* kinds[3] = {"master", "m", "v"};
            float* src[3] = {s.master, s.m, s.v};
            for (int k = 0; k < 3; ++k) {
                std::vector<float> h(static_cast<size_t>(n));
                const float* p = src[k] + (soff - base);
                if (z_.offload) std::memcpy(h.data(), p, size_t(n) * 4);
                else check_cuda(cudaMemcpy(h.data(), p, size_t(n) * 4, cudaMemcpyDeviceToHost), "copy state");
                data.push_back(std::move(h));
                names.push_back(checkpoint_key(kinds[k], t.name, toff));
            }
        });
    }
    for (size_t i = 0; i < data.size(); ++i) entries.push_back({names[i], "F32", {int64_t(data[i].size())}, data[i].data()});
    write_safetensors(checkpoint_rank_file(dir, w_.rank, w_.size), entries, {{"world_size", std::to_string(w_.size)}});
    world_barrier(w_);
    if (w_.rank != 0) return;
    std::string meta = "{\"world_size\": " + std::to_string(w_.size) + ", \"stage\": " + std::to_string(z_.stage) +
                       ", \"trainable\": " + std::to_string(n_train_) + ", \"lora\": " + json_quote(lora_signature(lora_)) +
                       ", \"model\": " + json_quote(config_json(c_)) + "}\n";
    std::string tmp = dir + "/zero.json.tmp";
    FILE* f = std::fopen(tmp.c_str(), "w");
    if (!f || std::fputs(meta.c_str(), f) < 0 || std::fclose(f) != 0) fail("cannot write " + tmp);
    if (std::rename(tmp.c_str(), (dir + "/zero.json").c_str()) != 0) fail("cannot write " + dir + "/zero.json");
}

CheckpointIndex::CheckpointIndex(const std::string& dir, int files) : dir_(dir) {
    for (int k = 0; k < files; ++k) {
        readers_.emplace_back(new SafetensorsReader(checkpoint_rank_file(dir, k, files)));
        for (const auto& [key, t] : readers_.back()->tensors()) {
            size_t a = key.find(':'), b = key.rfind(':');
            if (a == std::string::npos || a == b || t.shape.size() != 1) fail(t.file + ": unexpected entry " + key);
            slices_[key.substr(a + 1, b - a - 1)].push_back({key.substr(0, a), key, std::stoll(key.substr(b + 1)), t.shape[0], k});
        }
    }
}

std::vector<float> CheckpointIndex::read(const std::string& kind, const std::string& name, int64_t begin, int64_t n) const {
    std::vector<float> part(static_cast<size_t>(n));
    int64_t covered = 0;
    auto it = slices_.find(name);
    if (it != slices_.end())
        for (const Slice& sl : it->second) {
            if (sl.kind != kind) continue;
            int64_t lo = std::max(begin, sl.begin), hi = std::min(begin + n, sl.begin + sl.count);
            if (lo >= hi) continue;
            std::vector<float> v = readers_[size_t(sl.file)]->read_float(sl.key, {sl.count});
            std::copy(v.begin() + (lo - sl.begin), v.begin() + (hi - sl.begin), part.begin() + (lo - begin));
            covered += hi - lo;
        }
    if (covered != n) fail("checkpoint " + dir_ + " is incomplete: " + kind + " of " + name + " is missing elements");
    return part;
}

std::string checkpoint_key(const std::string& kind, const std::string& name, int64_t begin) {
    return kind + ":" + name + ":" + std::to_string(begin);
}

void ZeroStore::load_checkpoint(const std::string& dir) {
    Json meta = read_json_file(dir + "/zero.json");
    const Json* ws = meta.find("world_size");
    const Json* model = meta.find("model");
    const Json* lora = meta.find("lora");
    if (!ws || !ws->is_int() || !model || !model->is_string() || !lora || !lora->is_string())
        fail(dir + "/zero.json: not a checkpoint description");
    if (model->string != config_json(c_)) fail("checkpoint " + dir + " is from another model (its config differs from this run's)");
    if (lora->string != lora_signature(lora_))
        fail("checkpoint " + dir + " has LoRA " + lora->string + " but this run has " + lora_signature(lora_));
    CheckpointIndex index(dir, int(ws->integer));
    for (int u = 0; u < int(units_.size()); ++u) {
        Unit& U = *units_[size_t(u)];
        if (U.trainable < 0) continue;
        Segment& s = U.seg[U.trainable];
        for_each_tensor(u, U.trainable, s.opt_begin, s.opt_begin + s.opt_len, [&](const TensorSpec& t, int64_t toff, int64_t soff, int64_t n) {
            const char* kinds[3] = {"master", "m", "v"};
            float* dst[3] = {s.master, s.m, s.v};
            for (int k = 0; k < 3; ++k) {
                std::vector<float> part = index.read(kinds[k], t.name, toff, n);
                float* p = dst[k] + (soff - s.opt_begin);
                if (z_.offload) std::memcpy(p, part.data(), size_t(n) * 4);
                else check_cuda(cudaMemcpy(p, part.data(), size_t(n) * 4, cudaMemcpyHostToDevice), "copy state");
            }
        });
        write_compute_copy(s);
    }
    check_cuda(cudaStreamSynchronize(stream_), "load checkpoint");
}
