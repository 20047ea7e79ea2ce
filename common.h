// common.h — what every file shares: the user-error type and fail(), checked calls for CUDA, cuBLAS,
// NCCL and MPI, device allocations that are counted, bf16 helpers, a hash and timers. Knows nothing of
// the model, the data or ZeRO.
//
// Error policy: a mistake a user can make (a bad flag, a missing file, a malformed row) is reported with
// fail("what (where)"), which throws Error; main() prints it as one line `error: ...` and exits non-zero
// (on every rank, through MPI_Abort, when several run). Tests catch Error to check each bad input.
#pragma once
#include <sys/stat.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <mutex>
#include <string>
#include <unordered_map>

#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <mpi.h>
#include <nccl.h>

struct Error : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// A user-facing error: one line saying what is wrong and where (file, field or flag).
[[noreturn]] inline void fail(const std::string& message) { throw Error(message); }

// Prints `error: message` and ends the process; when MPI runs several ranks, ends all of them.
[[noreturn]] inline void exit_with_error(const std::string& message) {
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

// Checked library calls: a failure names the call that failed. These are programming or system
// errors (out of memory aside, which callers turn into a user error with sizes), so they end the run.
inline void check_cuda(cudaError_t status, const char* what) {
    if (status != cudaSuccess) exit_with_error(std::string(what) + ": CUDA error: " + cudaGetErrorString(status));
}
inline void check_cublas(cublasStatus_t status, const char* what) {
    if (status != CUBLAS_STATUS_SUCCESS)
        exit_with_error(std::string(what) + ": cuBLAS error: " + cublasLtGetStatusString(status));
}
inline void check_nccl(ncclResult_t status, const char* what) {
    if (status != ncclSuccess) exit_with_error(std::string(what) + ": NCCL error: " + ncclGetErrorString(status));
}
inline void check_mpi(int status, const char* what) {
    if (status != MPI_SUCCESS) {
        char text[MPI_MAX_ERROR_STRING];
        int length = 0;
        MPI_Error_string(status, text, &length);
        exit_with_error(std::string(what) + ": MPI error: " + std::string(text, length));
    }
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
inline size_t tracked_device_bytes() { return device_bytes().total; }

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

// bf16 <-> fp32 on the host, round-to-nearest-even like the GPU's conversion.
inline float bf16_to_float(uint16_t bits) {
    uint32_t u = uint32_t(bits) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
inline uint16_t float_to_bf16(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);  // NaN stays NaN
    u += 0x7fffu + ((u >> 16) & 1u);
    return uint16_t(u >> 16);
}

// FNV-1a, 64 bits: a hash of bytes (plan caches, comparing ranks' options, seeding by name).
inline uint64_t fnv1a(const void* data, size_t n, uint64_t h = 1469598103934665603ull) {
    const unsigned char* p = static_cast<const unsigned char*>(data);
    for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 1099511628211ull;
    return h;
}
inline uint64_t fnv1a(const std::string& s, uint64_t h = 1469598103934665603ull) { return fnv1a(s.data(), s.size(), h); }

// Whether a file or directory exists.
inline bool exists(const std::string& path) {
    struct stat st;
    return stat(path.c_str(), &st) == 0;
}

// 1234567 -> "1,234,567"
inline std::string thousands(int64_t n) {
    std::string s = std::to_string(n);
    for (int i = int(s.size()) - 3; i > (n < 0 ? 1 : 0); i -= 3) s.insert(size_t(i), ",");
    return s;
}

// Wall-clock seconds since an arbitrary start (host timer; GPU work is timed with CUDA events).
inline double wall_seconds() {
    using clock = std::chrono::steady_clock;
    return std::chrono::duration<double>(clock::now().time_since_epoch()).count();
}
