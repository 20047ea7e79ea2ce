// support/cuda_calls.h — checked CUDA and cuBLAS calls (a failure names the call) and device allocations that are
// counted per process, so the memory report can say what this rank holds. Host code that talks to the GPU
// includes this; CUDA-free files include support/common.h only.
#pragma once
#include <mutex>
#include <string>
#include <unordered_map>

#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "support/common.h"

using bf16 = __nv_bfloat16;

// Checked library calls: a failure names the call that failed. These are programming or system
// errors (out of memory aside, which callers turn into a user error with sizes), so they end the run.
inline void check_cuda(cudaError_t status, const char* what) {
    if (status != cudaSuccess) exit_with_error(std::string(what) + ": CUDA error: " + cudaGetErrorString(status));
}
inline void check_cublas(cublasStatus_t status, const char* what) {
    if (status != CUBLAS_STATUS_SUCCESS)
        exit_with_error(std::string(what) + ": cuBLAS error: " + cublasLtGetStatusString(status));
}
// After every kernel launch: catches bad launch configurations at the launch that made them.
inline void check_launch(const char* kernel) { check_cuda(cudaGetLastError(), kernel); }

// Every device allocation of this process, by pointer, and their total: the bytes this rank holds on its
// GPU (what the memory report shows when several ranks share one GPU, where the GPU's in-use figure counts
// them all).
struct DeviceBytes {
    std::mutex lock;
    std::unordered_map<void*, size_t> sizes;
    size_t total = 0;
};
inline DeviceBytes& device_bytes() {
    static DeviceBytes d;
    return d;
}
inline size_t tracked_device_bytes() {  // any thread (the memory sampler reads it while the trainer allocates)
    std::lock_guard<std::mutex> hold(device_bytes().lock);
    return device_bytes().total;
}

// cudaMalloc that turns "out of memory" into a user error saying what needed how much, and what is free.
template <typename T>
T* device_alloc(size_t count, const char* what) {
    void* p = nullptr;
    size_t bytes = count * sizeof(T);
    if (bytes == 0) return nullptr;
    cudaError_t status = cudaMalloc(&p, bytes);
    if (status == cudaErrorMemoryAllocation) {
        cudaGetLastError();
        size_t free_bytes = 0, total = 0;
        cudaMemGetInfo(&free_bytes, &total);
        char msg[256];
        std::snprintf(msg, sizeof msg, "GPU out of memory: %s needs %.2f GiB, %.2f GiB of %.2f GiB free "
                      "(lower --micro-batch or --seq, or use a higher ZeRO stage)", what, double(bytes) / (1 << 30),
                      double(free_bytes) / (1 << 30), double(total) / (1 << 30));
        fail(msg);
    }
    check_cuda(status, what);
    DeviceBytes& d = device_bytes();
    std::lock_guard<std::mutex> hold(d.lock);
    d.sizes[p] = bytes, d.total += bytes;
    return static_cast<T*>(p);
}

// device_alloc, set to zero.
template <typename T>
T* device_zeros(size_t count, const char* what) {
    T* p = device_alloc<T>(count, what);
    if (p) check_cuda(cudaMemset(p, 0, count * sizeof(T)), what);
    return p;
}

// An event that orders streams (no timing: cheaper to record and wait on).
inline cudaEvent_t sync_event() {
    cudaEvent_t e = nullptr;
    check_cuda(cudaEventCreateWithFlags(&e, cudaEventDisableTiming), "event");
    return e;
}

// A stream at this GPU's greatest priority: where its kernels and another stream's both have blocks waiting
// for an SM, its go first (the step's compute and collectives, ahead of the optimizer's own stream).
inline cudaStream_t priority_stream(unsigned flags) {
    int least = 0, greatest = 0;
    check_cuda(cudaDeviceGetStreamPriorityRange(&least, &greatest), "cudaDeviceGetStreamPriorityRange");
    cudaStream_t s = nullptr;
    check_cuda(cudaStreamCreateWithPriority(&s, flags, greatest), "cudaStreamCreateWithPriority");
    return s;
}

// Frees what device_alloc gave (null is fine).
inline void device_free(void* p) {
    if (!p) return;
    DeviceBytes& d = device_bytes();
    {
        std::lock_guard<std::mutex> hold(d.lock);
        auto it = d.sizes.find(p);
        if (it != d.sizes.end()) d.total -= it->second, d.sizes.erase(it);
    }
    cudaFree(p);
}

// True when a CUDA device can be used (tests skip GPU cases when not).
inline bool gpu_available() {
    int count = 0;
    return cudaGetDeviceCount(&count) == cudaSuccess && count > 0;
}

