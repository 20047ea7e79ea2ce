// distributed/world.cu — processes, GPUs and the two transports of the collectives (world.h).
//
// Start-up, in order: MPI (when launched by mpirun/srun) gives rank and size, and the ranks on this node;
// a launch whose MPI world is smaller than the launcher's task count (srun --mpi=none), or a copy that
// torchrun/deepspeed/accelerate started (WORLD_SIZE > 1 with an MPI world of 1), is refused. Later,
// once the inputs are checked: each rank takes GPU local_rank % visible GPUs; the GPUs' UUIDs say which
// ranks share one; contexts are created one rank at a time so each rank can measure its own; then the
// transport starts: NCCL (rank 0 makes an ncclUniqueId, MPI broadcasts it) or, when ranks share a GPU,
// MPI through pinned host memory.
#include "distributed/world.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <map>
#include <new>
#include <thread>
#include <vector>

#include <nccl.h>

void exit_with_error(const std::string& message) {
    std::fflush(stdout);  // what was printed so far comes before the error
    std::fprintf(stderr, "error: %s\n", message.c_str());
    std::fflush(stderr);
    int initialized = 0, finalized = 0, size = 1;
    MPI_Initialized(&initialized);
    MPI_Finalized(&finalized);
    if (initialized && !finalized) {
        MPI_Comm_size(MPI_COMM_WORLD, &size);
        if (size > 1) MPI_Abort(MPI_COMM_WORLD, 1);
    }
    std::exit(1);
}

namespace {

// Checked NCCL and MPI calls: a failure names the call and ends every rank.
void check_nccl(ncclResult_t status, const char* what) {
    if (status != ncclSuccess) exit_with_error(std::string(what) + ": NCCL error: " + ncclGetErrorString(status));
}
void check_mpi(int status, const char* what) {
    if (status != MPI_SUCCESS) {
        char text[MPI_MAX_ERROR_STRING];
        int length = 0;
        MPI_Error_string(status, text, &length);
        exit_with_error(std::string(what) + ": MPI error: " + std::string(text, length));
    }
}

MPI_Comm node_comm = MPI_COMM_NULL;  // the ranks on this node

size_t env_int(const char* name) {
    const char* v = std::getenv(name);
    return v ? size_t(std::strtoull(v, nullptr, 10)) : 0;
}

// ------------------------------------------------------------------------------------------ NCCL transport

ncclDataType_t nccl_type(DType t) { return t == DType::bf16 ? ncclBfloat16 : ncclFloat; }

class NcclComm : public Comm {
  public:
    NcclComm(const World& w) : Comm(w.size) {
        ncclUniqueId id;
        if (w.rank == 0) check_nccl(ncclGetUniqueId(&id), "ncclGetUniqueId");
        if (w.mpi) check_mpi(MPI_Bcast(&id, sizeof id, MPI_BYTE, 0, MPI_COMM_WORLD), "MPI_Bcast");
        check_nccl(ncclCommInitRank(&comm_, w.size, id, w.rank), "ncclCommInitRank");
    }
    ~NcclComm() override { ncclCommDestroy(comm_); }
    const char* name() const override { return "nccl"; }
    void run_all_gather(const void* send, void* recv, size_t count, DType t, cudaStream_t s) override {
        check_nccl(ncclAllGather(send, recv, count, nccl_type(t), comm_, s), "ncclAllGather");
    }
    void run_reduce_scatter(const float* send, float* recv, size_t count, cudaStream_t s) override {
        check_nccl(ncclReduceScatter(send, recv, count, ncclFloat, ncclSum, comm_, s), "ncclReduceScatter");
    }
    void run_all_reduce(float* buf, size_t count, cudaStream_t s) override {
        check_nccl(ncclAllReduce(buf, buf, count, ncclFloat, ncclSum, comm_, s), "ncclAllReduce");
    }
    void check_peers() override {
        ncclResult_t async = ncclSuccess;
        check_nccl(ncclCommGetAsyncError(comm_, &async), "ncclCommGetAsyncError");
        if (async == ncclSuccess || async == ncclInProgress) return;
        ncclCommAbort(comm_);
        exit_with_error(std::string("NCCL failed while waiting for the other ranks: ") + ncclGetErrorString(async));
    }

  private:
    ncclComm_t comm_ = nullptr;
};

// ------------------------------------------------------------------------------------------ MPI transport

// Each call: wait for the stream (everything ordered before the collective is done), copy the device
// buffer to pinned host memory, run the MPI collective there, copy the result back and wait again.
class MpiComm : public Comm {
  public:
    MpiComm(const World& w) : Comm(w.size), rank_(w.rank), size_(w.size) {}
    ~MpiComm() override {
        if (send_) cudaFreeHost(send_);
        if (recv_) cudaFreeHost(recv_);
    }
    const char* name() const override { return "mpi"; }
    void run_all_gather(const void* send, void* recv, size_t count, DType t, cudaStream_t s) override {
        size_t bytes = count * dtype_size(t);
        reserve(bytes, bytes * size_t(size_));
        to_host(send_, send, bytes, s);
        check_mpi(MPI_Allgather(send_, int(bytes), MPI_BYTE, recv_, int(bytes), MPI_BYTE, MPI_COMM_WORLD), "MPI_Allgather");
        to_device(recv, recv_, bytes * size_t(size_), s);
    }
    void run_reduce_scatter(const float* send, float* recv, size_t count, cudaStream_t s) override {
        reserve(count * 4 * size_t(size_), count * 4);
        to_host(send_, send, count * 4 * size_t(size_), s);
        check_mpi(MPI_Reduce_scatter_block(send_, recv_, int(count), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD), "MPI_Reduce_scatter_block");
        to_device(recv, recv_, count * 4, s);
    }
    void run_all_reduce(float* buf, size_t count, cudaStream_t s) override {
        reserve(count * 4, count * 4);
        to_host(send_, buf, count * 4, s);
        check_mpi(MPI_Allreduce(send_, recv_, int(count), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD), "MPI_Allreduce");
        to_device(buf, recv_, count * 4, s);
    }
    void check_peers() override {}  // a lost peer fails the next MPI call, or mpirun ends the job

  private:
    void reserve(size_t send_bytes, size_t recv_bytes) {
        if (send_bytes > (size_t(1) << 31) || recv_bytes > (size_t(1) << 31) * size_t(size_))
            exit_with_error("the MPI transport moves at most 2 GiB per rank in one collective");
        grow(send_, send_cap_, send_bytes), grow(recv_, recv_cap_, recv_bytes);
    }
    static void grow(char*& p, size_t& cap, size_t bytes) {
        if (bytes <= cap) return;
        if (p) cudaFreeHost(p);
        check_cuda(cudaMallocHost(&p, bytes), "cudaMallocHost (MPI staging)");
        cap = bytes;
    }
    static void to_host(void* dst, const void* src, size_t bytes, cudaStream_t s) {
        check_cuda(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, s), "MPI staging: copy to host");
        check_cuda(cudaStreamSynchronize(s), "MPI staging");
    }
    static void to_device(void* dst, const void* src, size_t bytes, cudaStream_t s) {
        check_cuda(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, s), "MPI staging: copy to GPU");
        check_cuda(cudaStreamSynchronize(s), "MPI staging");
    }
    int rank_, size_;
    char *send_ = nullptr, *recv_ = nullptr;
    size_t send_cap_ = 0, recv_cap_ = 0;
};

// ------------------------------------------------------------------------------------------ the GPU

__global__ void probe_kernel() {}

constexpr int kBuiltArchs[] = {__CUDA_ARCH_LIST__};  // nvcc's list of the targets this file was built for

// Stops with one line when this binary has no code for the GPU (built for another architecture).
void check_gpu_code(int device) {
    cudaFuncAttributes attr;
    cudaError_t status = cudaFuncGetAttributes(&attr, probe_kernel);
    if (status == cudaSuccess) return;
    cudaGetLastError();
    cudaDeviceProp p;
    check_cuda(cudaGetDeviceProperties(&p, device), "cudaGetDeviceProperties");
    std::string built;
    for (int arch : kBuiltArchs) built += (built.empty() ? "" : ", ") + std::to_string(arch / 100) + "." + std::to_string(arch / 10 % 10);
    fail("GPU " + std::to_string(device) + " (" + p.name + ", compute capability " + std::to_string(p.major) + "." +
         std::to_string(p.minor) + ") has no code in this build (compute capabilities built: " + built +
         "): rebuild with `make clean && make GPU_ARCH=sm_" + std::to_string(p.major) + std::to_string(p.minor) +
         (p.major == 9 && p.minor == 0 ? "a" : "") + "`");  // sm_90a: the Hopper attention kernels (Makefile)
}

}  // namespace

size_t dtype_size(DType t) { return t == DType::bf16 ? 2 : 4; }

Transport parse_transport(const std::string& text, const std::string& flag) {
    if (text == "nccl") return Transport::nccl;
    if (text == "mpi") return Transport::mpi;
    if (text == "auto") return Transport::automatic;
    fail(flag + " must be nccl, mpi or auto, not \"" + text + "\"");
}

namespace {

// torchrun, the deepspeed launcher and accelerate start N copies with WORLD_SIZE=N, RANK and LOCAL_RANK in
// their environment and no MPI: each copy would be a world of one, all training into one OUT. When MPI
// sees one rank but WORLD_SIZE says more, the copy with RANK 0 says how to launch and the others end
// quietly. (An MPI world of several ranks is the truth, whatever WORLD_SIZE says.)
void refuse_foreign_launch(int mpi_size) {
    size_t world = env_int("WORLD_SIZE");
    if (world <= 1 || mpi_size > 1) return;
    const char* rank = std::getenv("RANK") ? std::getenv("RANK") : std::getenv("LOCAL_RANK");
    if (rank && std::strtol(rank, nullptr, 10) != 0) std::exit(1);
    std::string n = std::to_string(world);
    fail("started as one of " + n + " processes (WORLD_SIZE=" + n + ": torchrun, deepspeed or accelerate launch) but MPI sees a world "
         "of 1: this program's ranks come from MPI; launch it with `mpirun -np " + n + " ./train ...` (under SLURM: `srun -n " + n +
         " --mpi=pmix ./train ...`)");
}

}  // namespace

World world_init(int* argc, char*** argv) {
    World w;
    const char* launched[] = {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "SLURM_PROCID"};
    for (const char* v : launched) w.mpi |= std::getenv(v) != nullptr;
    if (!w.mpi) refuse_foreign_launch(1);
    if (!w.mpi) return w;  // ./train alone: one rank, no MPI needed
    check_mpi(MPI_Init(argc, argv), "MPI_Init");
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    check_mpi(MPI_Comm_rank(MPI_COMM_WORLD, &w.rank), "MPI_Comm_rank");
    check_mpi(MPI_Comm_size(MPI_COMM_WORLD, &w.size), "MPI_Comm_size");
    // srun starts N tasks; without MPI wiring (srun --mpi=none) each is a world of one writing one output.
    size_t tasks = std::max({env_int("SLURM_STEP_NUM_TASKS"), env_int("OMPI_COMM_WORLD_SIZE"), env_int("PMI_SIZE")});
    if (tasks > 1 && size_t(w.size) != tasks)
        fail("the launcher started " + std::to_string(tasks) + " tasks but MPI sees a world of " + std::to_string(w.size) +
             " (with srun use --mpi=pmix or --mpi=pmi2; or start with mpirun)");
    refuse_foreign_launch(w.size);
    check_mpi(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, w.rank, MPI_INFO_NULL, &node_comm), "MPI_Comm_split_type");
    check_mpi(MPI_Comm_rank(node_comm, &w.local_rank), "MPI_Comm_rank");
    check_mpi(MPI_Comm_size(node_comm, &w.local_size), "MPI_Comm_size");
    int leader = w.local_rank == 0, nodes = 0;
    check_mpi(MPI_Allreduce(&leader, &nodes, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD), "MPI_Allreduce");
    w.nodes = nodes;
    return w;
}

void world_start_gpu(World& w, Transport requested) {
    int gpus = 0;
    if (cudaGetDeviceCount(&gpus) != cudaSuccess || gpus == 0) fail("no CUDA GPU is visible (--dry-run checks the inputs without one)");
    w.gpu = w.local_rank % gpus;
    cudaDeviceProp p;
    check_cuda(cudaGetDeviceProperties(&p, w.gpu), "cudaGetDeviceProperties");
    // Which ranks of this node share this GPU (by UUID: with one GPU per task every rank sees "GPU 0").
    std::vector<cudaUUID_t> uuids(size_t(w.local_size));
    uuids[size_t(w.local_rank)] = p.uuid;
    if (w.mpi)
        check_mpi(MPI_Allgather(&p.uuid, sizeof p.uuid, MPI_BYTE, uuids.data(), sizeof p.uuid, MPI_BYTE, node_comm), "MPI_Allgather");
    auto same_gpu = [&](int a, int b) { return std::memcmp(&uuids[size_t(a)], &uuids[size_t(b)], sizeof(cudaUUID_t)) == 0; };
    int sharing = 0;
    for (int r = 0; r < w.local_size; ++r) sharing += same_gpu(r, w.local_rank);
    w.ranks_per_gpu = sharing;
    if (w.mpi) check_mpi(MPI_Allreduce(MPI_IN_PLACE, &w.ranks_per_gpu, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD), "MPI_Allreduce");
    // Contexts one rank at a time: each rank's context is the GPU memory its creation added.
    std::vector<double> used_after(size_t(w.local_size), -1);
    for (int r = 0; r < w.local_size; ++r) {
        double used = 0;
        if (r == w.local_rank) {
            check_cuda(cudaSetDevice(w.gpu), "cudaSetDevice");
            check_cuda(cudaFree(nullptr), "creating the CUDA context");
            used = gpu_in_use_bytes();
            double before = 0;
            for (int q = 0; q < r; ++q)
                if (same_gpu(q, r)) before = used_after[size_t(q)];
            w.context_bytes = size_t(std::max(0.0, used - before));
        }
        if (w.mpi) check_mpi(MPI_Bcast(&used, 1, MPI_DOUBLE, r, node_comm), "MPI_Bcast");
        used_after[size_t(r)] = used;
    }
    check_gpu_code(w.gpu);
    bool shared = w.ranks_per_gpu > 1;
    if (requested == Transport::nccl && shared)
        throw CollectiveError("--comm nccl: " + std::to_string(w.ranks_per_gpu) + " ranks share one GPU and NCCL needs a GPU per rank "
             "(use --comm mpi, or at most one rank per GPU)");
    bool use_mpi = requested == Transport::mpi || (requested == Transport::automatic && shared);
    if (use_mpi && !w.mpi) use_mpi = false;  // one process alone: nothing to talk to
    if (use_mpi) w.comm = new MpiComm(w);
    else w.comm = new NcclComm(w);
    if (w.rank == 0 && use_mpi)
        std::printf("world: %d ranks on %d GPU%s: collectives go through MPI, staged in host memory (--comm mpi: for "
                    "learning and testing, not for speed)\n",
                    w.size, std::max(1, w.size / w.ranks_per_gpu), w.size / w.ranks_per_gpu > 1 ? "s" : "");
    check_cuda(cudaStreamCreateWithFlags(&w.comm_stream, cudaStreamNonBlocking), "cudaStreamCreate");
}

void world_finalize(World& w) {
    delete w.comm;
    if (w.comm_stream) cudaStreamDestroy(w.comm_stream);
    w.comm = nullptr, w.comm_stream = nullptr;
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (w.mpi && !finalized) {
        if (node_comm != MPI_COMM_NULL) MPI_Comm_free(&node_comm);
        MPI_Finalize();
    }
}

namespace {
// Polls `ready` until the GPU work is done, checking meanwhile that no peer has failed (a collective
// waiting for a dead rank would otherwise never finish).
template <class Query>
void wait_polling(const World& w, Query ready) {
    for (;;) {
        cudaError_t status = ready();
        if (status == cudaSuccess) return;
        if (status != cudaErrorNotReady) check_cuda(status, "the GPU work of this step");
        if (w.comm) w.comm->check_peers();
        std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
}
}  // namespace

void world_wait(const World& w, cudaStream_t stream) {
    wait_polling(w, [&] { return cudaStreamQuery(stream); });
}

void world_wait_event(const World& w, cudaEvent_t event) {
    wait_polling(w, [&] { return cudaEventQuery(event); });
}

double world_sum(const World& w, double x) {
    if (!w.mpi) return x;
    double total = 0;
    check_mpi(MPI_Allreduce(&x, &total, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD), "MPI_Allreduce");
    return total;
}

void world_broadcast(const World& w, void* data, size_t bytes) {
    if (w.mpi) check_mpi(MPI_Bcast(data, int(bytes), MPI_BYTE, 0, MPI_COMM_WORLD), "MPI_Bcast");
}

std::vector<std::vector<double>> world_gather(const World& w, const std::vector<double>& values) {
    if (!w.mpi) return {values};
    int count = int(values.size());
    std::vector<int> counts(size_t(w.size)), offsets(size_t(w.size), 0);
    check_mpi(MPI_Gather(&count, 1, MPI_INT, counts.data(), 1, MPI_INT, 0, MPI_COMM_WORLD), "MPI_Gather");
    for (int r = 1; r < w.size; ++r) offsets[size_t(r)] = offsets[size_t(r - 1)] + counts[size_t(r - 1)];
    std::vector<double> all(w.rank == 0 ? size_t(offsets.back() + counts.back()) : 0);
    check_mpi(MPI_Gatherv(values.data(), count, MPI_DOUBLE, all.data(), counts.data(), offsets.data(), MPI_DOUBLE, 0, MPI_COMM_WORLD),
              "MPI_Gatherv");
    std::vector<std::vector<double>> out;
    if (w.rank == 0)
        for (int r = 0; r < w.size; ++r) out.emplace_back(all.begin() + offsets[size_t(r)], all.begin() + offsets[size_t(r)] + counts[size_t(r)]);
    return out;
}

void world_barrier(const World& w) {
    if (w.mpi) check_mpi(MPI_Barrier(MPI_COMM_WORLD), "MPI_Barrier");
}

void world_check_same(const World& w, const std::string& text, const std::string& what) {
    if (!w.mpi) return;
    uint64_t lo = fnv1a(text), hi = lo;
    check_mpi(MPI_Allreduce(MPI_IN_PLACE, &lo, 1, MPI_UINT64_T, MPI_MIN, MPI_COMM_WORLD), "MPI_Allreduce");
    check_mpi(MPI_Allreduce(MPI_IN_PLACE, &hi, 1, MPI_UINT64_T, MPI_MAX, MPI_COMM_WORLD), "MPI_Allreduce");
    if (lo != hi) throw CollectiveError(what + " differ between ranks (start every rank with the same command line and files)");
}

void world_agree(const World& w, double timeout_s, const std::function<void()>& check) {
    if (!w.mpi) return check();
    std::string problem;
    try {
        check();
    } catch (const std::bad_alloc&) {
        problem = "out of host memory while checking the inputs (std::bad_alloc)";
    } catch (const std::exception& e) {
        problem = e.what();
        if (!dynamic_cast<const Error*>(&e)) problem = std::string("unexpected failure while checking the inputs: ") + e.what();
    }
    // [lowest failing rank, lowest passing rank], each `size` when there is none
    int mine[2] = {problem.empty() ? w.size : w.rank, problem.empty() ? w.rank : w.size}, all[2] = {0, 0};
    MPI_Request request;
    check_mpi(MPI_Iallreduce(mine, all, 2, MPI_INT, MPI_MIN, MPI_COMM_WORLD, &request), "MPI_Iallreduce");
    // Ranks give up one after another (half a second apart), so the lowest waiting rank's line ends the job.
    double give_up = wall_seconds() + timeout_s + 0.5 * w.rank;
    for (int done = 0; !done;) {
        check_mpi(MPI_Test(&request, &done, MPI_STATUS_IGNORE), "MPI_Test");
        if (done) break;
        if (wall_seconds() > give_up)
            exit_with_error("rank " + std::to_string(w.rank) + " waited " + std::to_string(int(timeout_s)) +
                            " s for the other ranks to check their inputs: one is stuck (on a file that blocks when opened, such as "
                            "a FIFO, or a stalled file system?); --check-timeout S sets the wait" +
                            (problem.empty() ? "" : ". Rank " + std::to_string(w.rank) + " found: " + problem));
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    if (all[0] == w.size) return;
    throw CollectiveError(problem, all[0]);
}

double gpu_in_use_bytes() {
    size_t free_b = 0, total = 0;
    check_cuda(cudaMemGetInfo(&free_b, &total), "cudaMemGetInfo");
    return double(total - free_b);
}

double rank_gpu_bytes(const World& w) { return double(tracked_device_bytes()) + double(w.context_bytes); }

void MemorySampler::start(const World& w, double period_s) {
    stop();
    stopping_ = false;
    thread_ = std::thread([this, w, period_s] {
        if (cudaSetDevice(w.gpu) != cudaSuccess) return;  // this rank's GPU, whose context exists already
        std::unique_lock<std::mutex> hold(lock_);
        while (!stopping_) {
            hold.unlock();
            sample(w);
            hold.lock();
            wake_.wait_for(hold, std::chrono::duration<double>(period_s), [this] { return stopping_; });
        }
    });
}

void MemorySampler::sample(const World& w) {
    double mine = rank_gpu_bytes(w);
    size_t free_b = 0, total = 0;
    double gpu = cudaMemGetInfo(&free_b, &total) == cudaSuccess ? double(total - free_b) : NAN;
    std::lock_guard<std::mutex> hold(lock_);
    auto add = [](Stats& s, double& sum, double v) {
        if (std::isnan(v)) return;
        ++s.samples, sum += v;
        s.peak = std::max(s.peak, v), s.min = std::isnan(s.min) ? v : std::min(s.min, v), s.mean = sum / double(s.samples);
    };
    add(rank_, rank_sum_, mine), add(gpu_, gpu_sum_, gpu);
    last_gpu_ = gpu;
}

void MemorySampler::stop() {
    {
        std::lock_guard<std::mutex> hold(lock_);
        stopping_ = true;
    }
    wake_.notify_all();
    if (thread_.joinable()) thread_.join();
}

MemorySampler::Stats MemorySampler::rank() const {
    std::lock_guard<std::mutex> hold(lock_);
    return rank_;
}

MemorySampler::Stats MemorySampler::gpu() const {
    std::lock_guard<std::mutex> hold(lock_);
    return gpu_;
}

double MemorySampler::last_gpu() const {
    std::lock_guard<std::mutex> hold(lock_);
    return last_gpu_;
}
