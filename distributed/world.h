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
// The transport is watched (the watchdog, below): every collective issued is numbered and marked on its
// stream, so a wait that outlasts --comm-timeout can name the collective that never completed.
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
    // Stops the transport for good before the job ends on an error (NCCL: ncclCommAbort, so kernels waiting
    // for a peer stop spinning); nothing to do for MPI.
    virtual void abort() {}

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
    // A wrapper (the watchdog's WatchedComm) hands a collective it has counted to the transport it wraps,
    // uncounted there: the run's counts are the wrapper's alone.
    static void hand_all_gather(Comm* to, const void* send, void* recv, size_t count, DType t, cudaStream_t s) {
        to->run_all_gather(send, recv, count, t, s);
    }
    static void hand_reduce_scatter(Comm* to, const float* send, float* recv, size_t count, cudaStream_t s) {
        to->run_reduce_scatter(send, recv, count, s);
    }
    static void hand_all_reduce(Comm* to, float* buf, size_t count, cudaStream_t s) { to->run_all_reduce(buf, count, s); }

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
    Comm* comm = nullptr;                // the collectives (owned; world_finalize deletes it), watched
    cudaStream_t comm_stream = nullptr;  // collectives run here, ordered with compute by events
    // Host threads: the CPUs this rank may use (its affinity mask: mpirun --bind-to, SLURM --cpus-per-task,
    // taskset), shared evenly with the ranks of this node bound to the same CPUs (all of them when unbound).
    int cpus = 1;
    int node_cpus = 1;                   // this node's hardware threads over its ranks: each one's share unbound
    const char* launcher = "";           // "openmpi", "slurm", "mpich" or "" (alone): which option to name
};

// Checked MPI calls: a failure names the call and ends every rank; a non-blocking call's request polled until
// it completes, bounded like every wait (the watchdog).
void check_mpi(int status, const char* what);
void mpi_wait(const World& w, MPI_Request& request, const std::string& what);

World world_init(int* argc, char*** argv);  // MPI only: rank, size, nodes, CPUs; checks the launch
// Picks the GPU, checks this build has code for it, measures the context, starts the transport and
// the comm stream (after the inputs are checked, so a bad flag never waits on the GPU). Rank 0 prints
// one line when ranks share a GPU.
void world_start_gpu(World& w, Transport requested);
void world_finalize(World& w);

// Host-side agreement (MPI; no-ops on one rank). Each waits like every wait here: bounded (the watchdog).
double world_sum(const World& w, double x);   // x added over ranks
void world_broadcast(const World& w, void* data, size_t bytes);  // rank 0's bytes to every rank
void world_barrier(const World& w);
// Every rank's `values` at rank 0, in rank order (other ranks get an empty list).
std::vector<std::vector<double>> world_gather(const World& w, const std::vector<double>& values);
// Fails on every rank (CollectiveError, one line from rank 0) when `text` (the options, a file's contents, a
// dataset) differs between ranks, naming `what` and the ranks that differ from rank 0; `detail` (this rank's
// summary of it: "600 rows, 25,300 tokens") is shown for rank 0 and each of those.
void world_check_same(const World& w, const std::string& text, const std::string& what, const std::string& detail = "");
void world_check_same_hash(const World& w, uint64_t hash, const std::string& what, const std::string& detail = "");  // of a hash
// Waits for `stream` (or until `event` has happened) while watching the transport for a lost peer, which
// ends all ranks, and for the deadline (the watchdog).
void world_wait(const World& w, cudaStream_t stream);
void world_wait_event(const World& w, cudaEvent_t event);

// This rank's bytes on its GPU: every tracked allocation (device_alloc), its CUDA context, and what the
// transport and libraries allocate themselves (untracked_gpu_bytes). Right when ranks share a GPU, where the
// GPU's in-use figure counts them all.
double rank_gpu_bytes(const World& w);
double gpu_in_use_bytes();  // the whole GPU's in-use memory (every process on it)
// NCCL's buffers (made when the communicator starts and, lazily, at the first collectives) and the CUDA
// libraries' own allocations, which device_alloc does not see: the GPU's in-use change less this rank's
// counted change from just after its context was made (world_start_gpu begins the measure) to the end of
// the first step (untracked_measure_end: true when it ended the measure). Only with one rank per GPU (the
// GPU's figure would count the other ranks' allocations too); 0 otherwise.
bool untracked_measure_end(const World& w);
double untracked_gpu_bytes();

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

// ------------------------------------------------------------------------------------------ the watchdog
// No wait is unbounded. Every wait on the GPU or on the other ranks polls: world_wait and world_wait_event
// (the GPU), the MPI transport's and the host collectives' MPI requests (MPI_Test), the CPU optimizer's waits
// for its worker (world_poll). While it polls it checks that no peer has failed (NCCL's asynchronous error)
// and that it has not waited longer than the timeout (--comm-timeout, a config's comms_timeout; 600 s by
// default). On expiry the rank says what it waited for and the oldest collective it issued that has not
// completed (kind, count, unit, step), aborts the transport (ncclCommAbort: NCCL's kernels stop spinning) and
// ends the job (MPI_Abort). Ranks give up half a second apart, so the lowest waiting rank's line comes first.
void world_set_timeout(double seconds);
double world_timeout();
// The watched transport (distributed/watchdog.cu): `transport`, owned from here on, with every collective
// counted, numbered and marked on its stream. world_start_gpu wraps its transport with it.
Comm* watch_transport(Comm* transport, int ranks);
// What this rank is doing, for that message: the step the trainer queues, and the unit ZeRO moves.
void world_at_step(int64_t step);
void world_at_unit(int unit, const char* what);  // e.g. (3, "gathered for the forward"); -1: no unit
// Polls `ready` until it is true, checking peers and the deadline; `what` names the wait ("the CPU
// optimizer's update of unit 3").
void world_poll(const World& w, const std::string& what, const std::function<bool()>& ready);
// Keeps the host at most a few calls ahead of `stream` (ZeRO calls it for every unit it hands out): a marker
// on the stream at each call, and a polled wait for the one made 4 calls before. A collective that
// never completes then leaves the host in a bounded wait, not in a kernel launch that blocks because the
// GPU's queue of launches is full (about a thousand).
void world_pace(const World& w, cudaStream_t stream);
// Ends the job now, without unwinding (the GPU may be stuck): `speak` prints `error: message`; the transport
// is aborted; then MPI_Abort (a rank that does not speak first gives the one that does a moment).
[[noreturn]] void world_end_job(const World& w, const std::string& message, bool speak);

// The collective sequence (--check-collectives, and always in the tests). Every rank must issue the same
// collectives in the same order, and NCCL checks neither kind nor count: a rank that departs hangs the job
// or sums the wrong bytes. With tracking on, each collective (kind, count, dtype) is folded into a hash, and
// world_check_collectives (collective: every rank calls it, e.g. at the end of each step) compares the
// ranks' hashes since the last check; a difference ends the job with one line naming `when` and the first
// collective where a rank departs from rank 0.
void world_track_collectives(bool on);
void world_check_collectives(const World& w, const std::string& when);
// Folds one collective into the sequence (the watched transport calls it for every collective).
void world_note_collective(const char* kind, size_t count, DType type);
