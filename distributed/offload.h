// distributed/offload.h — ZeRO-Offload (Ren et al. 2021): the optimizer's state and its AdamW step on the
// CPU, overlapped with the GPU. Owns the fp32 master weights and moments of every trainable shard (host
// memory: 12 bytes per element), a ring of kTransitSlots pinned transit buffers the gradients come down and
// the new bf16 weights go up through (each as large as the largest shard: 6 bytes per element of it), the
// copy stream, the events, and the threads (a worker that updates the shards in forward order, a pool for
// its element loop). A shard's gradient stays on the GPU until its slot is free; the store zeroes it for
// the next step only after it has come down (O5). The ZeRO store (zero3.cu) drives it at these points of a
// step (distributed/offload.cu has the timeline):
//   O1 gradient_ready(k)   during the backward: shard k's gradient is reduced; the first kTransitSlots
//                          shards in forward order (the last reduced, the first updated) come down at once
//   O2 start_step(...)     in step(): the clip scale to the host (the one sync), the worker's round starts
//   O3 (the worker)        shard after shard: AdamW on the host, the new bf16 weights up to the GPU, and the
//                          gradient of the shard kTransitSlots ahead down into the slot just used
//   O4 before_read(k)      in the next forward, before shard k's weights are read: wait for its update
//   O5 before_zeroing(k)   before shard k's gradient is zeroed: its copy down has read it
//   O6 finish()            the whole update has finished (before the host reads or writes the state)
// The update is the same bits as the GPU's (adamw.h).
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "adamw.h"
#include "distributed/threads.h"
#include "distributed/world.h"

// Transit buffers: enough that a shard's gradient comes down while the one before it is updated.
constexpr int kTransitSlots = 2;
// Host bytes for shards of these sizes (elements): master, m, v (12 bytes each element) and the ring.
double offload_host_bytes(const std::vector<int64_t>& shards);

class CpuOptimizer {
  public:
    // compute, comm: the streams the store computes and communicates on. threads: the pool's size (0: the
    // CPUs this rank may use, World::cpus, less two: offload_pool_threads). pin_memory: master, m and v in
    // pinned memory.
    CpuOptimizer(const World& w, int threads, bool pin_memory, cudaStream_t compute, cudaStream_t comm);
    ~CpuOptimizer();  // the update in flight completes; the rest of its round is dropped
    CpuOptimizer(const CpuOptimizer&) = delete;
    CpuOptimizer& operator=(const CpuOptimizer&) = delete;

    // Before start(), in forward order: the shard of n elements a unit trains on this rank (n may be 0:
    // every rank still takes part). grad: its device gradient [n], read at O1 or O3; weights: its device
    // bf16 weights [n], written at O3; runs: its tensors' elements by weight decay (gaps are never touched).
    // Allocates its master, m and v (zeroed in start()); returns its index k.
    int add(int unit, int64_t n, const std::vector<UpdateRun>& runs, const float* grad, bf16* weights);
    struct HostState {
        float *master, *m, *v;  // [n] each, host memory
    };
    HostState state(int k) const;
    double host_bytes() const;  // master, m, v and the transit ring: offload_host_bytes of the shards
    void start();  // after the last add(): the transit ring, the worker and the pool; zeroes the state

    void gradient_ready(int k);                                                       // O1
    void start_step(const AdamWConfig& c, float lr, int step, const float* clip_scale);  // O2 (a device scalar)
    // O4: waits (host) until shard k's update has run, and returns the event its upload records, for the
    // streams that read the weights to wait on; nullptr when this step's weights were already awaited.
    cudaEvent_t before_read(int k);
    bool pending(int k);        // O4 would wait: shard k's update has not run yet (never waits itself)
    void before_zeroing(int k); // O5: compute waits for shard k's gradient's copy down
    void finish();              // O6
    // The weights after the host wrote master (a checkpoint, an adapter): bf16(master) up on the compute
    // stream; they are newer than the last update's, so O4 has nothing to wait for until the next step.
    void upload_master(int k);

  private:
    struct HostShard;
    struct Slot {                       // one transit buffer
        float* grad = nullptr;          // [capacity] pinned: a shard's gradient, down from the GPU
        bf16* weights = nullptr;        // [capacity] pinned: its new bf16 weights, on their way up
        int last = -1;                  // the shard whose weights it last sent up
    };
    void update(int k);         // O3, in the worker thread
    void copy_down(int k, int64_t step);  // shard k's gradient into its slot for CPU step `step`, on the copy stream
    Slot& slot_of(int k) { return ring_[size_t(k % kTransitSlots)]; }
    // The main thread's wait for the worker (shard k's update; -1: the whole round), polled so that the
    // watchdog bounds it (world.h: world_poll); rethrows the worker's failure.
    void wait_for_worker(int k);

    World w_;
    bool pinned_;
    int threads_;
    cudaStream_t compute_, comm_;
    cudaStream_t copy_ = nullptr;         // gradients down, weights up
    cudaEvent_t grad_reduced_ = nullptr;  // the copy stream waits here for a shard's reduction
    float* clip_scale_ = nullptr;         // [1] pinned: the step's clip scale, on the host
    std::vector<HostShard> shards_;       // in forward order: the order the worker updates them
    std::vector<Slot> ring_;              // [kTransitSlots]: shard k travels through slot k % kTransitSlots
    int64_t capacity_ = 0;                // elements of each slot: the largest shard
    int64_t steps_ = 0;                   // CPU updates started
    struct Step {                         // the update's arguments, set before the worker's round starts
        AdamWConfig c;
        float lr = 0, grad_scale = 1;
        int step = 0;
    } step_;
    std::unique_ptr<ThreadPool> pool_;       // the element loop
    std::unique_ptr<InOrderWorker> worker_;  // one task per shard, one round per step
};
