// distributed/offload.cu — the CPU optimizer of ZeRO-Offload (offload.h): the update runs on the host while
// the GPU goes on.
//
// Three streams (compute and comm, the store's; copy, this file's: gradients down, weights up) and two
// threads (main, the worker; the worker hands the element loop to the pool). For each trainable shard k
// (unit u, in forward order), in step N:
//   O1. gradient_ready(k)  from reduce_grads(u) at the last micro-batch, main: waits (host) until the worker
//                        is done with k's update of step N-1, so k's pinned gradient buffer is free
//                        (normally long since); comm records grad_reduced_ after u's reduction, copy waits
//                        it, copies the gradient shard down and records k.grad_copied. The backward of the
//                        other units goes on.
//   O2. start_step()     from step(), main, after the norm and clip scale on compute as without offload:
//                        the clip scale to the host, the one sync. After it, every reduction has landed and
//                        every kernel and collective that read the old weights has finished. Starts the
//                        worker's round and returns.
//   O3. update(k)        the worker, k = 0, 1, 2, ...: synchronizes k.grad_copied (the gradient is on the
//                        host) and k.uploaded (the last upload has left k's pinned weights), runs AdamW on the
//                        pool (the same per-element operations as the GPU kernel, so the same bits), copies
//                        the new bf16 weights up on copy (the tensors' elements; gaps keep their zeros),
//                        records k.uploaded, then marks k done for step N.
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
//   O5. before_zeroing() from begin_step(): compute waits every k.grad_copied before zeroing the gradients.
//   O6. finish()         waits for the whole round: step() and everything that reads or writes master, m,
//                        v or the pinned buffers from the host (checkpoints, lora_layers, unit_weights, ...).
// A failure in the worker is rethrown by the next wait in O1, O4 or O6 (threads.h), never a hang; and those
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
    float* grad = nullptr;               // [n] pinned: the gradient shard, copied down during the backward
    bf16* weights = nullptr;             // [n] pinned: the updated bf16 weights, on their way up
    const float* device_grad = nullptr;  // [n] the store's reduced gradient shard (GPU)
    bf16* device_weights = nullptr;      // [n] the store's bf16 weights of these elements (GPU)
    std::vector<UpdateRun> runs;         // the tensors' elements: gaps between tensors are never touched
    cudaEvent_t grad_copied = nullptr;   // recorded on copy after the gradient's copy down (main thread)
    cudaEvent_t uploaded = nullptr;      // recorded on copy after the weights' copy up (worker thread)
    int64_t copied_for = 0;              // the CPU step whose gradient copy is queued
    int64_t awaited = 0;                 // the CPU step whose upload the GPU streams already wait for
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

// check_cuda for the worker thread: throws (the main thread reports it at its next wait) instead of ending
// the process from a second thread.
void cuda_or_throw(cudaError_t status, const std::string& what) {
    if (status != cudaSuccess) fail(what + ": CUDA error: " + cudaGetErrorString(status));
}

}  // namespace

// ------------------------------------------------------------------------------------------ made once
// Pinned buffers, events and threads for every trainable shard, made once and reused every step.

CpuOptimizer::CpuOptimizer(const World& w, int threads, bool pin_memory, cudaStream_t compute, cudaStream_t comm)
    : w_(w), pinned_(pin_memory), threads_(threads), compute_(compute), comm_(comm) {
    check_cuda(cudaStreamCreateWithFlags(&copy_, cudaStreamNonBlocking), "cudaStreamCreate");
    check_cuda(cudaEventCreateWithFlags(&grad_reduced_, cudaEventDisableTiming), "event");
    check_cuda(cudaMallocHost(&clip_scale_, sizeof(float)), "cudaMallocHost");
}

CpuOptimizer::~CpuOptimizer() {
    worker_.reset();  // stops after the shard it is updating; nothing below is touched by it after this
    pool_.reset();
    cudaStreamSynchronize(copy_), cudaStreamDestroy(copy_);
    for (HostShard& h : shards_) {
        for (float* p : {h.master, h.m, h.v}) pinned_ ? (void)cudaFreeHost(p) : std::free(p);
        cudaFreeHost(h.grad), cudaFreeHost(h.weights), cudaEventDestroy(h.grad_copied), cudaEventDestroy(h.uploaded);
    }
    cudaEventDestroy(grad_reduced_), cudaFreeHost(clip_scale_);
}

int CpuOptimizer::add(int unit, int64_t n, const std::vector<UpdateRun>& runs, const float* grad, bf16* weights) {
    HostShard h;
    h.unit = unit, h.n = n, h.runs = runs, h.device_grad = grad, h.device_weights = weights;
    size_t size = size_t(std::max<int64_t>(1, n));
    h.master = host_alloc<float>(size, pinned_), h.m = host_alloc<float>(size, pinned_), h.v = host_alloc<float>(size, pinned_);
    std::memset(h.master, 0, size * 4), std::memset(h.m, 0, size * 4), std::memset(h.v, 0, size * 4);
    h.grad = host_alloc<float>(size, true), h.weights = host_alloc<bf16>(size, true);
    host_bytes_ += double(size) * 18;  // master, m, v (12), the gradient (4) and the weights (2) in transit
    check_cuda(cudaEventCreateWithFlags(&h.grad_copied, cudaEventDisableTiming), "event");
    check_cuda(cudaEventCreateWithFlags(&h.uploaded, cudaEventDisableTiming), "event");
    shards_.push_back(h);
    return int(shards_.size()) - 1;
}

CpuOptimizer::HostState CpuOptimizer::state(int k) const {
    const HostShard& h = shards_[size_t(k)];
    return {h.master, h.m, h.v};
}

void CpuOptimizer::start() {
    // By default the CPUs this rank may use (its affinity, shared with the ranks bound to the same CPUs), less
    // the main thread and the worker: the update of each shard must keep pace with the next forward.
    pool_ = std::make_unique<ThreadPool>(threads_ > 0 ? threads_ : offload_pool_threads(w_.cpus));
    worker_ = std::make_unique<InOrderWorker>(int(shards_.size()), [this](int k) { update(k); });
}

// ------------------------------------------------------------------------------------------ each step

// O1: the shard's finished gradient to its pinned host buffer, on the copy stream.
void CpuOptimizer::gradient_ready(int k) {
    HostShard& h = shards_[size_t(k)];
    wait_for_worker(k);
    check_cuda(cudaEventRecord(grad_reduced_, comm_), "event");
    check_cuda(cudaStreamWaitEvent(copy_, grad_reduced_, 0), "wait");
    if (h.n > 0) check_cuda(cudaMemcpyAsync(h.grad, h.device_grad, size_t(h.n) * 4, cudaMemcpyDeviceToHost, copy_), "copy grads");
    check_cuda(cudaEventRecord(h.grad_copied, copy_), "event");
    h.copied_for = steps_ + 1;
}

// O2, after the clip scale is computed on the GPU.
void CpuOptimizer::start_step(const AdamWConfig& c, float lr, int step, const float* clip_scale) {
    for (int k = 0; k < int(shards_.size()); ++k)  // a unit whose reduce_grads did not run at the last micro-batch
        if (shards_[size_t(k)].copied_for <= steps_) gradient_ready(k);
    check_cuda(cudaMemcpyAsync(clip_scale_, clip_scale, 4, cudaMemcpyDeviceToHost, compute_), "copy");
    world_wait(w_, compute_);
    step_.c = c, step_.lr = lr, step_.grad_scale = clip_scale_[0], step_.step = step;
    ++steps_;
    worker_->start();
}

// O3, in the worker thread: one shard's AdamW on the host, its new bf16 weights up.
void CpuOptimizer::update(int k) {
    HostShard& h = shards_[size_t(k)];
    const Step& j = step_;
    std::string where = "unit " + std::to_string(h.unit) + ": ";
    cuda_or_throw(cudaSetDevice(w_.gpu), where + "cudaSetDevice");  // the device is per thread
    // These waits block this thread only: the main thread's wait for this task is the bounded one (O1, O4, O6).
    cuda_or_throw(cudaEventSynchronize(h.grad_copied), where + "the gradient's copy to the host");
    cuda_or_throw(cudaEventSynchronize(h.uploaded), where + "the last copy of the weights to the GPU");
    for (const UpdateRun& r : h.runs)
        adamw_step_cpu(h.master + r.offset, h.grad + r.offset, h.m + r.offset, h.v + r.offset, h.weights + r.offset, r.count, j.c, j.lr,
                       r.decays ? j.c.weight_decay : 0.0f, j.step, j.grad_scale, *pool_);
    for (const UpdateRun& r : h.runs)
        cuda_or_throw(cudaMemcpyAsync(h.device_weights + r.offset, h.weights + r.offset, size_t(r.count) * 2, cudaMemcpyHostToDevice, copy_),
                      where + "copy weights");
    cuda_or_throw(cudaEventRecord(h.uploaded, copy_), where + "event");
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
void CpuOptimizer::before_zeroing() {
    for (HostShard& h : shards_) check_cuda(cudaStreamWaitEvent(compute_, h.grad_copied, 0), "wait");
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
        world_wait_event(w_, h.uploaded);  // the worker's last upload has left h.weights
        for (int64_t i = 0; i < h.n; ++i) h.weights[i] = __float2bfloat16(h.master[i]);
        check_cuda(cudaMemcpyAsync(h.device_weights, h.weights, size_t(h.n) * 2, cudaMemcpyHostToDevice, compute_), "copy weights");
        world_wait(w_, compute_);  // h.weights is written again by the next update
    }
    h.awaited = steps_;  // these weights are newer than the last upload
}
