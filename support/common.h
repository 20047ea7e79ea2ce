// support/common.h — what every file shares, CUDA-free: the user-error type and fail(), bf16 bits on the host, a
// hash and the splitmix64 mixer, atomic file writes and timers. Knows nothing of the model, the data, the
// GPU or ZeRO; the checked CUDA calls and counted device allocations are support/cuda_calls.h.
//
// Error policy: a mistake a user can make (a bad flag, a missing file, a malformed row) is reported with
// fail("what (where)"), which throws Error; main() prints it as one line `error: ...` and exits non-zero
// (on every rank, through MPI_Abort, when several run). Tests catch Error to check each bad input.
#pragma once
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>

struct Error : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// A user-facing error: one line saying what is wrong and where (file, field or flag).
[[noreturn]] inline void fail(const std::string& message) { throw Error(message); }

// Prints `error: message` and ends the process; when MPI runs several ranks, ends all of them
// (distributed/world.cu, which owns MPI).
[[noreturn]] void exit_with_error(const std::string& message);

// Marks a function callable from host and device code (the one place a macro serves: CUDA's qualifiers
// do not exist for the host compiler).
#ifdef __CUDACC__
#define HOST_DEVICE __host__ __device__
#else
#define HOST_DEVICE
#endif

// splitmix64's output function (Steele, Lea, Flood 2014): 64 well-mixed bits from a counter. The data
// shuffle, the weight init and the LoRA dropout mask all draw from it.
HOST_DEVICE inline uint64_t splitmix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
constexpr uint64_t kGoldenGamma = 0x9E3779B97F4A7C15ull;  // splitmix64's counter step (2^64 / golden ratio)

// bf16 <-> fp32 on the host, round-to-nearest-even like the GPU's conversion (a NaN becomes 0x7FFF, as there).
// A few integer operations: CUDA's host __float2bfloat16 gives the same bits about 5x slower (adamw.cu).
inline float bf16_to_float(uint16_t bits) {
    uint32_t u = uint32_t(bits) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
inline uint16_t float_to_bf16(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;              // to nearest, ties to even
    return (u & 0x7fffffffu) > 0x7f800000u ? uint16_t(0x7fff) : uint16_t(rounded);  // NaN: the canonical quiet NaN
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

// Writes `text` to path.tmp and renames it over `path`, so a reader never sees half a file; with `durable`
// the bytes reach the disk (fsync) before the rename.
inline void write_atomically(const std::string& path, const std::string& text, bool durable = false) {
    std::string tmp = path + ".tmp";
    std::FILE* f = std::fopen(tmp.c_str(), "wb");
    if (!f) fail("cannot write " + path + ": " + std::strerror(errno));
    bool ok = std::fwrite(text.data(), 1, text.size(), f) == text.size() && std::fflush(f) == 0;
    if (ok && durable) ok = fsync(fileno(f)) == 0;
    int err = errno;
    if (std::fclose(f) != 0 && ok) ok = false, err = errno;
    if (ok && std::rename(tmp.c_str(), path.c_str()) != 0) ok = false, err = errno;
    if (!ok) {
        std::remove(tmp.c_str());
        fail("cannot write " + path + ": " + std::strerror(err));
    }
}
