// distributed/world.h — processes and GPUs, and the collectives ZeRO calls. Knows nothing of ZeRO's plan.
//
// The world: one process per rank, started by mpirun or srun (or alone as ./train). MPI gives the rank,
// the size and the node-local rank; a rank uses GPU local_rank % (GPUs it sees), so several ranks may
// share one GPU. Rank 0 prints.
//
// The wire: the collectives the partitioner needs, each ordered on a CUDA stream, behind one interface:
//   all_gather       recv[r*count + i] = send_r[i]           (every rank's part, to every rank)
//   reduce_scatter   recv[i] = sum_r send_r[rank*count + i]  (the sum, split: each rank keeps its part)
//   all_reduce       buf[i] = sum_r buf_r[i]
// each counted by what it moves (distributed/traffic.h: per kind, the buffer; the paper's volume and the
// ring's bytes follow), with two transports:
//   nccl   one rank per GPU (the default): NCCL's kernels run on the stream;
//   mpi    ranks that share a GPU (NCCL refuses them): the stream is waited for, the buffers staged through
//          pinned host memory, MPI sums on the CPU, the result copied back before the call returns. The
//          same order as NCCL's, so the protocol is unchanged; for learning and testing, not for speed.
#pragma once
#include <cmath>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <cuda_runtime.h>
#include <mpi.h>

#include "distributed/traffic.h"
#include "support/cuda_calls.h"

enum class DType { bf16, f32 };
size_t dtype_size(DType t);

class Comm {
  public:
    virtual ~Comm() = default;
    virtual const char* name() const = 0;
    // Ends the run with a message when the transport has failed (a lost peer); called while waiting.
    virtual void check_peers() = 0;

    // ---- the collectives, counted (distributed/traffic.h), then handed to the transport's run_* below.
    // The same accounting under every transport: each call adds its buffer to counted(), on the host, when
    // it is issued. send may be recv + rank*count (in place).
    void all_gather(const void* send, void* recv, size_t count, DType t, cudaStream_t s) {
        counted_.add(Collective::all_gather, int64_t(count) * counted_.ranks, int64_t(dtype_size(t)));
        run_all_gather(send, recv, count, t, s);
    }
    void reduce_scatter(const float* send, float* recv, size_t count, cudaStream_t s) {
        counted_.add(Collective::reduce_scatter, int64_t(count) * counted_.ranks, 4);
        run_reduce_scatter(send, recv, count, s);
    }
    void all_reduce(float* buf, size_t count, cudaStream_t s) {
        counted_.add(Collective::all_reduce, int64_t(count), 4);
        run_all_reduce(buf, count, s);
    }
    const Traffic& counted() const { return counted_; }  // everything since the start; a step is a difference

  protected:
    explicit Comm(int ranks) { counted_.ranks = ranks; }
    virtual void run_all_gather(const void* send, void* recv, size_t count, DType t, cudaStream_t s) = 0;
    virtual void run_reduce_scatter(const float* send, float* recv, size_t count, cudaStream_t s) = 0;
    virtual void run_all_reduce(float* buf, size_t count, cudaStream_t s) = 0;

  private:
    Traffic counted_;
    // ---- end of the counting
};

enum class Transport { automatic, nccl, mpi };
Transport parse_transport(const std::string& text, const std::string& flag);  // "nccl", "mpi" or "auto"

struct World {
    int rank = 0, size = 1;
    int local_rank = 0, local_size = 1;  // on this node
    int nodes = 1;
    bool mpi = false;                    // started by mpirun or srun
    int gpu = 0;                         // the CUDA device this rank uses
    int ranks_per_gpu = 1;               // the most ranks sharing one GPU on any node
    size_t context_bytes = 0;            // this rank's CUDA context on its GPU (measured at start)
    Comm* comm = nullptr;                // the collectives (owned; world_finalize deletes it)
    cudaStream_t comm_stream = nullptr;  // collectives run here, ordered with compute by events
};

World world_init(int* argc, char*** argv);  // MPI only: rank, size, nodes; checks the launch
// Picks the GPU, checks this build has code for it, measures the context, starts the transport and
// the comm stream (after the inputs are checked, so a bad flag never waits on the GPU). Rank 0 prints
// one line when ranks share a GPU.
void world_start_gpu(World& w, Transport requested);
void world_finalize(World& w);

// Host-side agreement (MPI; no-ops on one rank).
double world_sum(const World& w, double x);   // x added over ranks
void world_broadcast(const World& w, void* data, size_t bytes);  // rank 0's bytes to every rank
void world_barrier(const World& w);
// Every rank's `values` at rank 0, in rank order (other ranks get an empty list).
std::vector<std::vector<double>> world_gather(const World& w, const std::vector<double>& values);
// Fails on every rank, with one line from rank 0, when `text` (e.g. the options) differs between ranks.
void world_check_same(const World& w, const std::string& text, const std::string& what);
// Waits for `stream` while watching the transport for a lost peer, which ends all ranks.
void world_wait(const World& w, cudaStream_t stream);
void world_wait_event(const World& w, cudaEvent_t event);  // the same, until `event` has happened

// This rank's bytes on its GPU: every tracked allocation (device_alloc) plus its CUDA context. Right
// when ranks share a GPU, where the GPU's in-use figure counts them all.
double rank_gpu_bytes(const World& w);
double gpu_in_use_bytes();  // the whole GPU's in-use memory (every process on it)

// GPU memory over time, sampled on a thread of its own every `period_s` seconds from start() to stop():
// this rank's bytes (rank_gpu_bytes) and the whole GPU's in-use bytes (gpu_in_use_bytes, what nvidia-smi
// shows). Sampling does not depend on the step loop or its log lines.
class MemorySampler {
  public:
    struct Stats {
        double peak = 0, mean = NAN, min = NAN;  // bytes
        int64_t samples = 0;
    };
    ~MemorySampler() { stop(); }
    void start(const World& w, double period_s = 0.1);  // after world_start_gpu
    void stop();                                        // joins the thread (idempotent)
    Stats rank() const;   // this rank's bytes
    Stats gpu() const;    // the whole GPU's in-use bytes
    double last_gpu() const;  // the latest whole-GPU sample (bytes; NaN before the first)

  private:
    void sample(const World& w);
    std::thread thread_;
    mutable std::mutex lock_;
    std::condition_variable wake_;
    bool stopping_ = false;
    double rank_sum_ = 0, gpu_sum_ = 0, last_gpu_ = NAN;
    Stats rank_, gpu_;
};

// An error every rank learns of at once (options or checkpoints that differ between ranks, a diverging loss,
// a failed input check): one rank, the speaker, prints it; every rank exits with status 1.
struct CollectiveError : Error {
    explicit CollectiveError(const std::string& message, int speaker_rank = 0) : Error(message), speaker(speaker_rank) {}
    int speaker;
};

// Runs `check` (reading and checking this rank's inputs; no collectives inside) on every rank, then the
// ranks agree on the outcome, so an error ends the job once and no rank waits forever:
//   every rank passed             returns;
//   some ranks failed             throws CollectiveError on every rank; the lowest failing rank speaks
//                                 (its own message), the others exit quietly;
//   a rank has not reported       after `timeout_s` (a file that blocks when opened, a stalled file system),
//                                 the first rank to give up prints one line and ends the job (MPI_Abort).
// One rank alone: `check` runs and its error propagates. Unexpected exceptions (std::bad_alloc, ...) count
// as failures with their own message.
void world_agree(const World& w, double timeout_s, const std::function<void()>& check);
