// distributed/offload.cu — the CPU optimizer of ZeRO-Offload (offload.h): the update runs on the host while
// the GPU goes on.
//
// Three streams (compute and comm, the store's; copy, this file's: gradients down, weights up) and two
// threads (main, the worker; the worker hands the element loop to the pool). Host memory: master, m and v
// of every shard, and a ring of R = kTransitSlots pinned transit buffers; shard k (unit u, in forward order)
// travels through slot k % R, and its gradient waits on the GPU until that slot is free. In step N:
//   O1. gradient_ready(k)  from reduce_grads(u) at the last micro-batch, main. For k < R (the shards the
//                        worker needs first, and the last the backward reduces): comm records grad_reduced_
//                        after u's reduction, copy waits it, copies the gradient shard down into the slot and
//                        records k.grad_copied (the slot's last round has finished: the forward waited for
//                        it, O4). The backward of the other units goes on.
//   O2. start_step()     from step(), main, after the norm and clip scale on compute as without offload:
//                        the first R shards' copies not yet queued go down too; the clip scale to the host,
//                        the one sync. After it, every reduction has landed and every kernel and collective
//                        that read the old weights has finished. Starts the worker's round and returns.
//   O3. update(k)        the worker, k = 0, 1, 2, ...: synchronizes k.grad_copied (the gradient is in its
//                        slot) and the slot's last upload (its weights buffer is free), runs AdamW on the pool
//                        (the same per-element operations as the GPU kernel, so the same bits), copies the new
//                        bf16 weights up on copy (the tensors' elements; gaps keep their zeros), records
//                        k.uploaded, then queues the copy down of shard k + R's gradient into the same slot,
//                        whose gradient the host has just read, and marks k done for step N. That copy runs
//                        while shard k + 1 is updated.
//   O4. before_read(k)   from the store's await_update(u), main, the first time u's weights are read after
//                        step N (its gather, or its all-gather into a slot): waits (host) until k is marked
//                        done, since a stream waiting on an event not yet recorded would not wait at all; then
//                        the store's comm stream waits k.uploaded. A stage-3 shard is all-gathered there into
//                        its slot as usual (handed out in place on one rank: compute waits k.uploaded); a
//                        replicated unit (stages 1, 2) all-gathers everyone's new part there and compute
//                        waits for it. Units that do not train never wait. The stage-3 prefetch skips a unit
//                        still pending(k) instead of holding the host, which goes on to queue the current
//                        unit's compute; gather() then waits for it. Either way each rank all-gathers the
//                        units in the same order, so the collectives still match across ranks.
//   O5. before_zeroing(k) in step N+1, from the store, before it zeroes u's gradient for that step (when the
//                        backward first needs it): compute waits k.grad_copied (its copy down was queued by
//                        O1, O2 or the worker's update of shard k - R, all before k was marked done).
//   O6. finish()         waits for the whole round: step() and everything that reads or writes master, m,
//                        v or the transit buffers from the host (checkpoints, lora_layers, unit_weights, ...).
// A failure in the worker is rethrown by the next wait in O1, O4, O5 or O6 (threads.h), never a hang; and those
// waits poll under the watchdog (wait_for_worker), so a worker stuck behind a collective that never ends (its
// copies wait for the comm stream) ends the job after --comm-timeout, naming that collective.
#include "distributed/offload.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>

#include "support/cuda_calls.h"

// What the worker needs of one trainable shard.
struct CpuOptimizer::HostShard {
    int unit = -1;
    int64_t n = 0;                                        // elements (may be 0)
    float *master = nullptr, *m = nullptr, *v = nullptr;  // [n] host memory: the optimizer's state
    const float* device_grad = nullptr;  // [n] the store's reduced gradient shard (GPU)
    bf16* device_weights = nullptr;      // [n] the store's bf16 weights of these elements (GPU)
    std::vector<UpdateRun> runs;         // the tensors' elements: gaps between tensors are never touched
    cudaEvent_t grad_copied = nullptr;   // recorded on copy after the gradient's copy down into its slot
    cudaEvent_t uploaded = nullptr;      // recorded on copy after the weights' copy up (worker thread)
    int64_t copied_for = 0;              // the CPU step whose gradient copy is queued
    int64_t awaited = 0;                 // the CPU step whose upload the GPU streams already wait for
};

namespace {

template <typename T>
T* host_alloc(size_t n, bool pinned) {
    void* p = nullptr;
    if (pinned) check_cuda(cudaMallocHost(&p, std::max<size_t>(1, n) * sizeof(T)), "cudaMallocHost (offloaded optimizer state)");
    else p = std::malloc(std::max<size_t>(1, n) * sizeof(T));
    if (!p) fail("out of host memory for the offloaded optimizer state");
    return static_cast<T*>(p);
}

// check_cuda for the worker thread: throws (the main thread reports it at its next wait) instead of ending
// the process from a second thread.
void cuda_or_throw(cudaError_t status, const std::string& what) {
    if (status != cudaSuccess) fail(what + ": CUDA error: " + cudaGetErrorString(status));
}

}  // namespace

double offload_host_bytes(const std::vector<int64_t>& shards) {
    double state = 0;
    int64_t largest = 0;
    for (int64_t n : shards) state += double(std::max<int64_t>(1, n)) * 12, largest = std::max(largest, n);
    return state + double(kTransitSlots) * double(std::max<int64_t>(1, largest)) * 6;  // fp32 gradient down, bf16 weights up
}

// ------------------------------------------------------------------------------------------ made once
// The state, the transit ring, events and threads, made once and reused every step.

CpuOptimizer::CpuOptimizer(const World& w, int threads, bool pin_memory, cudaStream_t compute, cudaStream_t comm)
    : w_(w), pinned_(pin_memory), threads_(threads), compute_(compute), comm_(comm) {
    check_cuda(cudaStreamCreateWithFlags(&copy_, cudaStreamNonBlocking), "cudaStreamCreate");
    grad_reduced_ = sync_event();
    check_cuda(cudaMallocHost(&clip_scale_, sizeof(float)), "cudaMallocHost");
}

CpuOptimizer::~CpuOptimizer() {
    worker_.reset();  // stops after the shard it is updating; nothing below is touched by it after this
    pool_.reset();
    cudaStreamSynchronize(copy_), cudaStreamDestroy(copy_);
    for (HostShard& h : shards_) {
        for (float* p : {h.master, h.m, h.v}) pinned_ ? (void)cudaFreeHost(p) : std::free(p);
        cudaEventDestroy(h.grad_copied), cudaEventDestroy(h.uploaded);
    }
    for (Slot& s : ring_) cudaFreeHost(s.grad), cudaFreeHost(s.weights);
    cudaEventDestroy(grad_reduced_), cudaFreeHost(clip_scale_);
}

int CpuOptimizer::add(int unit, int64_t n, const std::vector<UpdateRun>& runs, const float* grad, bf16* weights) {
    HostShard h;
    h.unit = unit, h.n = n, h.runs = runs, h.device_grad = grad, h.device_weights = weights;
    size_t size = size_t(std::max<int64_t>(1, n));
    h.master = host_alloc<float>(size, pinned_), h.m = host_alloc<float>(size, pinned_), h.v = host_alloc<float>(size, pinned_);
    h.grad_copied = sync_event();
    h.uploaded = sync_event();
    shards_.push_back(h);
    return int(shards_.size()) - 1;
}

CpuOptimizer::HostState CpuOptimizer::state(int k) const {
    const HostShard& h = shards_[size_t(k)];
    return {h.master, h.m, h.v};
}

double CpuOptimizer::host_bytes() const {
    std::vector<int64_t> sizes;
    for (const HostShard& h : shards_) sizes.push_back(h.n);
    return offload_host_bytes(sizes);
}

void CpuOptimizer::start() {
    // By default the CPUs this rank may use (its affinity, shared with the ranks bound to the same CPUs), less
    // the main thread and the worker: the update of each shard must keep pace with the next forward.
    pool_ = std::make_unique<ThreadPool>(threads_ > 0 ? threads_ : offload_pool_threads(w_.cpus));
    for (const HostShard& h : shards_) capacity_ = std::max(capacity_, h.n);
    ring_.resize(kTransitSlots);
    for (Slot& s : ring_) s.grad = host_alloc<float>(size_t(std::max<int64_t>(1, capacity_)), true), s.weights = host_alloc<bf16>(size_t(std::max<int64_t>(1, capacity_)), true);
    // master, m, v start at zero, written by the pool a block at a time (tens of GB for a 7B)
    constexpr int64_t kBlock = 1 << 24;
    std::vector<std::pair<float*, int64_t>> blocks;
    for (const HostShard& h : shards_)
        for (float* p : {h.master, h.m, h.v})
            for (int64_t at = 0; at < std::max<int64_t>(1, h.n); at += kBlock) blocks.push_back({p + at, std::min(kBlock, std::max<int64_t>(1, h.n) - at)});
    pool_->run(int(blocks.size()), [&](int i) { std::memset(blocks[size_t(i)].first, 0, size_t(blocks[size_t(i)].second) * 4); });
    worker_ = std::make_unique<InOrderWorker>(int(shards_.size()), [this](int k) { update(k); });
}

// ------------------------------------------------------------------------------------------ each step

void CpuOptimizer::copy_down(int k, int64_t step) {
    HostShard& h = shards_[size_t(k)];
    if (h.n > 0) cuda_or_throw(cudaMemcpyAsync(slot_of(k).grad, h.device_grad, size_t(h.n) * 4, cudaMemcpyDeviceToHost, copy_), "copy grads");
    cuda_or_throw(cudaEventRecord(h.grad_copied, copy_), "event");
    h.copied_for = step;
}

// O1: the first R shards' finished gradients to their transit buffers, on the copy stream.
void CpuOptimizer::gradient_ready(int k) {
    if (k >= kTransitSlots) return;  // it waits on the GPU for its slot (O3)
    wait_for_worker(-1);             // the slot's last round is over (long since: the forward waited for it)
    check_cuda(cudaEventRecord(grad_reduced_, comm_), "event");
    check_cuda(cudaStreamWaitEvent(copy_, grad_reduced_, 0), "wait");
    copy_down(k, steps_ + 1);  // for the step about to start
}

// O2, after the clip scale is computed on the GPU.
void CpuOptimizer::start_step(const AdamWConfig& c, float lr, int step, const float* clip_scale) {
    for (int k = 0; k < std::min<int>(kTransitSlots, int(shards_.size())); ++k)  // a unit whose reduce_grads did not run at the last micro-batch
        if (shards_[size_t(k)].copied_for <= steps_) gradient_ready(k);
    check_cuda(cudaMemcpyAsync(clip_scale_, clip_scale, 4, cudaMemcpyDeviceToHost, compute_), "copy");
    world_wait(w_, compute_);
    step_.c = c, step_.lr = lr, step_.grad_scale = clip_scale_[0], step_.step = step;
    ++steps_;
    worker_->start();
}

// O3, in the worker thread: one shard's AdamW on the host, its new bf16 weights up, the gradient of the
// shard R ahead down into the slot.
void CpuOptimizer::update(int k) {
    HostShard& h = shards_[size_t(k)];
    Slot& s = slot_of(k);
    const Step& j = step_;
    std::string where = "unit " + std::to_string(h.unit) + ": ";
    cuda_or_throw(cudaSetDevice(w_.gpu), where + "cudaSetDevice");  // the device is per thread
    // These waits block this thread only: the main thread's wait for this task is the bounded one (O1, O4, O6).
    cuda_or_throw(cudaEventSynchronize(h.grad_copied), where + "the gradient's copy to the host");
    if (s.last >= 0) cuda_or_throw(cudaEventSynchronize(shards_[size_t(s.last)].uploaded), where + "the last copy of a transit buffer to the GPU");
    for (const UpdateRun& r : h.runs)
        adamw_step_cpu(h.master + r.offset, s.grad + r.offset, h.m + r.offset, h.v + r.offset, s.weights + r.offset, r.count, j.c, j.lr,
                       r.decays ? j.c.weight_decay : 0.0f, j.step, j.grad_scale, *pool_);
    for (const UpdateRun& r : h.runs)
        cuda_or_throw(cudaMemcpyAsync(h.device_weights + r.offset, s.weights + r.offset, size_t(r.count) * 2, cudaMemcpyHostToDevice, copy_),
                      where + "copy weights");
    cuda_or_throw(cudaEventRecord(h.uploaded, copy_), where + "event");
    s.last = k;
    if (k + kTransitSlots < int(shards_.size())) copy_down(k + kTransitSlots, steps_);
}

// O4: before the shard's weights are read on the GPU; once per step and shard.
cudaEvent_t CpuOptimizer::before_read(int k) {
    HostShard& h = shards_[size_t(k)];
    if (h.awaited == steps_) return nullptr;
    wait_for_worker(k);
    h.awaited = steps_;
    return h.uploaded;
}

bool CpuOptimizer::pending(int k) {
    const HostShard& h = shards_[size_t(k)];
    return h.awaited != steps_ && !worker_->done(k);
}

// O5
void CpuOptimizer::before_zeroing(int k) {
    HostShard& h = shards_[size_t(k)];
    wait_for_worker(k);             // its copy down has been queued (by O1, O2 or the update of shard k - R)
    if (h.copied_for == 0) return;  // no copy down was ever queued
    check_cuda(cudaStreamWaitEvent(compute_, h.grad_copied, 0), "wait");
}

// O6
void CpuOptimizer::finish() { wait_for_worker(-1); }

void CpuOptimizer::wait_for_worker(int k) {
    auto over = [&] { return k >= 0 ? worker_->done(k) || worker_->finished() : worker_->finished(); };
    if (!over())
        world_poll(w_, k >= 0 ? "the CPU optimizer's update of unit " + std::to_string(shards_[size_t(k)].unit) : "the CPU optimizer's update",
                   over);
    if (k >= 0) worker_->wait(k);
    else worker_->finish();
}

// ------------------------------------------------------------------------------------------ between steps

void CpuOptimizer::upload_master(int k) {
    HostShard& h = shards_[size_t(k)];
    if (h.n > 0) {
        Slot& s = ring_[0];  // between steps every slot is free once its last upload is done
        if (s.last >= 0) world_wait_event(w_, shards_[size_t(s.last)].uploaded);
        uint16_t* bits16 = reinterpret_cast<uint16_t*>(s.weights);
        for (int64_t i = 0; i < h.n; ++i) bits16[i] = float_to_bf16(h.master[i]);
        check_cuda(cudaMemcpyAsync(h.device_weights, s.weights, size_t(h.n) * 2, cudaMemcpyHostToDevice, compute_), "copy weights");
        world_wait(w_, compute_);  // s.weights is written again by the next update
    }
    h.awaited = steps_;  // these weights are newer than the last upload
}
