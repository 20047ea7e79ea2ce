// dev/attention.cu — development harness for the fused attention kernels (../attention.cu), in the way of
// llm.c's dev/cuda: every kernel version is validated against the double-precision CPU reference
// (../test/reference.cpp) on fresh random inputs with poisoned outputs, the backward is checked to be
// bitwise deterministic, forward and backward are timed with CUDA events, and one summary ends the run
// (exit status 1 if any check failed; speed is reported, never asserted).
//
//   make -C dev && ./dev/attention               checks + benchmark (well under a minute on an H100)
//   ./dev/attention --no-bench                   checks only;   --seed N   repeat a run's inputs
//   ./dev/attention --bench-only 8192             one T of the benchmark, no checks (for ncu)
//   ./dev/attention --skip v7                      leave out the versions whose names start so (repeatable)
//
// Versions: v1 is the library (flash_attention_forward / _backward: on an H100/H200 at head_dim 64 and 128 the
// Hopper forwards of ../kernels/attention_sm90.cuh, HopperFwd / HopperFwdD128, and the warp-specialized
// backward of ../kernels/attention_sm90_ws_bwd.cuh, WsBwd<64> / WsBwd<128>, which were dev v9 / v8 until they
// won; elsewhere the mma.sync kernels, whose tile configuration per head dim is Lib<D> in attention.cu; v1m
// names Lib<64> and Lib<128>, the mma.sync kernels that those head dims run on other GPUs); v2, v3 are other
// tile configurations of the mma.sync templates, v5 configurations of the Hopper forward and of head_dim 64's
// Hopper backward before warp specialization (attention_sm90_bwd.cuh; "tma dq-bulk" was the library's and is
// its fallback; sm_90a: hence GPU_ARCH sm_90a in dev/Makefile), kept to time against them; v6 configurations of the Hopper forward for head_dim 128 (the library's is
// WgFwdConfig<2, 128, 3, 128>); v7 configurations of the head_dim 128 Hopper backward before warp specialization
// (attention_v7.cuh; the library's until v8), each also checked for bitwise determinism on its own, "dq-bulk"
// among them (dq added by the TMA); v10 configurations of the warp-specialized backward (WsBwd: Q/dO stages,
// unordered adds, the producer's registers, dP^T beside the softmax); v11 head_dim 64's warp-specialized backward with 128 queries a step (../kernels/attention_sm90_ws64_bwd.cuh,
// the library's since it ran; checked for bitwise determinism on its own); v12 the Hopper forward with its
// warpgroups issuing their products in turn (WgFwdConfig's PP, FlashAttention-3's pingpong); v13 the forward
// as a persistent kernel, one block per SM walking its share of the tiles (attention_v13.cuh; not kept: its
// code is slower a key block; "7 blocks": a few blocks walking many tiles each, so that the checks' small
// shapes run the ring of stages across tiles); v14 the warp-specialized backwards (v11 at head_dim 64,
// WsBwd<128>) with each step issuing the next step's S^T early (NEXT_S), each checked for bitwise determinism;
// v15 the Hopper forward with a producer warpgroup (WgFwdConfig's WS, FlashAttention-3's forward; the library's
// HopperFwdD128 since it ran; head_dim 64 at T <= 1,024 runs the 128-row tiles of v5 BR128, HopperFwdShort). "dq-atomic", "dq-any-order" and "no-dq" are timing bounds
// (DqMode; the first and last with dq wrong). dev/NOTES.md says what each measured. This file includes
// ../attention.cu to reach them.
// FLOPs are counted as FlashAttention does: forward 4 B H T^2 Dh / 2 (causal), backward 2.5x forward.
#include "kernels/attention.cu"
#include "attention_v7.cuh"
#include "attention_v13.cuh"
#include "../test/reference.h"

#include <algorithm>
#include <cmath>
#include <ctime>
#include <random>
#include <string>
#include <vector>

namespace {

// ---------------------------------------------------------------------------------------------- versions
using FwdFn = void (*)(const AttentionShape&, const bf16*, const bf16*, const bf16*, const int32_t*, bf16*, float*, cudaStream_t);
using BwdFn = void (*)(const AttentionShape&, const bf16*, const bf16*, const bf16*, const bf16*, const bf16*, const float*,
                       const int32_t*, bf16*, bf16*, bf16*, void*, cudaStream_t);
using WsFn = size_t (*)(const AttentionShape&);

struct FwdVersion {
    std::string name;
    int D;  // padded head dim it runs, 0 = any (the library entry point)
    FwdFn run;
    int exact_dh = 0;  // runs only for this head dim (0: any that pads to D)
    bool sm90a = false;  // a Hopper kernel: runs only where wgmma_available()
};
struct BwdVersion {
    std::string name;
    int D;
    BwdFn run;
    WsFn workspace;
    bool timing_only = false;  // a bound whose dq is wrong (DqMode kDqAtomic / kDqNone): timed, not validated
    int exact_dh = 0;          // runs only for this head dim (0: any that pads to D)
    bool sm90a = false;        // a Hopper kernel: runs only where wgmma_available()
};

template <class C>
std::string fwd_name(const char* v) {
    char s[96];
    std::snprintf(s, sizeof s, "%s fwd D%d BR%d BC%d %dw %s", v, C::D, C::BR, C::BC, C::NW, C::Q_REGS ? "Q-reg" : "Q-smem");
    return s;
}
template <class C>
std::string bwd_name(const char* v) {
    char s[96];
    const char* dq[] = {"", " dq-atomic", " no-dq", " dq-bulk"};
    std::snprintf(s, sizeof s, "%s bwd D%d BC%d BR%d %dw %s%s", v, C::D, C::BC, C::BR, C::NW, C::KV_REGS ? "KV-reg" : "KV-smem",
                  dq[C::DQ]);
    return s;
}
template <class C>
FwdVersion fwd_version(const char* v) { return {fwd_name<C>(v), C::D, launch_forward<C>}; }
template <class C>
BwdVersion bwd_version(const char* v) {
    return {bwd_name<C>(v), C::D, launch_backward<C>, backward_workspace_bytes<C>, C::DQ == kDqAtomic || C::DQ == kDqNone};
}

// v13 (attention_v13.cuh): the persistent forward with BLOCKS blocks (-1: one per SM, 0: one per tile, else that many).
template <class P, int BLOCKS>
void persistent_forward(const AttentionShape& a, const bf16* q, const bf16* k, const bf16* v, const int32_t* doc_start, bf16* o,
                        float* lse, cudaStream_t stream) {
    launch_forward_persistent<P>(a, q, k, v, doc_start, o, lse, stream, BLOCKS);
}
// The Hopper forward (sm_90a) at head_dim W::D: NWG warpgroups (64 query rows each), BC keys per block, NS
// stages; "v5" at head_dim 64, "v6" at 128.
template <class W>
FwdVersion wgmma_fwd_version() {
    char s[96];
    std::snprintf(s, sizeof s, "%s fwd D%d BR%d BC%d %dw %dst wgmma%s%s", W::WS ? "v15" : W::PP ? "v12" : W::D == 64 ? "v5" : "v6", W::D,
                  W::BR, W::BC, W::THREADS / 32, W::NS, W::PP ? " pingpong" : "", W::WS ? " ws" : "");
    return {s, W::D, launch_forward_wgmma<W>, W::D, true};
}
template <class P>
FwdVersion persistent_fwd_version() {
    char s[96];
    std::snprintf(s, sizeof s, "v13 fwd D%d BR%d BC%d %dw %dst %dq persistent%s", P::D, P::BR, P::BC, P::THREADS / 32, P::NS, P::QB,
                  P::PP ? " pingpong" : "");
    return {s, P::D, persistent_forward<P, -1>, P::D, true};
}
// The same kernel with 7 blocks, so that the checks' small shapes (16 to 48 tiles) run many tiles a block:
// the ring of stages across tiles, both Q buffers, the odd rounds walked backwards, the turns across tiles.
template <class P>
FwdVersion few_blocks_fwd_version() {
    FwdVersion v = persistent_fwd_version<P>();
    v.name += " 7 blocks";
    v.run = persistent_forward<P, 7>;
    return v;
}
using V13D64 = PersistFwd<WgFwdConfig<3, 128, 3>, 2>;                // the library's head_dim 64 tiles, two Q buffers
using V13D64x2 = PersistFwd<WgFwdConfig<2, 128, 4>, 2>;              // 128-row tiles (T = 1,024: no partial tile)
using V13D128 = PersistFwd<WgFwdConfig<2, 128, 3, 128, true>, 1>;    // the library's head_dim 128 tiles, one Q buffer
using V13D128q2 = PersistFwd<WgFwdConfig<2, 128, 2, 128, true>, 2>;  // two stages, two Q buffers
std::vector<FwdVersion> fwd_versions() {
    return {{"v1 fwd library", 0, flash_attention_forward},
            fwd_version<Lib<64>::Fwd>("v1m"),                     // the mma.sync forward head_dim 64 runs on other GPUs
            fwd_version<Lib<128>::Fwd>("v1m"),                    // the mma.sync forward head_dim 128 runs on other GPUs
            fwd_version<FwdConfig<64, 1, 4, 64, true>>("v2"),    // 64-row tiles: 16 rows per warp
            fwd_version<FwdConfig<64, 2, 4, 64, false>>("v3"),   // Q re-read from shared memory
            fwd_version<FwdConfig<128, 1, 4, 64, true>>("v2"),
            fwd_version<FwdConfig<128, 2, 4, 64, false>>("v3"),  // 64-key tiles (ptxas reports spills)
            wgmma_fwd_version<WgFwdConfig<3, 128, 3>>(),
            wgmma_fwd_version<WgFwdConfig<3, 128, 4>>(),
            wgmma_fwd_version<WgFwdConfig<3, 96, 4>>(),
            wgmma_fwd_version<WgFwdConfig<2, 128, 4>>(),
            wgmma_fwd_version<WgFwdConfig<2, 128, 3, 128>>(),  // 2 warpgroups, 128-key blocks (225 KB)
            wgmma_fwd_version<WgFwdConfig<2, 64, 4, 128>>(),   // 2 warpgroups, 64-key blocks
            wgmma_fwd_version<WgFwdConfig<3, 64, 3, 128>>(),   // 3 warpgroups (168-register cap), 64-key blocks
            wgmma_fwd_version<WgFwdConfig<3, 64, 4, 128>>(),
            wgmma_fwd_version<WgFwdConfig<3, 128, 3, 64, true>>(),    // v12: the library's tiles, the warpgroups' products in turn
            wgmma_fwd_version<WgFwdConfig<2, 128, 3, 128, true>>(),
            wgmma_fwd_version<WgFwdConfig<2, 128, 3, 128, true, true>>(),  // v15: the library's head_dim 128 tiles, a producer warpgroup
            wgmma_fwd_version<WgFwdConfig<2, 128, 4, 64, false, true>>(),  // v15 at head_dim 64: 128-row tiles, a producer warpgroup
            persistent_fwd_version<V13D64>(),      // v13: each block walks its share of the tiles
            persistent_fwd_version<V13D64x2>(),
            persistent_fwd_version<V13D128>(),
            persistent_fwd_version<V13D128q2>(),
            few_blocks_fwd_version<V13D64>(),
            few_blocks_fwd_version<V13D64x2>(),
            few_blocks_fwd_version<V13D128>(),
            few_blocks_fwd_version<V13D128q2>()};
}
// The Hopper backward (Dh 64 only, sm_90a) with NWG warpgroups per block.
template <class W>
BwdVersion wgmma_version() {
    char s[96];
    const char* dq[] = {"", " dq-atomic", " no-dq", " dq-bulk"};
    std::snprintf(s, sizeof s, "v5 bwd D64 BC%d BR%d %dw x%d wgmma%s%s", W::BC, W::BR, W::THREADS / 32, W::MINB, W::TMA ? " tma" : "",
                  dq[W::DQ]);
    return {s, 64, launch_backward_wgmma<W>, backward_workspace_bytes<Lib<64>::Bwd>, W::DQ == kDqAtomic || W::DQ == kDqNone, 64};
}
// The Hopper backward for Dh 128 (sm_90a): NWG warpgroups (64 keys each), MINB blocks per SM.
template <class W>
BwdVersion wgmma_d128_bwd_version() {
    char s[96];
    const char* dq[] = {"", " dq-atomic", " no-dq", " dq-bulk"};
    std::snprintf(s, sizeof s, "v7 bwd D128 BC%d BR%d %dw x%d wgmma%s%s", W::BC, W::BR, W::THREADS / 32, W::MINB, W::TMA ? " tma" : "",
                  dq[W::DQ]);
    return {s, 128, launch_backward_wgmma_d128<W>, backward_workspace_bytes<Lib<128>::Bwd>, W::DQ == kDqAtomic || W::DQ == kDqNone, 128, true};
}
// The warp-specialized backward (sm_90a) in other configurations (v10): NS Q/dO stages, unordered adds, the
// producer's registers (PREG), dP^T issued beside the softmax (EARLY_DP). A configuration whose kernel does not start at 168 registers does not run (its
// outputs stay poisoned: the validation fails and says so).
template <class W>
void launch_ws_checked(const AttentionShape& a, const bf16* q, const bf16* k, const bf16* v, const bf16* o, const bf16* dO,
                       const float* lse, const int32_t* doc_start, bf16* dq, bf16* dk, bf16* dv, void* workspace, cudaStream_t stream) {
    if (ws_registers_fit<W>()) launch_backward_ws<W>(a, q, k, v, o, dO, lse, doc_start, dq, dk, dv, workspace, stream);
}
// v11 likewise: not run where its kernel does not start at 168 registers (NEXT_S: v14, the next S^T early).
template <bool NEXT_S = false>
void v11_backward(const AttentionShape& a, const bf16* q, const bf16* k, const bf16* v, const bf16* o, const bf16* dO, const float* lse,
                  const int32_t* doc_start, bf16* dq, bf16* dk, bf16* dv, void* workspace, cudaStream_t stream) {
    if (ws64x128_registers_fit<NEXT_S>()) launch_backward_ws64x128<NEXT_S>(a, q, k, v, o, dO, lse, doc_start, dq, dk, dv, workspace, stream);
}
template <class W>
BwdVersion ws_version() {
    char s[96];
    std::snprintf(s, sizeof s, "%s bwd D%d ws %dst p%d%s%s%s", W::KSPLIT ? "v16" : W::NEXT_S ? "v14" : "v10", W::D, W::NS, W::PREG,
                  W::EARLY_DP ? " early-dp" : "", W::DQ == kDqAtomic ? " dq-any-order" : "", W::KSPLIT ? " ksplit" : "");
    return {s, W::D, launch_ws_checked<W>, backward_workspace_bytes<typename Lib<W::D>::Bwd>, W::DQ == kDqAtomic, W::D, true};
}
std::vector<BwdVersion> bwd_versions() {
    return {{"v1 bwd library", 0, flash_attention_backward, flash_attention_backward_workspace},
            bwd_version<Lib<64>::Bwd>("v1m"),   // the mma.sync backward head_dim 64 runs on other GPUs
            bwd_version<Lib<128>::Bwd>("v1m"),  // the mma.sync backward head_dim 128 runs on other GPUs
            wgmma_version<WgBwdConfig<2, 1>>(),
            wgmma_version<WgBwdConfig<1, 2>>(),
            wgmma_version<WgBwdConfig<1, 3>>(),
            wgmma_version<WgBwdConfig<1, 3, true>>(),
            wgmma_version<WgBwdConfig<1, 3, true, kDqBulk>>(),  // dq partials added by the TMA
            bwd_version<BwdConfig<64, 8, 64, false>>("v2"),   // K, V re-read from shared memory
            bwd_version<BwdConfig<64, 4, 64, true>>("v3"),    // 64-key blocks
            bwd_version<BwdConfig<128, 4, 32, false>>("v2"),  // 64-key blocks
            bwd_version<BwdConfig<128, 8, 32, false>>("v3"),  // 32-query steps (the library before: v3 won)
            wgmma_d128_bwd_version<WgBwdD128Config<2, 1, true>>(),   // 2 warpgroups, 128-key blocks
            wgmma_d128_bwd_version<WgBwdD128Config<1, 2, true>>(),   // 1 warpgroup, 64-key blocks, 2 blocks per SM
            wgmma_d128_bwd_version<WgBwdD128Config<2, 1, true, kDqBulk>>(),  // dq partials added by the TMA
            ws_version<WsBwd<64, 3>>(),
            ws_version<WsBwd<64>>(),  // the library's at head_dim 64 before v11 (now its fallback)
            {"v11 bwd D64 BC128 BR128 12w ws", 64, v11_backward<false>, backward_workspace_bytes<Lib<64>::Bwd>, false, 64, true},  // ../kernels/attention_sm90_ws64_bwd.cuh
            {"v14 bwd D64 BC128 BR128 12w ws next-s", 64, v11_backward<true>, backward_workspace_bytes<Lib<64>::Bwd>, false, 64, true},  // v11, the next S^T early
            ws_version<WsBwd<128, 2, kDqBulk, 24, false, true>>(),  // v14: the library's head_dim 128, the next S^T early
            ws_version<WsBwd<64, 2, kDqBulk, 40>>(),  // the producer at 40 registers, the compute at 232: no spills
            ws_version<WsBwd<64, 2, kDqBulk, 40, true>>(),  // and dP^T beside the softmax
            ws_version<WsBwd<128, 2, kDqBulk, 24, true>>(),
            ws_version<WsBwd<64, 2, kDqAtomic>>(),   // unordered: non-deterministic, timed only
            ws_version<WsBwd<128, 2, kDqAtomic>>(),
            ws_version<WsBwd<128, 2, kDqBulk, 24, false, false, true>>(),  // v16: dQ_part split by keys, no barrier between the warpgroups
            ws_version<WsBwd<64, 2, kDqBulk, 24, false, false, true>>(),
            ws_version<WsBwd<64, 2, kDqBulk, 40, false, false, true>>(),
            // bounds: the library configurations with unordered atomics, and with no dq at all
            wgmma_version<WgBwdConfig<1, 3, true, kDqAtomic>>(),
            wgmma_version<WgBwdConfig<1, 3, true, kDqNone>>(),
            wgmma_d128_bwd_version<WgBwdD128Config<2, 1, true, kDqAtomic>>(),
            wgmma_d128_bwd_version<WgBwdD128Config<2, 1, true, kDqNone>>(),
            bwd_version<BwdConfig<64, 8, 64, true, kDqAtomic>>("v1"),
            bwd_version<BwdConfig<64, 8, 64, true, kDqNone>>("v1"),
            bwd_version<BwdConfig<128, 8, 64, false, kDqAtomic>>("v1"),
            bwd_version<BwdConfig<128, 8, 64, false, kDqNone>>("v1")};
}
std::vector<std::string> skipped;  // --skip PREFIX: versions whose name starts with one of these do not run
bool skip(const std::string& name) {
    for (const std::string& p : skipped)
        if (name.compare(0, p.size(), p) == 0) return true;
    return false;
}
bool runs(int version_D, int Dh) { return version_D == 0 || version_D == padded_head_dim(Dh); }
bool runs(const BwdVersion& v, int Dh) {
    return !skip(v.name) && runs(v.D, Dh) && (v.exact_dh == 0 || v.exact_dh == Dh) && ((v.exact_dh != 64 && !v.sm90a) || wgmma_available());
}
bool runs(const FwdVersion& v, int Dh) {
    return !skip(v.name) && runs(v.D, Dh) && (v.exact_dh == 0 || v.exact_dh == Dh) && (!v.sm90a || wgmma_available());
}

// Registers, spills, shared memory and blocks per SM of one kernel instance.
template <class C, class K>
void print_resources(const char* what, K kernel) {
    check_cuda(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(C::smem)), "cudaFuncSetAttribute");
    cudaFuncAttributes fa{};
    check_cuda(cudaFuncGetAttributes(&fa, kernel), "cudaFuncGetAttributes");
    int blocks = 0;
    check_cuda(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, C::THREADS, C::smem), "occupancy");
    std::printf("  %-44s %3d regs  %4zu B local (spills)  %6zu B smem  %d threads  %d block(s)/SM\n", what, fa.numRegs,
                size_t(fa.localSizeBytes), size_t(C::smem), C::THREADS, blocks);
}
template <class C>
void print_fwd(const char* v) { print_resources<C>(fwd_name<C>(v).c_str(), flash_forward_kernel<C>); }
template <class C>
void print_bwd(const char* v) { print_resources<C>(bwd_name<C>(v).c_str(), flash_backward_kernel<C>); }

// ---------------------------------------------------------------------------------------------- results
struct Check {
    std::string name, detail;
    bool pass;
};
std::vector<Check> checks;
void record(const std::string& name, const std::string& detail, bool pass) {
    checks.push_back({name, detail, pass});
    std::printf("  %-58s %s  %s\n", name.c_str(), detail.c_str(), pass ? "PASS" : "FAIL");
}

constexpr double kBound = 2e-2;  // max |gpu - cpu| / max |cpu|, per tensor

// max |gpu - ref| / max |ref|; a NaN (an unwritten, poisoned element) gives infinity.
double rel_error(const std::vector<float>& gpu, const Vec& ref) {
    double diff = 0, scale = 0;
    for (size_t i = 0; i < ref.size(); ++i) {
        if (!std::isfinite(gpu[i])) return INFINITY;
        diff = std::max(diff, std::fabs(double(gpu[i]) - ref[i]));
        scale = std::max(scale, std::fabs(ref[i]));
    }
    return diff / std::max(scale, 1e-3);  // floor: a tensor that is exactly 0 (T = 1: dq, dk)
}

// ---------------------------------------------------------------------------------------------- device buffers
struct DevBuf {
    void* p = nullptr;
    size_t bytes = 0;
    explicit DevBuf(size_t n) : bytes(n) { check_cuda(cudaMalloc(&p, std::max<size_t>(n, 16)), "cudaMalloc"); }
    ~DevBuf() { cudaFree(p); }
    DevBuf(const DevBuf&) = delete;
    DevBuf& operator=(const DevBuf&) = delete;
    template <class T>
    T* as() const { return static_cast<T*>(p); }
    void poison() const { check_cuda(cudaMemset(p, 0xFF, bytes), "poison"); }  // bf16 and fp32 NaN
};

template <class T>
void upload(const DevBuf& d, const std::vector<T>& h) {
    check_cuda(cudaMemcpy(d.p, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice), "upload");
}
std::vector<float> download_bf16(const DevBuf& d, size_t n) {
    std::vector<uint16_t> bits(n);
    check_cuda(cudaMemcpy(bits.data(), d.p, n * 2, cudaMemcpyDeviceToHost), "download");
    std::vector<float> out(n);
    for (size_t i = 0; i < n; ++i) out[i] = bf16_to_float(bits[i]);
    return out;
}
std::vector<float> download_f32(const DevBuf& d, size_t n) {
    std::vector<float> out(n);
    check_cuda(cudaMemcpy(out.data(), d.p, n * 4, cudaMemcpyDeviceToHost), "download");
    return out;
}
std::vector<unsigned char> download_bytes(const DevBuf& d) {
    std::vector<unsigned char> out(d.bytes);
    check_cuda(cudaMemcpy(out.data(), d.p, d.bytes, cudaMemcpyDeviceToHost), "download");
    return out;
}

// ---------------------------------------------------------------------------------------------- inputs
// Random bf16 values (normal, times scale): the bits for the GPU and the same values in double for the CPU.
void random_bf16(std::mt19937& rng, size_t n, float scale, std::vector<uint16_t>& bits, Vec& values) {
    std::normal_distribution<float> normal(0.f, 1.f);
    bits.resize(n), values.resize(n);
    for (size_t i = 0; i < n; ++i) bits[i] = float_to_bf16(normal(rng) * scale), values[i] = bf16_to_float(bits[i]);
}

// doc_start [B, T]: documents of random lengths packed in each row; the second document of a row has length 1
// (and others may), the last is cut at T.
std::vector<int32_t> random_docs(std::mt19937& rng, int B, int T) {
    std::vector<int32_t> ds(size_t(B) * T);
    for (int b = 0; b < B; ++b)
        for (int t = 0, doc = 0; t < T; ++doc) {
            int len = doc == 1 || rng() % 5 == 0 ? 1 : 1 + int(rng() % unsigned(std::max(1, T / 3)));
            len = std::min(len, T - t);
            for (int u = t; u < t + len; ++u) ds[size_t(b) * T + u] = t;
            t += len;
        }
    return ds;
}

// Benchmark inputs: uniform-ish values from a hash of the index (no host round trip for 100 MB tensors).
__global__ void fill_random_kernel(bf16* x, int64_t n, uint32_t seed, float scale) {
    for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
        uint32_t h = uint32_t(i) * 0x9E3779B1u ^ uint32_t(i >> 32) * 0x85EBCA77u ^ seed;
        h ^= h >> 15, h *= 0x2C1B3C6Du, h ^= h >> 12, h *= 0x297A2D39u, h ^= h >> 15;
        x[i] = __float2bfloat16((float(h & 0xFFFFFF) / 16777216.f * 2.f - 1.f) * scale);
    }
}
void fill_random(const DevBuf& d, uint32_t seed, float scale) {
    fill_random_kernel<<<1024, 256>>>(d.as<bf16>(), int64_t(d.bytes / 2), seed, scale);
    check_launch("fill_random_kernel");
}

// ---------------------------------------------------------------------------------------------- validation
struct Case {
    int B, T, H, KVH, Dh;
    bool docs;
    float q_scale;  // larger: peakier softmax
};

std::string shape_text(const Case& c) {
    char s[96];
    std::snprintf(s, sizeof s, "B%d T%d H%d KVH%d Dh%d %s", c.B, c.T, c.H, c.KVH, c.Dh, c.docs ? "docs" : "causal");
    return s;
}

void validate(const Case& c, std::mt19937& rng, cudaStream_t stream) {
    const AttentionShape a{c.B, c.T, c.H, c.KVH, c.Dh};
    const AttentionDims ad{c.B, c.T, c.H, c.KVH, c.Dh};
    const size_t nq = size_t(c.B) * c.T * c.H * c.Dh, nk = size_t(c.B) * c.T * c.KVH * c.Dh, nl = size_t(c.B) * c.H * c.T;
    std::vector<uint16_t> qb, kb, vb, dob;
    Vec q, k, v, dO;
    random_bf16(rng, nq, c.q_scale, qb, q);
    random_bf16(rng, nk, 1.f, kb, k);
    random_bf16(rng, nk, 1.f, vb, v);
    random_bf16(rng, nq, 1.f, dob, dO);
    const std::vector<int32_t> docs = c.docs ? random_docs(rng, c.B, c.T) : std::vector<int32_t>{};

    Vec o_ref, lse_ref, dq_ref, dk_ref, dv_ref;
    attention_forward_ref(ad, q, k, v, docs, o_ref, lse_ref);
    attention_backward_ref(ad, q, k, v, dO, docs, dq_ref, dk_ref, dv_ref);

    DevBuf dq_in(nq * 2), dk_in(nk * 2), dv_in(nk * 2), ddo(nq * 2), ddoc(std::max<size_t>(docs.size(), 1) * 4);
    DevBuf d_o(nq * 2), d_lse(nl * 4), d_dq(nq * 2), d_dk(nk * 2), d_dv(nk * 2);
    upload(dq_in, qb), upload(dk_in, kb), upload(dv_in, vb), upload(ddo, dob);
    if (c.docs) upload(ddoc, docs);
    const int32_t* doc_ptr = c.docs ? ddoc.as<int32_t>() : nullptr;
    const std::string shape = shape_text(c);

    for (const FwdVersion& fv : fwd_versions()) {
        if (!runs(fv, c.Dh)) continue;
        d_o.poison(), d_lse.poison();
        fv.run(a, dq_in.as<bf16>(), dk_in.as<bf16>(), dv_in.as<bf16>(), doc_ptr, d_o.as<bf16>(), d_lse.as<float>(), stream);
        check_cuda(cudaStreamSynchronize(stream), "forward");
        const double eo = rel_error(download_bf16(d_o, nq), o_ref), el = rel_error(download_f32(d_lse, nl), lse_ref);
        char detail[96];
        std::snprintf(detail, sizeof detail, "o %.1e lse %.1e", eo, el);
        record(fv.name.substr(0, 6) + " " + shape, detail, eo <= kBound && el <= kBound);
    }

    // The backward takes o and lse from the library's forward, as in training.
    flash_attention_forward(a, dq_in.as<bf16>(), dk_in.as<bf16>(), dv_in.as<bf16>(), doc_ptr, d_o.as<bf16>(), d_lse.as<float>(), stream);
    for (const BwdVersion& bv : bwd_versions()) {
        if (!runs(bv, c.Dh) || bv.timing_only) continue;
        DevBuf ws(bv.workspace(a));
        ws.poison(), d_dq.poison(), d_dk.poison(), d_dv.poison();  // nothing may rely on a zeroed workspace
        bv.run(a, dq_in.as<bf16>(), dk_in.as<bf16>(), dv_in.as<bf16>(), d_o.as<bf16>(), ddo.as<bf16>(), d_lse.as<float>(),
               doc_ptr, d_dq.as<bf16>(), d_dk.as<bf16>(), d_dv.as<bf16>(), ws.p, stream);
        check_cuda(cudaStreamSynchronize(stream), "backward");
        const double eq = rel_error(download_bf16(d_dq, nq), dq_ref), ek = rel_error(download_bf16(d_dk, nk), dk_ref),
                     ev = rel_error(download_bf16(d_dv, nk), dv_ref);
        char detail[96];
        std::snprintf(detail, sizeof detail, "dq %.1e dk %.1e dv %.1e", eq, ek, ev);
        record(bv.name.substr(0, 6) + " " + shape, detail, eq <= kBound && ek <= kBound && ev <= kBound);
    }
}

// Three runs on the same inputs give bitwise the same outputs: the library's forward and backward each run
// (o, lse, dq, dk, dv), or, with `bv` (a dev backward: v7), the library's forward once and bv each run (dq, dk, dv).
void check_determinism(const Case& c, uint32_t seed, cudaStream_t stream, const BwdVersion* bv = nullptr) {
    const AttentionShape a{c.B, c.T, c.H, c.KVH, c.Dh};
    const size_t nq = size_t(c.B) * c.T * c.H * c.Dh, nk = size_t(c.B) * c.T * c.KVH * c.Dh, nl = size_t(c.B) * c.H * c.T;
    DevBuf q(nq * 2), k(nk * 2), v(nk * 2), dO(nq * 2), o(nq * 2), lse(nl * 4), dq(nq * 2), dk(nk * 2), dv(nk * 2);
    DevBuf ws(bv ? bv->workspace(a) : flash_attention_backward_workspace(a)), doc(size_t(c.B) * c.T * 4);
    fill_random(q, seed, c.q_scale), fill_random(k, seed + 1, 1.f), fill_random(v, seed + 2, 1.f), fill_random(dO, seed + 3, 1.f);
    std::mt19937 rng(seed);
    if (c.docs) upload(doc, random_docs(rng, c.B, c.T));
    const int32_t* doc_ptr = c.docs ? doc.as<int32_t>() : nullptr;
    auto forward = [&] { flash_attention_forward(a, q.as<bf16>(), k.as<bf16>(), v.as<bf16>(), doc_ptr, o.as<bf16>(), lse.as<float>(), stream); };
    const BwdFn backward = bv ? bv->run : static_cast<BwdFn>(flash_attention_backward);
    std::vector<DevBuf*> outs = {&dq, &dk, &dv};
    if (bv) forward();
    else outs.insert(outs.begin(), {&o, &lse});
    std::vector<std::vector<unsigned char>> first(outs.size());
    bool same = true;
    for (int run = 0; run < 3; ++run) {
        for (DevBuf* b : outs) b->poison();
        ws.poison();
        if (!bv) forward();
        backward(a, q.as<bf16>(), k.as<bf16>(), v.as<bf16>(), o.as<bf16>(), dO.as<bf16>(), lse.as<float>(), doc_ptr, dq.as<bf16>(),
                 dk.as<bf16>(), dv.as<bf16>(), ws.p, stream);
        check_cuda(cudaStreamSynchronize(stream), "determinism run");
        for (size_t t = 0; t < outs.size(); ++t) {
            std::vector<unsigned char> bytes = download_bytes(*outs[t]);
            if (run == 0) first[t] = std::move(bytes);
            else same = same && bytes == first[t];
        }
    }
    // NaNs would compare equal bytewise: make sure the outputs are also finite.
    bool finite = true;
    for (float x : download_bf16(dq, nq)) finite = finite && std::isfinite(x);
    for (float x : download_bf16(dk, nk)) finite = finite && std::isfinite(x);
    record("determinism " + (bv ? bv->name + " " : std::string()) + shape_text(c), same ? "3 runs bitwise equal" : "runs differ", same && finite);
}

// ---------------------------------------------------------------------------------------------- benchmark
struct Timer {
    cudaEvent_t start, stop;
    Timer() { check_cuda(cudaEventCreate(&start), "event"), check_cuda(cudaEventCreate(&stop), "event"); }
    ~Timer() { cudaEventDestroy(start), cudaEventDestroy(stop); }
    // Median milliseconds of `runs` timed calls after two warm-up calls.
    template <class F>
    float median_ms(F&& f, cudaStream_t stream, int runs = 11) {
        f(), f();
        std::vector<float> ms(static_cast<size_t>(runs));
        for (float& m : ms) {
            check_cuda(cudaEventRecord(start, stream), "record");
            f();
            check_cuda(cudaEventRecord(stop, stream), "record");
            check_cuda(cudaEventSynchronize(stop), "sync");
            check_cuda(cudaEventElapsedTime(&m, start, stop), "elapsed");
        }
        std::sort(ms.begin(), ms.end());
        return ms[ms.size() / 2];
    }
};

struct BenchRow {
    int Dh, T;
    float fwd_ms, bwd_ms, total_tflops;
};

void benchmark(cudaStream_t stream, std::vector<BenchRow>& lib_rows, int only_T) {
    const int tokens = 16384;
    std::vector<int> Ts = {1024, 2048, 4096, 8192, 16384};
    if (only_T) Ts = {only_T};
    struct Heads { int Dh, H, KVH; };
    Timer timer;
    std::printf("\nbenchmark: B*T = %d tokens, causal, one document per row; median of 11 after 2 warm-ups\n", tokens);
    std::printf("  %-36s %6s %3s %4s %3s %6s | %8s %8s | %8s %8s | %8s\n", "version", "T", "B", "H", "Dh", "KVH", "fwd ms",
                "TFLOP/s", "bwd ms", "TFLOP/s", "fwd+bwd");
    for (const Heads hd : {Heads{64, 32, 8}, Heads{128, 16, 8}}) {
        const size_t nq = size_t(tokens) * hd.H * hd.Dh, nk = size_t(tokens) * hd.KVH * hd.Dh, nl = size_t(tokens) * hd.H;
        DevBuf q(nq * 2), k(nk * 2), v(nk * 2), dO(nq * 2), o(nq * 2), lse(nl * 4), dq(nq * 2), dk(nk * 2), dv(nk * 2);
        fill_random(q, 11, 2.f), fill_random(k, 12, 2.f), fill_random(v, 13, 1.f), fill_random(dO, 14, 1.f);
        size_t ws_bytes = 0;
        for (int T : Ts)
            for (const BwdVersion& bv : bwd_versions())
                if (runs(bv, hd.Dh)) ws_bytes = std::max(ws_bytes, bv.workspace(AttentionShape{tokens / T, T, hd.H, hd.KVH, hd.Dh}));
        DevBuf ws(ws_bytes);
        for (int T : Ts) {
            const AttentionShape a{tokens / T, T, hd.H, hd.KVH, hd.Dh};
            const double fwd_flops = 4.0 * a.B * a.H * double(T) * T * a.Dh / 2, bwd_flops = 2.5 * fwd_flops;
            flash_attention_forward(a, q.as<bf16>(), k.as<bf16>(), v.as<bf16>(), nullptr, o.as<bf16>(), lse.as<float>(), stream);
            float lib_fwd = 0, lib_bwd = 0;
            for (const FwdVersion& fv : fwd_versions()) {
                if (!runs(fv, a.Dh)) continue;
                const float ms = timer.median_ms([&] {
                    fv.run(a, q.as<bf16>(), k.as<bf16>(), v.as<bf16>(), nullptr, o.as<bf16>(), lse.as<float>(), stream);
                }, stream);
                if (fv.D == 0) lib_fwd = ms;
                std::printf("  %-36s %6d %3d %4d %3d %6d | %8.3f %8.1f | %8s %8s |\n", fv.name.c_str(), T, a.B, a.H, a.Dh,
                            a.KVH, ms, fwd_flops / ms * 1e-9, "", "");
            }
            for (const BwdVersion& bv : bwd_versions()) {
                if (!runs(bv, a.Dh)) continue;
                const float ms = timer.median_ms([&] {
                    bv.run(a, q.as<bf16>(), k.as<bf16>(), v.as<bf16>(), o.as<bf16>(), dO.as<bf16>(), lse.as<float>(), nullptr,
                           dq.as<bf16>(), dk.as<bf16>(), dv.as<bf16>(), ws.p, stream);
                }, stream);
                if (bv.D == 0) lib_bwd = ms;
                const double total = bv.D == 0 ? (fwd_flops + bwd_flops) / (lib_fwd + ms) * 1e-9 : 0;
                std::printf("  %-36s %6d %3d %4d %3d %6d | %8s %8s | %8.3f %8.1f | ", bv.name.c_str(), T, a.B, a.H, a.Dh,
                            a.KVH, "", "", ms, bwd_flops / ms * 1e-9);
                if (bv.D == 0) std::printf("%8.1f\n", total);
                else std::printf("\n");
            }
            lib_rows.push_back({a.Dh, T, lib_fwd, lib_bwd, float((fwd_flops + bwd_flops) / (lib_fwd + lib_bwd) * 1e-9)});
        }
    }
}

}  // namespace

int main(int argc, char** argv) {
    std::setvbuf(stdout, nullptr, _IOLBF, 0);  // line by line into a log too: a version that hangs (a timeout kills the run) leaves what came before
    bool bench = true, check = true;
    int only_T = 0;
    uint32_t seed = uint32_t(std::time(nullptr));
    for (int i = 1; i < argc; ++i) {
        const std::string arg = argv[i];
        if (arg == "--no-bench") bench = false;
        else if (arg == "--seed" && i + 1 < argc) seed = uint32_t(std::stoul(argv[++i]));
        else if (arg == "--bench-only" && i + 1 < argc) check = false, only_T = std::stoi(argv[++i]);
        else if (arg == "--skip" && i + 1 < argc) skipped.push_back(argv[++i]);
        else {
            std::fprintf(stderr, "usage: %s [--no-bench] [--seed N] [--bench-only T] [--skip PREFIX ...]\n", argv[0]);
            return 2;
        }
    }
    if (!gpu_available()) {
        std::fprintf(stderr, "dev/attention: no CUDA device\n");
        return 1;
    }
    cudaDeviceProp prop{};
    check_cuda(cudaGetDeviceProperties(&prop, 0), "cudaGetDeviceProperties");
    std::printf("dev/attention on %s (%d SMs), seed %u\n", prop.name, prop.multiProcessorCount, seed);
    cudaStream_t stream;
    check_cuda(cudaStreamCreate(&stream), "cudaStreamCreate");

    std::printf("\nkernels (ptxas: registers, local memory = spills; occupancy with the dynamic shared memory):\n");
    print_fwd<Lib<32>::Fwd>("v1"), print_fwd<Lib<64>::Fwd>("v1"), print_fwd<Lib<96>::Fwd>("v1"), print_fwd<Lib<128>::Fwd>("v1");
    print_bwd<Lib<32>::Bwd>("v1"), print_bwd<Lib<64>::Bwd>("v1"), print_bwd<Lib<96>::Bwd>("v1"), print_bwd<Lib<128>::Bwd>("v1");
    print_fwd<FwdConfig<64, 1, 4, 64, true>>("v2"), print_fwd<FwdConfig<64, 2, 4, 64, false>>("v3");
    print_fwd<FwdConfig<128, 1, 4, 64, true>>("v2"), print_fwd<FwdConfig<128, 2, 4, 64, false>>("v3");
    print_bwd<BwdConfig<64, 8, 64, false>>("v2"), print_bwd<BwdConfig<64, 4, 64, true>>("v3");
    print_bwd<BwdConfig<128, 4, 32, false>>("v2"), print_bwd<BwdConfig<128, 8, 64, false>>("v3");
    print_resources<WgBwdConfig<2, 1>>("v5 bwd wgmma BC128 8w", flash_backward_wgmma_kernel<WgBwdConfig<2, 1>>);
    print_resources<WgBwdConfig<1, 2>>("v5 bwd wgmma BC64 4w x2", flash_backward_wgmma_kernel<WgBwdConfig<1, 2>>);
    print_resources<WgBwdConfig<1, 3>>("v5 bwd wgmma BC64 4w x3", flash_backward_wgmma_kernel<WgBwdConfig<1, 3>>);
    print_resources<WgBwdConfig<1, 3, true>>("v5 bwd wgmma BC64 4w x3 tma", flash_backward_wgmma_kernel<WgBwdConfig<1, 3, true>>);
    print_resources<WgBwdConfig<1, 3, true, kDqBulk>>("v5 bwd wgmma BC64 4w x3 tma dq-bulk", flash_backward_wgmma_kernel<WgBwdConfig<1, 3, true, kDqBulk>>);
    print_resources<WgFwdConfig<3, 128, 3>>("v5 fwd wgmma BR192 BC128 3st", flash_forward_wgmma_kernel<WgFwdConfig<3, 128, 3>>);
    print_resources<WgFwdConfig<3, 128, 4>>("v5 fwd wgmma BR192 BC128 4st", flash_forward_wgmma_kernel<WgFwdConfig<3, 128, 4>>);
    print_resources<WgFwdConfig<3, 96, 4>>("v5 fwd wgmma BR192 BC96 4st", flash_forward_wgmma_kernel<WgFwdConfig<3, 96, 4>>);
    print_resources<WgFwdConfig<2, 128, 4>>("v5 fwd wgmma BR128 BC128 4st", flash_forward_wgmma_kernel<WgFwdConfig<2, 128, 4>>);
    if (wgmma_available()) {  // (225 KB of shared memory: more than GPUs before Hopper allow a block)
        print_resources<WgFwdConfig<2, 128, 3, 128>>("v6 fwd D128 wgmma BR128 BC128 3st", flash_forward_wgmma_kernel<WgFwdConfig<2, 128, 3, 128>>);
        print_resources<WgFwdConfig<2, 64, 4, 128>>("v6 fwd D128 wgmma BR128 BC64 4st", flash_forward_wgmma_kernel<WgFwdConfig<2, 64, 4, 128>>);
        print_resources<WgFwdConfig<3, 64, 3, 128>>("v6 fwd D128 wgmma BR192 BC64 3st", flash_forward_wgmma_kernel<WgFwdConfig<3, 64, 3, 128>>);
        print_resources<WgFwdConfig<3, 64, 4, 128>>("v6 fwd D128 wgmma BR192 BC64 4st", flash_forward_wgmma_kernel<WgFwdConfig<3, 64, 4, 128>>);
        print_resources<WgFwdConfig<3, 128, 3, 64, true>>("v12 fwd D64 wgmma BR192 BC128 3st pingpong",
                                                           flash_forward_wgmma_kernel<WgFwdConfig<3, 128, 3, 64, true>>);
        print_resources<WgFwdConfig<2, 128, 3, 128, true>>("v12 fwd D128 wgmma BR128 BC128 3st pingpong",
                                                            flash_forward_wgmma_kernel<WgFwdConfig<2, 128, 3, 128, true>>);
        print_resources<WgFwdConfig<2, 128, 3, 128, true, true>>("v15 fwd D128 wgmma BR128 BC128 3st pingpong ws",
                                                                  flash_forward_wgmma_kernel<WgFwdConfig<2, 128, 3, 128, true, true>>);
        print_resources<WgFwdConfig<2, 128, 4, 64, false, true>>("v15 fwd D64 wgmma BR128 BC128 4st ws",
                                                                  flash_forward_wgmma_kernel<WgFwdConfig<2, 128, 4, 64, false, true>>);
        print_resources<V13D64>("v13 fwd D64 BR192 3st 2q persistent", flash_forward_persistent_kernel<V13D64>);
        print_resources<V13D64x2>("v13 fwd D64 BR128 4st 2q persistent", flash_forward_persistent_kernel<V13D64x2>);
        print_resources<V13D128>("v13 fwd D128 BR128 3st 1q persistent pp", flash_forward_persistent_kernel<V13D128>);
        print_resources<V13D128q2>("v13 fwd D128 BR128 2st 2q persistent pp", flash_forward_persistent_kernel<V13D128q2>);
        print_resources<WgBwdD128Config<2, 1, true>>("v7 bwd D128 wgmma BC128 8w x1 tma", flash_backward_wgmma_d128_kernel<WgBwdD128Config<2, 1, true>>);
        print_resources<WgBwdD128Config<1, 2, true>>("v7 bwd D128 wgmma BC64 4w x2 tma", flash_backward_wgmma_d128_kernel<WgBwdD128Config<1, 2, true>>);
        print_resources<WgBwdD128Config<2, 1, true, kDqBulk>>("v7 bwd D128 wgmma BC128 8w x1 tma dq-bulk", flash_backward_wgmma_d128_kernel<WgBwdD128Config<2, 1, true, kDqBulk>>);
        print_resources<WsBwd<128>>("v1 bwd D128 wgmma BC128 12w ws (library)", flash_backward_ws_kernel<WsBwd<128>>);
        print_resources<WsBwd<64>>("v1 bwd D64 wgmma BC128 12w ws (library)", flash_backward_ws_kernel<WsBwd<64>>);
        print_resources<WsBwd<64, 3>>("v10 bwd D64 ws 3st", flash_backward_ws_kernel<WsBwd<64, 3>>);
        print_resources<WsBwd<64, 2, kDqBulk, 40>>("v10 bwd D64 ws 2st p40", flash_backward_ws_kernel<WsBwd<64, 2, kDqBulk, 40>>);
        print_resources<WsBwd<64, 2, kDqBulk, 40, true>>("v10 bwd D64 ws 2st p40 early-dp", flash_backward_ws_kernel<WsBwd<64, 2, kDqBulk, 40, true>>);
        print_resources<WsBwd<128, 2, kDqBulk, 24, true>>("v10 bwd D128 ws 2st p24 early-dp", flash_backward_ws_kernel<WsBwd<128, 2, kDqBulk, 24, true>>);
        print_resources<WsBwd64x128>("v11 bwd D64 wgmma BC128 BR128 12w ws", flash_backward_ws64x128_kernel<false>);
        print_resources<WsBwd64x128>("v14 bwd D64 wgmma BC128 BR128 12w ws next-s", flash_backward_ws64x128_kernel<true>);
        print_resources<WsBwd<128, 2, kDqBulk, 24, false, true>>("v14 bwd D128 ws 2st p24 next-s", flash_backward_ws_kernel<WsBwd<128, 2, kDqBulk, 24, false, true>>);
        print_resources<WsBwd<64, 2, kDqAtomic>>("v10 bwd D64 ws dq-any-order", flash_backward_ws_kernel<WsBwd<64, 2, kDqAtomic>>);
        print_resources<WsBwd<128, 2, kDqAtomic>>("v10 bwd D128 ws dq-any-order", flash_backward_ws_kernel<WsBwd<128, 2, kDqAtomic>>);
    }

    std::printf("\nvalidation against the CPU reference (max |gpu - cpu| / max |cpu| per tensor, bound %.0e):\n", kBound);
    std::mt19937 rng(seed);
    const Case cases[] = {
        {1, 37, 4, 4, 64, false, 1.f},    // odd T inside one tile, GQA ratio 1
        {2, 130, 6, 2, 64, true, 1.f},    // documents, ratio 3, B = 2
        {2, 257, 8, 2, 128, true, 1.f},   // ratio 4, head dim 128
        {1, 300, 6, 2, 96, true, 2.f},    // head dim 96 (padded), peaky softmax
        {2, 200, 4, 1, 128, false, 2.f},  // ratio 4, plain causal
        {1, 1, 2, 1, 64, false, 1.f},     // a single token
        {1, 77, 2, 2, 40, true, 1.f},     // head dim 40 (padded to 64, 16-byte copies)
        {1, 65, 4, 2, 70, true, 1.f},     // head dim 70 (padded to 96, 4-byte copies)
        {1, 129, 3, 1, 32, true, 1.f},    // head dim 32
        {1, 700, 4, 1, 64, true, 1.f},    // several key tiles per query tile: the ordered dq accumulation
        {1, 600, 2, 2, 128, false, 1.f},  // the same at head dim 128
    };
    if (check) {
        for (const Case& c : cases) validate(c, rng, stream);
        std::printf("\nbitwise determinism (library forward + backward, 3 runs; then each dev Hopper backward alone):\n");
        check_determinism({2, 1536, 32, 8, 64, true, 1.f}, seed, stream);
        check_determinism({2, 2048, 32, 8, 64, false, 1.f}, seed + 7, stream);
        check_determinism({1, 2048, 16, 4, 128, true, 1.f}, seed + 13, stream);
        for (const BwdVersion& bv : bwd_versions())  // the dev Hopper backwards (v7, v10)
            if (bv.sm90a && bv.exact_dh == 128 && !bv.timing_only && runs(bv, 128)) {
                check_determinism({1, 2048, 16, 4, 128, true, 1.f}, seed + 13, stream, &bv);
                check_determinism({2, 1536, 16, 8, 128, false, 1.f}, seed + 17, stream, &bv);
            } else if (bv.sm90a && bv.exact_dh == 64 && !bv.timing_only && runs(bv, 64)) {
                check_determinism({2, 1536, 32, 8, 64, true, 1.f}, seed + 19, stream, &bv);
                check_determinism({2, 2048, 32, 8, 64, false, 1.f}, seed + 23, stream, &bv);
            }
    }

    std::vector<BenchRow> lib_rows;
    if (bench) benchmark(stream, lib_rows, only_T);
    check_cuda(cudaStreamDestroy(stream), "cudaStreamDestroy");

    int failed = 0;
    for (const Check& c : checks) failed += !c.pass;
    std::printf("\nsummary (seed %u):\n", seed);
    if (!lib_rows.empty()) {
        std::printf("  library fwd+bwd, causal, B*T = 16384 (target at T = 8192: >= 275 TFLOP/s)\n");
        std::printf("  %4s %6s %9s %9s %9s\n", "Dh", "T", "fwd ms", "bwd ms", "TFLOP/s");
        for (const BenchRow& r : lib_rows)
            std::printf("  %4d %6d %9.3f %9.3f %9.1f\n", r.Dh, r.T, r.fwd_ms, r.bwd_ms, r.total_tflops);
    }
    for (const Check& c : checks)
        if (!c.pass) std::printf("  FAIL %s: %s\n", c.name.c_str(), c.detail.c_str());
    std::printf("%d passed, %d failed\n", int(checks.size()) - failed, failed);
    return failed ? 1 : 0;
}
