// kernels/attention.cu — the fused attention kernels behind attention.h's "fused path" (FlashAttention-2 on
// mma.sync tensor cores): causal attention over documents packed in rows, grouped KV heads (GQA). On
// Hopper, head_dim 64 and 128 run the same algorithm on wgmma and the TMA instead (the forward:
// attention_sm90.cuh; the backward, warp-specialized: attention_sm90_ws_bwd.cuh).
// Owns: flash_attention_supported, flash_attention_backward_workspace, flash_attention_forward,
// flash_attention_backward, and the `Attention` class at the end: the one call site, which takes this path
// for the head dims it supports and the reference path (attention_ref.cu) otherwise. Nothing T x T is ever
// stored; the forward saves only o and lse. Given RoPE's tables (Rotation), the backward hands dq and dk
// back through the rotation: the warp-specialized Hopper backwards as they write them (store_dk_dv,
// dq_from_tiles_rotated_kernel), the other paths with rope.cu's kernel after.
//
// Math (per batch b, query head h, kv head g = h / (H/KVH), scale = 1/sqrt(Dh)):
//   s_tj = scale * q_t . k_j   allowed for doc_start[t] <= j <= t
//   p_tj = exp(s_tj - lse_t),  lse_t = log sum_j exp(s_tj),   o_t = sum_j p_tj v_j
//   backward: D_t = dO_t . o_t,  dp_tj = dO_t . v_j,  ds_tj = p_tj (dp_tj - D_t)
//             dq_t = scale sum_j ds_tj k_j,  dk_j = scale sum_{t,h in group} ds_tj q_t,  dv_j = sum_{t,h} p_tj dO_t
// Exponentials are exp2 with log2(e) folded into the scale (scale_log2 = scale * log2 e); lse is stored in
// natural log.
//
// Tiling (bf16 operands, fp32 accumulators; m16n8k16 mma.sync, ldmatrix, cp.async; shared-memory rows
// padded by 8 elements so ldmatrix and fragment stores hit 8 distinct 16-byte bank groups):
//   forward   one block = 128 query rows of one (b, h): 4 warps, each 32 rows (two m16 tiles), so every
//             K/V fragment read from shared memory feeds two mma. Loops over key tiles of 64 from the tile
//             holding doc_start of its first row up to the diagonal (tiles wholly before are skipped);
//             the next K/V tile streams in (cp.async, double buffer) while the current one is used.
//             S = Q K^T stays in registers, is masked only on tiles that need it, online softmax per row
//             (max/sum over the 4 lanes of a quad), and P (fp32 C fragments) becomes the bf16 A operand of
//             O += P V without touching shared memory. Blocks with the longest key range start first.
//   backward  one block = a key tile of 16*NW keys (NW warps, each owning 16 keys) of one (b, g). It walks
//             the query tiles that see its keys (descending) and, for each, the group's H/KVH query heads,
//             so dK and dV of the kv head are summed in registers, in a fixed order. Per (tile, head):
//             S^T = K Q^T (accumulator started at -lse/scale) -> P^T, packed to bf16 at once; dV += P^T dO;
//             dP^T = V dO^T (started at -D); dS^T = P^T (dP^T - D); dK += dS^T Q (P^T and dS^T go from C
//             fragments to A fragments in registers); dS^T goes to shared memory for dQ_part = dS K.
//             A small kernel first computes D = rowsum(dO o).
//
// Determinism (scheme b, ordered accumulation): dq of query tile i of head h receives one partial from each
// key-tile block j in [jmin(i), jmax(i)] (jmin from doc_start of the tile's first row, jmax the diagonal).
// The partials are added into an fp32 workspace tile strictly in increasing j: block j waits until the
// tile's counter equals j - jmin(i), adds its partial with reductions (red.global.add, 16 bytes at a time
// from sm_90: the L2 adds it to the sum of the partials before, fp32, round to nearest, subnormals
// flushed), and after its next barrier thread 0 bumps the counter with a release store (cumulative over the
// block's reductions). The first contributor stores instead of adding (no zeroing) and the last one (the
// diagonal block) reads the sum, adds its own, scales and writes dq in bf16, so no conversion kernel runs.
// Since no two additions to an element are ever in flight at once, the sum is the same every run; every
// other sum (dK, dV over keys and heads, D, the softmax) has one owner and a fixed order, so the same
// inputs give bitwise the same outputs. Deadlock freedom: blocks take a ticket (atomicAdd) as they start
// and derive (j, b, g) from it, low j first; a block only ever waits on lower j of its own (b, g), which
// took lower tickets and so is already running or done. Low j first is also longest first (block j sees ~T
// - j*BC queries), and since every block walks the query tiles from the end, a block's predecessor is
// normally ahead of it. Cost: per (key tile, query tile, head) one BR x Dh fp32 reduction through L2 (FA2's
// atomicAdd traffic) and the waits of blocks that catch up with their predecessor; the workspace is 4 bytes
// per dq element plus D and the counters (O(B*H*T*Dh)).
//
// Head dims: any even Dh <= 128, padded inside the kernels to D = 32, 64, 96 or 128 with zero-filled
// shared-memory columns; 64 and 128 are the fast ones (no padding). Dh % 8 == 0 uses 16-byte copies, other
// even Dh 4-byte copies. Any T, B, H, KVH with H % KVH == 0; int64 offsets throughout.
#include "kernels/attention.h"

#include "support/cuda_calls.h"
#include "kernels/cuda_common.cuh"
#include "kernels/gemm.h"
#include "kernels/ops.h"

#include <cstdio>

#include <cmath>
#include <initializer_list>
#include <string>

#include "kernels/attention_tiles.cuh"

namespace {

// ---------------------------------------------------------------------------------------------- forward
struct FwdArgs {
    const bf16 *q, *k, *v;
    const int32_t* doc;  // [B, T] or null
    bf16* o;
    float* lse;
    int B, T, H, KVH, Dh;
    float scale_log2;
    bool vec16;
};

// D: padded head dim; MT: m16 tiles per warp; NW: warps; BC: keys per tile; Q_REGS: Q fragments kept in
// registers (else re-read from shared memory for every key tile).
template <int D_, int MT_, int NW_, int BC_, bool Q_REGS_>
struct FwdConfig {
    static constexpr int D = D_, MT = MT_, NW = NW_, BC = BC_;
    static constexpr bool Q_REGS = Q_REGS_;
    static constexpr int BR = 16 * MT * NW, THREADS = 32 * NW, S = D + 8;
    static constexpr size_t smem = size_t(BR + 4 * BC) * S * sizeof(bf16);  // Q, K[2], V[2]
    static_assert(D % 32 == 0 && BC % 16 == 0, "tile shape");
};

// o[t] = sum_j softmax_j(scale q_t . k_j) v_j over doc_start[t] <= j <= t;  lse[t] = log sum_j exp(...)
template <class C>
__global__ void __launch_bounds__(C::THREADS, 2) flash_forward_kernel(const FwdArgs p) {
    constexpr int D = C::D, MT = C::MT, BR = C::BR, BC = C::BC, S = C::S;
    constexpr int NT = BC / 8, ND = D / 8, KD = D / 16;
    extern __shared__ __align__(16) unsigned char smem_raw[];
    bf16* Qs = reinterpret_cast<bf16*>(smem_raw);  // [BR][S]
    bf16* Ks = Qs + BR * S;                         // [2][BC][S]
    bf16* Vs = Ks + 2 * BC * S;                     // [2][BC][S]

    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, gr = lane / 4, tq = lane % 4;
    const int T = p.T, H = p.H, Dh = p.Dh;
    const int bh = blockIdx.x, b = bh / H, h = bh % H, g = h / (H / p.KVH);
    const int q0 = (int(gridDim.y) - 1 - int(blockIdx.y)) * BR;  // longest key ranges first
    const int64_t q_stride = int64_t(H) * Dh, kv_stride = int64_t(p.KVH) * Dh;
    const bf16* qg = p.q + (int64_t(b) * T + q0) * q_stride + int64_t(h) * Dh;
    const bf16* kg = p.k + int64_t(b) * T * kv_stride + int64_t(g) * Dh;
    const bf16* vg = p.v + int64_t(b) * T * kv_stride + int64_t(g) * Dh;
    const int32_t* doc = p.doc ? p.doc + int64_t(b) * T : nullptr;

    const int last_row = min(q0 + BR - 1, T - 1);
    const int ds_first = doc ? doc[q0] : 0, ds_last = doc ? doc[last_row] : 0;
    const int kt_begin = ds_first / BC, kt_end = last_row / BC;
    const int wrow = warp * 16 * MT;  // this warp's first row in the tile
    const uint32_t sQw = smem_u32(Qs) + uint32_t(wrow * S * 2) + lane_rows16<S>(lane);
    const uint32_t sK0 = smem_u32(Ks) + lane_cols16<S>(lane), sV0 = smem_u32(Vs) + lane_rows16<S>(lane);

    int row_ds[MT][2];  // doc_start of this thread's rows wrow + 16 mt + gr + 8 hf (clamped to T-1)
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int hf = 0; hf < 2; ++hf) row_ds[mt][hf] = doc ? doc[min(q0 + wrow + 16 * mt + gr + 8 * hf, T - 1)] : 0;

    load_tile<BR, D, C::THREADS>(Qs, qg, q_stride, T - q0, Dh, p.vec16);
    load_tile<BC, D, C::THREADS>(Ks, kg + int64_t(kt_begin) * BC * kv_stride, kv_stride, T - kt_begin * BC, Dh, p.vec16);
    load_tile<BC, D, C::THREADS>(Vs, vg + int64_t(kt_begin) * BC * kv_stride, kv_stride, T - kt_begin * BC, Dh, p.vec16);
    cp_async_commit();

    float acc[MT][ND][4];
    float m[MT][2], l[MT][2];  // running max (scaled, log2 units) and this lane's part of the running sum
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
        for (int nd = 0; nd < ND; ++nd) acc[mt][nd][0] = acc[mt][nd][1] = acc[mt][nd][2] = acc[mt][nd][3] = 0.f;
        m[mt][0] = m[mt][1] = -INFINITY;
        l[mt][0] = l[mt][1] = 0.f;
    }
    uint32_t qf[C::Q_REGS ? MT : 1][C::Q_REGS ? KD : 1][4];

    for (int kt = kt_begin; kt <= kt_end; ++kt) {
        const int buf = (kt - kt_begin) & 1;
        cp_async_wait_all();
        __syncthreads();  // tile kt has landed; every warp is done with buffer buf ^ 1 (tile kt - 1)
        if (kt < kt_end) {
            const int64_t next = int64_t(kt + 1) * BC * kv_stride;
            load_tile<BC, D, C::THREADS>(Ks + (buf ^ 1) * BC * S, kg + next, kv_stride, T - (kt + 1) * BC, Dh, p.vec16);
            load_tile<BC, D, C::THREADS>(Vs + (buf ^ 1) * BC * S, vg + next, kv_stride, T - (kt + 1) * BC, Dh, p.vec16);
            cp_async_commit();
        }
        if constexpr (C::Q_REGS) {
            if (kt == kt_begin) {
#pragma unroll
                for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                    for (int kk = 0; kk < KD; ++kk)
                        ldsm_x4(sQw + (16 * mt * S + kk * 16) * 2, qf[mt][kk]);
            }
        }
        const uint32_t sK = sK0 + buf * (BC * S * 2), sV = sV0 + buf * (BC * S * 2);

        // S = Q K^T: B[k = d][n = key] = K[key][d], read row-major (non-transposed ldmatrix)
        float s[MT][NT][4];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) s[mt][nt][0] = s[mt][nt][1] = s[mt][nt][2] = s[mt][nt][3] = 0.f;
#pragma unroll
        for (int kk = 0; kk < KD; ++kk) {
            uint32_t a[MT][4];
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
                if constexpr (C::Q_REGS) {
#pragma unroll
                    for (int r = 0; r < 4; ++r) a[mt][r] = qf[mt][kk][r];
                } else {
                    ldsm_x4(sQw + (16 * mt * S + kk * 16) * 2, a[mt]);
                }
            }
#pragma unroll
            for (int np = 0; np < BC / 16; ++np) {
                uint32_t bk[4];  // keys 16np..+7 / +8..+15 (n), d 16kk..+7 / +8..+15 (k)
                ldsm_x4(sK + (np * 16 * S + kk * 16) * 2, bk);
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) {
                    mma16816(s[mt][2 * np], a[mt], bk[0], bk[1]);
                    mma16816(s[mt][2 * np + 1], a[mt], bk[2], bk[3]);
                }
            }
        }

        // Mask where a key may fall outside [doc_start[t], t] or beyond T: only the diagonal/boundary tiles.
        const int k0 = kt * BC;
        if (k0 + BC - 1 > q0 || k0 < ds_last || k0 + BC > T) {
#pragma unroll
            for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                for (int nt = 0; nt < NT; ++nt)
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        const int row = q0 + wrow + 16 * mt + gr + 8 * (e >> 1), key = k0 + nt * 8 + 2 * tq + (e & 1);
                        if (!(key >= row_ds[mt][e >> 1] && key <= row && key < T)) s[mt][nt][e] = -INFINITY;
                    }
        }

        // Online softmax: m_new = max(m, rowmax(s) * scale_log2); O and l scale by 2^(m - m_new)
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int hf = 0; hf < 2; ++hf) {
                float mx = -INFINITY;
#pragma unroll
                for (int nt = 0; nt < NT; ++nt) mx = fmaxf(mx, fmaxf(s[mt][nt][2 * hf], s[mt][nt][2 * hf + 1]));
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));  // the 4 lanes of a quad share a row
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
                const float m_new = fmaxf(m[mt][hf], mx * p.scale_log2);
                const float m_use = m_new == -INFINITY ? 0.f : m_new;  // a row with nothing allowed yet
                const float alpha = ex2(m[mt][hf] - m_use);
                m[mt][hf] = m_new;
                float sum = 0.f;
#pragma unroll
                for (int nt = 0; nt < NT; ++nt)
#pragma unroll
                    for (int e = 2 * hf; e < 2 * hf + 2; ++e) {
                        s[mt][nt][e] = ex2(fmaf(s[mt][nt][e], p.scale_log2, -m_use));
                        sum += s[mt][nt][e];
                    }
                l[mt][hf] = l[mt][hf] * alpha + sum;
#pragma unroll
                for (int nd = 0; nd < ND; ++nd) acc[mt][nd][2 * hf] *= alpha, acc[mt][nd][2 * hf + 1] *= alpha;
            }

        // O += P V: the C fragments of n-tiles 2kc, 2kc+1 are the A fragment of k-step kc;
        // B[k = key][n = d] = V[key][d], read with the transposing ldmatrix
#pragma unroll
        for (int kc = 0; kc < BC / 16; ++kc) {
            uint32_t pa[MT][4];
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
                pa[mt][0] = pack_bf16(s[mt][2 * kc][0], s[mt][2 * kc][1]);
                pa[mt][1] = pack_bf16(s[mt][2 * kc][2], s[mt][2 * kc][3]);
                pa[mt][2] = pack_bf16(s[mt][2 * kc + 1][0], s[mt][2 * kc + 1][1]);
                pa[mt][3] = pack_bf16(s[mt][2 * kc + 1][2], s[mt][2 * kc + 1][3]);
            }
#pragma unroll
            for (int dp = 0; dp < D / 16; ++dp) {
                uint32_t bv[4];  // keys 16kc..+7 / +8..+15 (k), d 16dp..+7 / +8..+15 (n)
                ldsm_x4_t(sV + (kc * 16 * S + dp * 16) * 2, bv);
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) {
                    mma16816(acc[mt][2 * dp], pa[mt], bv[0], bv[1]);
                    mma16816(acc[mt][2 * dp + 1], pa[mt], bv[2], bv[3]);
                }
            }
        }
    }

    // o = acc / l, lse = (m + log2 l) ln 2
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int hf = 0; hf < 2; ++hf) {
            float lt = l[mt][hf];
            lt += __shfl_xor_sync(0xffffffffu, lt, 1);
            lt += __shfl_xor_sync(0xffffffffu, lt, 2);
            const float inv = lt > 0.f ? 1.f / lt : 0.f;
            const int row = q0 + wrow + 16 * mt + gr + 8 * hf;
            if (row < T) {
                bf16* orow = p.o + (int64_t(b) * T + row) * q_stride + int64_t(h) * Dh;
#pragma unroll
                for (int nd = 0; nd < ND; ++nd) {
                    const int col = nd * 8 + 2 * tq;
                    if (col < Dh)
                        *reinterpret_cast<__nv_bfloat162*>(orow + col) =
                            __floats2bfloat162_rn(acc[mt][nd][2 * hf] * inv, acc[mt][nd][2 * hf + 1] * inv);
                }
                if (tq == 0) p.lse[(int64_t(b) * H + h) * T + row] = m[mt][hf] * kLn2 + logf(lt);
            }
        }
}

// ---------------------------------------------------------------------------------------------- backward
// D[b, h, t] = sum_d dO[b, t, h, d] o[b, t, h, d]: L lanes per (b, t, h) row, 8 elements (16 bytes) per
// lane and load, 32 / L rows per warp (L = 8 at Dh = 64: a row is one 128-byte line of o and of dO), a
// fixed-order reduction. Needs Dh % 8 == 0 and 16-byte aligned rows; else L = 32 lanes of 2 elements.
template <int L, int V>  // L lanes per row, V elements per load (8: 16-byte loads, 2: 4-byte loads)
__global__ void flash_backward_rowdot_kernel(const bf16* o, const bf16* dO, float* Dr, int64_t rows, int T, int H, int Dh) {
    const int64_t row = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / L;
    const int lane = threadIdx.x % L;
    float sum = 0.f;
    if (row < rows)
        for (int i = lane * V; i < Dh; i += L * V) {
            __nv_bfloat162 a[V / 2], c[V / 2];
            if constexpr (V == 8) {
                *reinterpret_cast<uint4*>(a) = *reinterpret_cast<const uint4*>(o + row * Dh + i);
                *reinterpret_cast<uint4*>(c) = *reinterpret_cast<const uint4*>(dO + row * Dh + i);
            } else {
                a[0] = *reinterpret_cast<const __nv_bfloat162*>(o + row * Dh + i);
                c[0] = *reinterpret_cast<const __nv_bfloat162*>(dO + row * Dh + i);
            }
#pragma unroll
            for (int e = 0; e < V / 2; ++e) {
                const float2 af = __bfloat1622float2(a[e]), cf = __bfloat1622float2(c[e]);
                sum = fmaf(af.x, cf.x, fmaf(af.y, cf.y, sum));
            }
        }
#pragma unroll
    for (int off = L / 2; off > 0; off /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, off);
    if (lane == 0 && row < rows) {
        const int64_t bt = row / H;
        const int h = int(row % H);
        Dr[(bt / T * H + h) * T + bt % T] = sum;
    }
}


struct BwdArgs {
    const bf16 *q, *k, *v, *dO;
    const float* lse;    // [B, H, T]
    const int32_t* doc;  // [B, T] or null
    bf16 *dq, *dk, *dv;
    float* dq_acc;       // [B, H, nqt] tiles of BR x D floats, in fragment order
    const float* Dr;     // [B, H, T]
    unsigned* counters;  // [B, H, nqt]: partials added so far to each dq tile
    unsigned* ticket;    // block start order
    int B, T, H, KVH, Dh;
    float scale, scale_log2, lse_to_s;  // lse_to_s = 1 / scale: lse in units of the raw score q.k
    bool vec16;
    Rotation rope = {};  // set: dq, dk written rotated back by -θ (the warp-specialized Hopper backwards)
};

// How a block adds its dq partial. kDqOrdered: in the key blocks' order, with reductions; kDqBulk (the Hopper
// backwards only; the library's at head_dim 64) keeps the order and has the TMA add the partial from shared
// memory. kDqAtomic (FA2's unordered float atomics, no waits) and kDqNone (no dq) exist for dev/attention.cu
// as timing bounds whose dq is wrong (the warp-specialized backward's kDqAtomic adds onto zeroed tiles: dq
// right, the bits not the same run to run).
enum DqMode { kDqOrdered, kDqAtomic, kDqNone, kDqBulk };

// D: padded head dim; NW: warps (keys per block BC = 16 NW); BR: query rows per step; KV_REGS: K and V A
// fragments kept in registers for the whole block (else re-read from shared memory every step).
template <int D_, int NW_, int BR_, bool KV_REGS_, DqMode DQ_ = kDqOrdered>
struct BwdConfig {
    static constexpr int D = D_, NW = NW_, BR = BR_;
    static constexpr bool KV_REGS = KV_REGS_;
    static constexpr DqMode DQ = DQ_;
    static constexpr int BC = 16 * NW, THREADS = 32 * NW, S = D + 8, SD = BR + 8;
    static constexpr int MQ = BR / 16, NDS = NW / MQ, DQW = D / NDS;  // dQ: MQ row tiles x NDS column splits
    static constexpr size_t smem = size_t(2 * BC + 4 * BR) * S * sizeof(bf16)  // K, V, Q[2], dO[2]
                                   + size_t(BC) * SD * sizeof(bf16)           // dS^T
                                   + size_t(6) * BR * sizeof(float);          // lse, D, doc_start [2] each
    static_assert(D % 32 == 0 && BR % 16 == 0 && NW % MQ == 0 && DQW % 16 == 0 && BR <= THREADS, "tile shape");
};

// Spins until *c >= target. A legitimate wait is about one step of the block before; after 2^24 polls
// (over a second) the ordering is broken (a bug): trap, so the run fails with a CUDA error instead of hanging.
__device__ __forceinline__ void wait_counter(const unsigned* c, unsigned target) {
    unsigned polls = 0;
    while (ld_acquire(c) < target) {
        __nanosleep(64);
        if (++polls == (1u << 24)) __trap();
    }
}

// The dq tile a block has added its partial to, not yet handed to the next contributor: thread 0 releases the
// tile's counter with the next contributor's turn. Ordered (BULK false): right after the next step's first
// barrier, which orders every thread's stores and reductions before the release (gpu scope, cumulative).
// kDqBulk (BULK true): two steps on, once the TMA's add has completed (bulk_wait<1>: all but the last group).
struct DqHandoff {
    int tile = -1, tile2 = -1;     // the last step's tile, and (BULK) the one before; -1: none
    unsigned turn = 0, turn2 = 0;  // the values released

    __device__ __forceinline__ void hand(int cidx, unsigned next_turn) { tile = cidx, turn = next_turn; }
    // at the top of each step, after its first barrier; finish: after the loop's last barrier
    template <bool BULK>
    __device__ __forceinline__ void after_barrier(unsigned* counters, int tid) {
        if constexpr (BULK) {
            if (tid == 0) {
                bulk_wait<1>();  // the add of two steps ago has completed
                if (tile2 >= 0) st_release(counters + tile2, turn2);
            }
            tile2 = tile, turn2 = turn;
        } else if (tile >= 0 && tid == 0) {
            st_release(counters + tile, turn);
        }
        tile = -1;
    }
    template <bool BULK>
    __device__ __forceinline__ void finish(unsigned* counters, int tid) {
        if (tid != 0) return;
        if constexpr (BULK) {
            bulk_wait<0>();
            if (tile2 >= 0) st_release(counters + tile2, turn2);
        }
        if (tile >= 0) st_release(counters + tile, turn);
    }
};

// kDqBulk, thread 0: the partial at src (BYTES of fp32 in shared memory) into tile cidx in the tile's turn: the
// first contributor stores it, the others wait for the one before to release the tile and add it in the L2.
template <uint32_t BYTES>
__device__ __forceinline__ void bulk_add_partial(const BwdArgs& p, int cidx, bool first, unsigned turn, uint32_t src) {
    if (!first) wait_counter(p.counters + cidx, turn);
    float* tile = p.dq_acc + int64_t(cidx) * (BYTES / sizeof(float));
    if (first) bulk_store(tile, src, BYTES);
    else bulk_reduce_add_f32(tile, src, BYTES);
    bulk_commit();
}

// The last query tile a backward block must visit (its keys from key block j, BC wide; its first tile i_lo):
// with documents, the last tile whose first row's document starts at or before this block (doc_start is
// non-decreasing, so the tiles that pass are a prefix from i_lo); without, the last tile. Every thread calls it.
template <int BR, int BC, int THREADS>
__device__ __forceinline__ int last_query_tile(const int32_t* doc, int i_lo, int nqt, int j) {
    if (!doc) return nqt - 1;
    int count = 0;
    for (int base = i_lo; base < nqt; base += THREADS) {
        const int i = base + int(threadIdx.x);
        count += __syncthreads_count(i < nqt && doc[i * BR] / BC <= j);
    }
    return i_lo + count - 1;
}

// An S^T-shaped accumulator (n-tiles of 8 query columns; this lane's columns 2 tq, 2 tq + 1 of each) started
// at -factor * col[query]: S^T at -lse/scale (the softmax's subtraction folded into the product), dP^T at -D.
template <int NTQ>
__device__ __forceinline__ void start_at_minus(float (&acc)[NTQ][4], const float* col, float factor, int tq) {
#pragma unroll
    for (int nt = 0; nt < NTQ; ++nt) {
        const float2 v = *reinterpret_cast<const float2*>(col + nt * 8 + 2 * tq);
        acc[nt][0] = acc[nt][2] = -v.x * factor;
        acc[nt][1] = acc[nt][3] = -v.y * factor;
    }
}

// P^T = exp2(scale_log2 (s - lse/scale)) from the S^T accumulators st (this lane's keys key_q and key_q + 8,
// relative to the tile's first query q0; its queries 2 tq.. of each n-tile), zero where masked (key outside
// [doc_start[t], t], t >= T: rows_q = T - q0), as the bf16 A fragments of the k-steps over queries (the C
// fragments of n-tiles 2kq, 2kq+1). Only this packed copy is kept, so P and dP never both sit in fp32.
// mma.sync's m16n8 and wgmma's m64 accumulators lay a warp's 16 rows out alike: all three backwards use it.
template <int BR>
__device__ __forceinline__ void probs_as_fragments(float (&st)[BR / 8][4], uint32_t (&pa)[BR / 16][4], float scale_log2, bool need_mask,
                                                   int key_q, int rows_q, int q0, const int* ds_b, int tq) {
#pragma unroll
    for (int nt = 0; nt < BR / 8; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int c = nt * 8 + 2 * tq + (e & 1);  // query column in the tile
            float pv = ex2(st[nt][e] * scale_log2);
            if (need_mask) {
                const int key = key_q + 8 * (e >> 1);  // relative to q0
                if ((c >= rows_q) | (key > c) | (key + q0 < ds_b[c])) pv = 0.f;
            }
            st[nt][e] = pv;
        }
    pack_fragments(st, pa);
}

// Block (j, b, g): dV_j = sum_{h in group, t} P^T dO,  dK_j = scale sum dS^T Q,  dq tiles += dS K in order of j.
template <class C>
__global__ void __launch_bounds__(C::THREADS, 1) flash_backward_kernel(const BwdArgs p) {
    constexpr int D = C::D, BR = C::BR, BC = C::BC, S = C::S, SD = C::SD, THREADS = C::THREADS;
    constexpr int NTQ = BR / 8, ND = D / 8, KD = D / 16, NTD = C::DQW / 8;
    extern __shared__ __align__(16) unsigned char smem_raw[];
    bf16* Ks = reinterpret_cast<bf16*>(smem_raw);  // [BC][S]
    bf16* Vs = Ks + BC * S;                         // [BC][S]
    bf16* Qs = Vs + BC * S;                         // [2][BR][S]
    bf16* dOs = Qs + 2 * BR * S;                    // [2][BR][S]
    bf16* dSs = dOs + 2 * BR * S;                   // [BC][SD]: dS^T, keys x queries
    float* lse_s = reinterpret_cast<float*>(dSs + BC * SD);  // [2][BR] (8-byte aligned: BC * SD * 2 % 8 == 0)
    float* dr_s = lse_s + 2 * BR;                            // [2][BR]
    int* ds_s = reinterpret_cast<int*>(dr_s + 2 * BR);       // [2][BR]
    __shared__ int s_ticket;

    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, gr = lane / 4, tq = lane % 4;
    const int T = p.T, H = p.H, KVH = p.KVH, Dh = p.Dh, G = H / KVH;
    const int nqt = (T + BR - 1) / BR, nchains = p.B * KVH;
    if (tid == 0) s_ticket = int(atomicAdd(p.ticket, 1u));
    __syncthreads();
    const int j = s_ticket / nchains, bg = s_ticket % nchains, b = bg / KVH, g = bg % KVH, k0 = j * BC;
    const int64_t q_stride = int64_t(H) * Dh, kv_stride = int64_t(KVH) * Dh;
    const int32_t* doc = p.doc ? p.doc + int64_t(b) * T : nullptr;

    // Query tiles that see these keys: i_lo (the first reaching key k0) .. i_hi
    const int i_lo = k0 / BR, i_hi = last_query_tile<BR, BC, THREADS>(doc, i_lo, nqt, j);
    const int n_steps = (i_hi - i_lo + 1) * G;  // step = (query tile i descending, head h of the group)

    auto load_step = [&](int step, int bb) {
        const int i = i_hi - step / G, h = g * G + step % G, q0 = i * BR;
        const int64_t off = (int64_t(b) * T + q0) * q_stride + int64_t(h) * Dh;
        load_tile<BR, D, THREADS>(Qs + bb * BR * S, p.q + off, q_stride, T - q0, Dh, p.vec16);
        load_tile<BR, D, THREADS>(dOs + bb * BR * S, p.dO + off, q_stride, T - q0, Dh, p.vec16);
        if (tid < BR) {
            const bool ok = q0 + tid < T;
            const int64_t rix = (int64_t(b) * H + h) * T + q0 + tid;
            cp_async4(smem_u32(lse_s + bb * BR + tid), ok ? p.lse + rix : p.lse, ok ? 4 : 0);
            cp_async4(smem_u32(dr_s + bb * BR + tid), ok ? p.Dr + rix : p.Dr, ok ? 4 : 0);
            cp_async4(smem_u32(ds_s + bb * BR + tid), doc && ok ? static_cast<const void*>(doc + q0 + tid) : p.lse, doc && ok ? 4 : 0);
        }
    };

    load_tile<BC, D, THREADS>(Ks, p.k + (int64_t(b) * T + k0) * kv_stride + int64_t(g) * Dh, kv_stride, T - k0, Dh, p.vec16);
    load_tile<BC, D, THREADS>(Vs, p.v + (int64_t(b) * T + k0) * kv_stride + int64_t(g) * Dh, kv_stride, T - k0, Dh, p.vec16);
    load_step(0, 0);
    cp_async_commit();

    const int kw = warp * 16;                                   // this warp's keys in the tile (S^T, dK, dV)
    const int mq = (warp % C::MQ) * 16, dq0 = (warp / C::MQ) * C::DQW;  // this warp's dQ rows and columns
    const uint32_t sKw = smem_u32(Ks) + uint32_t(kw * S * 2) + lane_rows16<S>(lane);  // A: this warp's keys
    const uint32_t sVw = smem_u32(Vs) + uint32_t(kw * S * 2) + lane_rows16<S>(lane);
    const uint32_t sKt = smem_u32(Ks) + uint32_t(dq0 * 2) + lane_rows16<S>(lane);     // B of dQ (.trans)
    const uint32_t sdS = smem_u32(dSs) + uint32_t(mq * 2) + lane_cols16<SD>(lane);    // A of dQ (.trans)
    const uint32_t sQc = smem_u32(Qs) + lane_cols16<S>(lane), sQr = smem_u32(Qs) + lane_rows16<S>(lane);
    const uint32_t sOc = smem_u32(dOs) + lane_cols16<S>(lane), sOr = smem_u32(dOs) + lane_rows16<S>(lane);
    float dk[ND][4], dv[ND][4];
#pragma unroll
    for (int nd = 0; nd < ND; ++nd)
#pragma unroll
        for (int e = 0; e < 4; ++e) dk[nd][e] = dv[nd][e] = 0.f;
    uint32_t kf[C::KV_REGS ? KD : 1][4], vf[C::KV_REGS ? KD : 1][4];
    DqHandoff handoff;  // the last dq partial's tile, released in the next step

    for (int step = 0; step < n_steps; ++step) {
        const int bb = step & 1;
        cp_async_wait_all();
        __syncthreads();  // step's tiles landed; all warps are done with buffer bb ^ 1 and with dS^T
        handoff.after_barrier<false>(p.counters, tid);  // the previous step's partial
        if (step + 1 < n_steps) {
            load_step(step + 1, bb ^ 1);
            cp_async_commit();
        }
        if constexpr (C::KV_REGS) {
            if (step == 0) {
#pragma unroll
                for (int kk = 0; kk < KD; ++kk) {
                    ldsm_x4(sKw + kk * 16 * 2, kf[kk]);
                    ldsm_x4(sVw + kk * 16 * 2, vf[kk]);
                }
            }
        }
        const int i = i_hi - step / G, h = g * G + step % G, q0 = i * BR;
        const uint32_t boff = bb * (BR * S * 2);  // buffer bb of Q and dO
        const float* lse_b = lse_s + bb * BR;
        const float* dr_b = dr_s + bb * BR;
        const int* ds_b = ds_s + bb * BR;

        // S^T - lse/scale = K Q^T + (-lse/scale) (rows: this warp's 16 keys; columns: BR queries; the
        // accumulator starts at -lse of its column). B[k = d][n = query] = Q[query][d].
        float st[NTQ][4];
        start_at_minus(st, lse_b, p.lse_to_s, tq);
#pragma unroll
        for (int kk = 0; kk < KD; ++kk) {
            uint32_t a[4];
            if constexpr (C::KV_REGS) {
#pragma unroll
                for (int r = 0; r < 4; ++r) a[r] = kf[kk][r];
            } else {
                ldsm_x4(sKw + kk * 16 * 2, a);
            }
#pragma unroll
            for (int np = 0; np < BR / 16; ++np) {
                uint32_t bq[4];
                ldsm_x4(sQc + boff + (np * 16 * S + kk * 16) * 2, bq);
                mma16816(st[2 * np], a, bq[0], bq[1]);
                mma16816(st[2 * np + 1], a, bq[2], bq[3]);
            }
        }

        // P^T, masked, as bf16 A fragments (dS below uses them too)
        const bool need_mask = k0 + BC - 1 > q0 || q0 + BR > T || k0 < ds_b[BR - 1];
        uint32_t pa[BR / 16][4];
        probs_as_fragments<BR>(st, pa, p.scale_log2, need_mask, k0 + kw + gr - q0, T - q0, q0, ds_b, tq);

        // dV += P^T dO: B[k = query][n = d] = dO[query][d] (transposing ldmatrix)
#pragma unroll
        for (int kq = 0; kq < BR / 16; ++kq)
#pragma unroll
            for (int dp = 0; dp < D / 16; ++dp) {
                uint32_t bo[4];
                ldsm_x4_t(sOr + boff + (kq * 16 * S + dp * 16) * 2, bo);
                mma16816(dv[2 * dp], pa[kq], bo[0], bo[1]);
                mma16816(dv[2 * dp + 1], pa[kq], bo[2], bo[3]);
            }

        // dP^T - D = V dO^T + (-D) (the accumulator starts at -D of its column)
        float dpt[NTQ][4];
        start_at_minus(dpt, dr_b, 1.f, tq);
#pragma unroll
        for (int kk = 0; kk < KD; ++kk) {
            uint32_t a[4];
            if constexpr (C::KV_REGS) {
#pragma unroll
                for (int r = 0; r < 4; ++r) a[r] = vf[kk][r];
            } else {
                ldsm_x4(sVw + kk * 16 * 2, a);
            }
#pragma unroll
            for (int np = 0; np < BR / 16; ++np) {
                uint32_t bo[4];
                ldsm_x4(sOc + boff + (np * 16 * S + kk * 16) * 2, bo);
                mma16816(dpt[2 * np], a, bo[0], bo[1]);
                mma16816(dpt[2 * np + 1], a, bo[2], bo[3]);
            }
        }

        // dS^T = P^T (dP^T - D) (scale applied at the end); register r of pa[kq] holds n-tile 2kq + r/2,
        // elements 2(r%2), 2(r%2)+1
#pragma unroll
        for (int kq = 0; kq < BR / 16; ++kq)
#pragma unroll
            for (int r = 0; r < 4; ++r) {
                __nv_bfloat162 pb;
                memcpy(&pb, &pa[kq][r], 4);
                const float2 pf = __bfloat1622float2(pb);
                const int nt = 2 * kq + r / 2, e = 2 * (r % 2);
                dpt[nt][e] *= pf.x;
                dpt[nt][e + 1] *= pf.y;
            }

        // dK += dS^T Q, and dS^T (bf16, the same rounding) into shared memory for dQ
#pragma unroll
        for (int kq = 0; kq < BR / 16; ++kq) {
            const uint32_t a[4] = {pack_bf16(dpt[2 * kq][0], dpt[2 * kq][1]), pack_bf16(dpt[2 * kq][2], dpt[2 * kq][3]),
                                   pack_bf16(dpt[2 * kq + 1][0], dpt[2 * kq + 1][1]),
                                   pack_bf16(dpt[2 * kq + 1][2], dpt[2 * kq + 1][3])};
            *reinterpret_cast<uint32_t*>(dSs + (kw + gr) * SD + kq * 16 + 2 * tq) = a[0];
            *reinterpret_cast<uint32_t*>(dSs + (kw + gr + 8) * SD + kq * 16 + 2 * tq) = a[1];
            *reinterpret_cast<uint32_t*>(dSs + (kw + gr) * SD + kq * 16 + 8 + 2 * tq) = a[2];
            *reinterpret_cast<uint32_t*>(dSs + (kw + gr + 8) * SD + kq * 16 + 8 + 2 * tq) = a[3];
#pragma unroll
            for (int dp = 0; dp < D / 16; ++dp) {
                uint32_t bq[4];
                ldsm_x4_t(sQr + boff + (kq * 16 * S + dp * 16) * 2, bq);
                mma16816(dk[2 * dp], a, bq[0], bq[1]);
                mma16816(dk[2 * dp + 1], a, bq[2], bq[3]);
            }
        }

        if constexpr (C::DQ == kDqNone) continue;
        // Our turn for this dq tile: the partials of blocks jmin .. j-1 are in.
        const int jmin = doc ? ds_b[0] / BC : 0, jmax = min(q0 + BR - 1, T - 1) / BC;
        const bool first = j == jmin, last = j == jmax;
        const int cidx = (b * H + h) * nqt + i;  // < B * H * T
        if (C::DQ != kDqAtomic && tid == 0 && !first) wait_counter(p.counters + cidx, unsigned(j - jmin));
        __syncthreads();  // dS^T complete; the counter seen

        // dQ_part = dS K: A[m = query][k = key] from dS^T (transposing ldmatrix); B[k = key][n = d] = K[key][d]
        float dq[NTD][4];
#pragma unroll
        for (int nt = 0; nt < NTD; ++nt) dq[nt][0] = dq[nt][1] = dq[nt][2] = dq[nt][3] = 0.f;
#pragma unroll
        for (int kc = 0; kc < BC / 16; ++kc) {
            uint32_t a[4];
            ldsm_x4_t(sdS + kc * 16 * SD * 2, a);
#pragma unroll
            for (int dp = 0; dp < C::DQW / 16; ++dp) {
                uint32_t bk[4];
                ldsm_x4_t(sKt + (kc * 16 * S + dp * 16) * 2, bk);
                mma16816(dq[2 * dp], a, bk[0], bk[1]);
                mma16816(dq[2 * dp + 1], a, bk[2], bk[3]);
            }
        }

        // Into the tile, in fragment order: one float4 per lane per n-tile (coalesced 512-byte rows). The first
        // contributor stores, the middle ones add with reductions (red.global.add: the L2 adds our partial to
        // the sum of the ones before, which the counter says are complete), the last (the diagonal block)
        // reads the sum, adds its own, scales and writes bf16 dq.
        float4* accp = reinterpret_cast<float4*>(p.dq_acc + int64_t(cidx) * (BR * D)) + warp * NTD * 32 + lane;
#pragma unroll
        for (int nt = 0; nt < NTD; ++nt) {
            const float4 part = make_float4(dq[nt][0], dq[nt][1], dq[nt][2], dq[nt][3]);
            if (C::DQ == kDqAtomic || (!first && !last)) {
                red_add_f32x4(accp + nt * 32, part);
            } else if (!last) {
                __stcg(accp + nt * 32, part);
            } else {
                const float4 sum = first ? make_float4(0.f, 0.f, 0.f, 0.f) : __ldcg(accp + nt * 32);
                const int col = dq0 + nt * 8 + 2 * tq, row = q0 + mq + gr;
                if (col < Dh) {
                    bf16* dst = p.dq + (int64_t(b) * T + row) * q_stride + int64_t(h) * Dh + col;
                    if (row < T)
                        *reinterpret_cast<__nv_bfloat162*>(dst) = __floats2bfloat162_rn((sum.x + part.x) * p.scale, (sum.y + part.y) * p.scale);
                    if (row + 8 < T)
                        *reinterpret_cast<__nv_bfloat162*>(dst + 8 * q_stride) =
                            __floats2bfloat162_rn((sum.z + part.z) * p.scale, (sum.w + part.w) * p.scale);
                }
            }
        }
        if (!last) handoff.hand(cidx, unsigned(j - jmin + 1));
    }
    __syncthreads();
    handoff.finish<false>(p.counters, tid);

    // dK (scaled) and dV of this warp's 16 keys
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
        const int key = k0 + kw + gr + 8 * hf;
        if (key >= T) continue;
        const int64_t off = (int64_t(b) * T + key) * kv_stride + int64_t(g) * Dh;
#pragma unroll
        for (int nd = 0; nd < ND; ++nd) {
            const int col = nd * 8 + 2 * tq;
            if (col >= Dh) continue;
            *reinterpret_cast<__nv_bfloat162*>(p.dk + off + col) =
                __floats2bfloat162_rn(dk[nd][2 * hf] * p.scale, dk[nd][2 * hf + 1] * p.scale);
            *reinterpret_cast<__nv_bfloat162*>(p.dv + off + col) = __floats2bfloat162_rn(dv[nd][2 * hf], dv[nd][2 * hf + 1]);
        }
    }
}

// ---------------------------------------------------------------------------------------------- launchers
int padded_head_dim(int Dh) { return Dh <= 32 ? 32 : Dh <= 64 ? 64 : Dh <= 96 ? 96 : 128; }

bool all_aligned(std::initializer_list<const void*> ptrs, uintptr_t bytes) {
    for (const void* p : ptrs)
        if (reinterpret_cast<uintptr_t>(p) % bytes != 0) return false;
    return true;
}

void check_shape(const AttentionShape& a, std::initializer_list<const void*> ptrs) {
    if (a.B < 1 || a.T < 1 || a.H < 1 || a.KVH < 1 || a.H % a.KVH != 0 || !flash_attention_supported(a.Dh))
        fail("flash attention: unsupported shape B=" + std::to_string(a.B) + " T=" + std::to_string(a.T) + " H=" +
             std::to_string(a.H) + " KVH=" + std::to_string(a.KVH) + " Dh=" + std::to_string(a.Dh));
    if (!all_aligned(ptrs, 4)) fail("flash attention: tensors must be 4-byte aligned");
}

template <class C>
void launch_forward(const AttentionShape& a, const bf16* q, const bf16* k, const bf16* v, const int32_t* doc_start, bf16* o,
                    float* lse, cudaStream_t stream) {
    static bool configured = false;  // one attribute call per kernel instance
    if (!configured) {
        check_cuda(cudaFuncSetAttribute(flash_forward_kernel<C>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(C::smem)),
                   "cudaFuncSetAttribute(flash_forward_kernel)");
        configured = true;
    }
    FwdArgs p{q, k, v, doc_start, o, lse, a.B, a.T, a.H, a.KVH, a.Dh,
              float(kLog2e / std::sqrt(double(a.Dh))), a.Dh % 8 == 0 && all_aligned({q, k, v}, 16)};
    dim3 grid(unsigned(a.B * a.H), unsigned((a.T + C::BR - 1) / C::BR));
    flash_forward_kernel<C><<<grid, C::THREADS, C::smem, stream>>>(p);
    check_launch("flash_forward_kernel");
}

// The backward workspace: [dq_acc][D][counters][ticket], each region 256-byte aligned.
struct BwdWorkspace {
    float* dq_acc = nullptr;
    float* Dr = nullptr;
    unsigned* counters = nullptr;  // followed by the ticket
    size_t counter_bytes = 0, total = 0;
};
BwdWorkspace bwd_workspace(const AttentionShape& a, int BR, int D, void* base) {
    auto up = [](size_t n) { return (n + 255) / 256 * 256; };
    const size_t nqt = size_t((a.T + BR - 1) / BR), bh = size_t(a.B) * a.H;
    const size_t acc = up(bh * nqt * BR * D * sizeof(float)), dr = up(bh * a.T * sizeof(float));
    BwdWorkspace w;
    w.counter_bytes = (bh * nqt + 1) * sizeof(unsigned);
    w.total = acc + dr + up(w.counter_bytes);
    char* p = static_cast<char*>(base);
    if (p) w.dq_acc = reinterpret_cast<float*>(p), w.Dr = reinterpret_cast<float*>(p + acc),
           w.counters = reinterpret_cast<unsigned*>(p + acc + dr);
    return w;
}

template <class C>
size_t backward_workspace_bytes(const AttentionShape& a) { return bwd_workspace(a, C::BR, C::D, nullptr).total; }

void launch_rowdot(const bf16* o, const bf16* dO, float* Dr, const AttentionShape& a, cudaStream_t stream) {
    const int64_t rows = int64_t(a.B) * a.T * a.H;
    auto blocks = [&](int lanes) { return unsigned((rows * lanes + 255) / 256); };
    if (a.Dh % 8 == 0 && a.Dh <= 64 && all_aligned({o, dO}, 16))
        flash_backward_rowdot_kernel<8, 8><<<blocks(8), 256, 0, stream>>>(o, dO, Dr, rows, a.T, a.H, a.Dh);
    else if (a.Dh % 8 == 0 && all_aligned({o, dO}, 16))
        flash_backward_rowdot_kernel<16, 8><<<blocks(16), 256, 0, stream>>>(o, dO, Dr, rows, a.T, a.H, a.Dh);
    else
        flash_backward_rowdot_kernel<32, 2><<<blocks(32), 256, 0, stream>>>(o, dO, Dr, rows, a.T, a.H, a.Dh);
    check_launch("flash_backward_rowdot_kernel");
}

// Before a backward kernel: the counters zeroed and D = rowsum(dO o); returns the kernel's arguments.
BwdArgs prepare_backward(int BR, int D, const AttentionShape& a, const bf16* q, const bf16* k, const bf16* v, const bf16* o,
                         const bf16* dO, const float* lse, const int32_t* doc_start, bf16* dq, bf16* dk, bf16* dv, void* workspace,
                         cudaStream_t stream) {
    const BwdWorkspace w = bwd_workspace(a, BR, D, workspace);
    check_cuda(cudaMemsetAsync(w.counters, 0, w.counter_bytes, stream), "cudaMemsetAsync(flash attention counters)");
    launch_rowdot(o, dO, w.Dr, a, stream);
    const float scale = float(1.0 / std::sqrt(double(a.Dh)));
    return BwdArgs{q, k, v, dO, lse, doc_start, dq, dk, dv, w.dq_acc, w.Dr, w.counters, w.counters + size_t(a.B) * a.H *
                   ((a.T + BR - 1) / BR), a.B, a.T, a.H, a.KVH, a.Dh, scale, scale * kLog2e, 1.f / scale,
                   a.Dh % 8 == 0 && all_aligned({q, k, v, dO}, 16), Rotation{}};
}

// One backward launch: D = rowsum(dO o), then the kernel (BR query rows per step, BC keys per block).
void run_backward(void (*kernel)(BwdArgs), const char* name, int BR, int BC, int D, int threads, size_t smem, bool& configured,
                  const AttentionShape& a, const bf16* q, const bf16* k, const bf16* v, const bf16* o, const bf16* dO,
                  const float* lse, const int32_t* doc_start, bf16* dq, bf16* dk, bf16* dv, void* workspace, cudaStream_t stream) {
    if (!configured) {
        check_cuda(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)), "cudaFuncSetAttribute");
        configured = true;
    }
    const BwdArgs p = prepare_backward(BR, D, a, q, k, v, o, dO, lse, doc_start, dq, dk, dv, workspace, stream);
    const unsigned blocks = unsigned((a.T + BC - 1) / BC) * unsigned(a.B * a.KVH);
    kernel<<<blocks, unsigned(threads), smem, stream>>>(p);
    check_launch(name);
}

template <class C>
void launch_backward(const AttentionShape& a, const bf16* q, const bf16* k, const bf16* v, const bf16* o, const bf16* dO,
                     const float* lse, const int32_t* doc_start, bf16* dq, bf16* dk, bf16* dv, void* workspace,
                     cudaStream_t stream) {
    static bool configured = false;
    run_backward(flash_backward_kernel<C>, "flash_backward_kernel", C::BR, C::BC, C::D, C::THREADS, C::smem, configured, a, q, k,
                 v, o, dO, lse, doc_start, dq, dk, dv, workspace, stream);
}

// The configurations the library uses, per padded head dim (dev/attention.cu times them against others).
// Chosen so that ptxas reports no spills (D = 128 backward: 8 bytes) under the 255-register bound.
template <int D> struct Lib;
template <> struct Lib<32> { using Fwd = FwdConfig<32, 2, 4, 64, true>;    using Bwd = BwdConfig<32, 8, 64, true>; };
template <> struct Lib<64> { using Fwd = FwdConfig<64, 2, 4, 64, true>;    using Bwd = BwdConfig<64, 8, 64, true>; };
template <> struct Lib<96> { using Fwd = FwdConfig<96, 2, 4, 32, false>;   using Bwd = BwdConfig<96, 4, 32, false>; };
template <> struct Lib<128> { using Fwd = FwdConfig<128, 2, 4, 32, false>; using Bwd = BwdConfig<128, 8, 64, false>; };  // bwd: dev v3, 16% faster at T = 8192 on an H100

// f(Lib<D>{}) for the padded head dim of Dh.
template <class F>
void with_lib(int Dh, F&& f) {
    switch (padded_head_dim(Dh)) {
        case 32: f(Lib<32>{}); break;
        case 64: f(Lib<64>{}); break;
        case 96: f(Lib<96>{}); break;
        default: f(Lib<128>{}); break;
    }
}

}  // namespace

#include "kernels/attention_sm90.cuh"      // the Hopper forward for head_dim 64 and 128 (they build on the definitions above)
#include "kernels/attention_sm90_bwd.cuh"  // head_dim 64's Hopper backward before warp specialization (the fallback)
#include "kernels/attention_sm90_ws_bwd.cuh"  // the Hopper backward for head_dim 64 and 128, warp-specialized
#include "kernels/attention_sm90_ws64_bwd.cuh"  // head_dim 64's, 128 queries a step (WsBwd<64> its fallback)

namespace {
// The configurations the library runs on Hopper (dev/attention.cu times them against others).
using HopperFwd = WgFwdConfig<3, 128, 3>;  // 3 warpgroups x 64 query rows, 128-key blocks, 3 TMA stages
using HopperFwdShort = WgFwdConfig<2, 128, 4>;  // head_dim 64 at T <= 1024: 128-row tiles (dev v5 BR128: 0.290 against 0.313 ms at T = 1024)
// head_dim 128: 2 compute warpgroups, 128-key blocks, 3 stages (dev v6), pingpong (v12), and a producer
// warpgroup loading K and V (v15: on an H100 at T = 4096 / 8192 / 16384, 521 / 596 / 661 against 483 / 515 / 565 TFLOP/s)
using HopperFwdD128 = WgFwdConfig<2, 128, 3, 128, true, true>;
using HopperFwdD128Plain = WgFwdConfig<2, 128, 3, 128, true>;  // the same without the producer: where it does not start at 168 registers
// The backward: WsBwd (attention_sm90_ws_bwd.cuh), a producer warpgroup and two compute warpgroups per 128
// keys (on an H100 at T = 8192: dev v9 at head_dim 64, 4.10 against 5.41 ms; dev v8 at 128, 468 against v7's
// 338 TFLOP/s); at head_dim 64 first its variant of 128 queries a step (attention_sm90_ws64_bwd.cuh, dev v11:
// 3.58 against WsBwd<64>'s 4.05 ms). Where a kernel's register budget does not hold (ws64x128_registers_fit,
// ws_registers_fit), the next one runs: at head_dim 64 WsBwd<64>, then HopperBwd (one warpgroup per 64 keys,
// 3 blocks per SM, Q and dO by the TMA, dq partials added by the TMA from shared memory: dev v5 dq-bulk); at
// 128 the mma.sync backward.
using HopperWsBwd64 = WsBwd<64>;
using HopperWsBwd128 = WsBwd<128>;
using HopperBwd = WgBwdConfig<1, 3, true, kDqBulk>;
static_assert(HopperBwd::BR == Lib<64>::Bwd::BR && HopperBwd::D == Lib<64>::Bwd::D, "the same backward workspace");
bool use_hopper = true;  // flash_attention_use_hopper
}  // namespace

// ---------------------------------------------------------------------------------------------- interface
bool flash_attention_supported(int head_dim) { return head_dim >= 2 && head_dim <= 128 && head_dim % 2 == 0; }

bool flash_attention_use_hopper(bool on) {
    use_hopper = on;
    return on && wgmma_available();
}

size_t flash_attention_backward_workspace(const AttentionShape& a) {
    size_t bytes = 0;
    with_lib(a.Dh, [&](auto lib) { bytes = backward_workspace_bytes<typename decltype(lib)::Bwd>(a); });
    return bytes;
}

void flash_attention_forward(const AttentionShape& a, const bf16* q, const bf16* k, const bf16* v, const int32_t* doc_start,
                             bf16* o, float* lse, cudaStream_t stream) {
    check_shape(a, {q, k, v, o});
    if (use_hopper && a.T <= 1024 && wgmma_forward_applies<HopperFwdShort>(a, {q, k, v, o}))
        launch_forward_wgmma<HopperFwdShort>(a, q, k, v, doc_start, o, lse, stream);
    else if (use_hopper && wgmma_forward_applies<HopperFwd>(a, {q, k, v, o})) launch_forward_wgmma<HopperFwd>(a, q, k, v, doc_start, o, lse, stream);
    else if (use_hopper && wgmma_forward_applies<HopperFwdD128>(a, {q, k, v, o}) && forward_registers_fit<HopperFwdD128>())
        launch_forward_wgmma<HopperFwdD128>(a, q, k, v, doc_start, o, lse, stream);
    else if (use_hopper && wgmma_forward_applies<HopperFwdD128Plain>(a, {q, k, v, o}))
        launch_forward_wgmma<HopperFwdD128Plain>(a, q, k, v, doc_start, o, lse, stream);
    else with_lib(a.Dh, [&](auto lib) { launch_forward<typename decltype(lib)::Fwd>(a, q, k, v, doc_start, o, lse, stream); });
}

namespace {
void check_rotation(const Rotation& r) {
    if (r.cos && (!r.sin || !r.positions)) fail("attention backward: RoPE's rotation needs its cos and sin tables and the positions");
}
// dq, dk rotated back by RoPE's -θ (rope.cu) after a backward that wrote them unrotated
void rotate_back_after(const AttentionShape& a, const Rotation& r, bf16* dq, bf16* dk, cudaStream_t stream) {
    if (!r.cos) return;
    rope(dq, r.positions, r.cos, r.sin, int64_t(a.B) * a.T, a.H, a.Dh, true, stream);
    rope(dk, r.positions, r.cos, r.sin, int64_t(a.B) * a.T, a.KVH, a.Dh, true, stream);
}
}  // namespace

void flash_attention_backward(const AttentionShape& a, const bf16* q, const bf16* k, const bf16* v, const bf16* o,
                              const bf16* dO, const float* lse, const int32_t* doc_start, bf16* dq, bf16* dk, bf16* dv,
                              void* workspace, cudaStream_t stream, const Rotation& rope) {
    check_shape(a, {q, k, v, o, dO, dq, dk, dv});
    check_rotation(rope);
    if (use_hopper && ws_backward_applies<64>(a, {q, k, v, dO, dq, dk, dv}) && ws64x128_registers_fit()) {
        launch_backward_ws64x128(a, q, k, v, o, dO, lse, doc_start, dq, dk, dv, workspace, stream, rope);
        return;
    }
    if (use_hopper && ws_backward_applies<64>(a, {q, k, v, dO, dq, dk, dv}) && ws_registers_fit<HopperWsBwd64>()) {
        launch_backward_ws<HopperWsBwd64>(a, q, k, v, o, dO, lse, doc_start, dq, dk, dv, workspace, stream, rope);
        return;
    }
    if (use_hopper && ws_backward_applies<128>(a, {q, k, v, dO, dq, dk, dv}) && ws_registers_fit<HopperWsBwd128>()) {
        launch_backward_ws<HopperWsBwd128>(a, q, k, v, o, dO, lse, doc_start, dq, dk, dv, workspace, stream, rope);
        return;
    }
    if (use_hopper && wgmma_applies(a, {q, k, v, dO})) launch_backward_wgmma<HopperBwd>(a, q, k, v, o, dO, lse, doc_start, dq, dk, dv, workspace, stream);
    else
        with_lib(a.Dh, [&](auto lib) {
            launch_backward<typename decltype(lib)::Bwd>(a, q, k, v, o, dO, lse, doc_start, dq, dk, dv, workspace, stream);
        });
    rotate_back_after(a, rope, dq, dk, stream);
}

void flash_attention_backward(const AttentionShape& a, const bf16* q, const bf16* k, const bf16* v, const bf16* o,
                              const bf16* dO, const float* lse, const int32_t* doc_start, bf16* dq, bf16* dk, bf16* dv,
                              void* workspace, cudaStream_t stream) {
    flash_attention_backward(a, q, k, v, o, dO, lse, doc_start, dq, dk, dv, workspace, stream, Rotation{});
}

// ================================================================================================ the call site

namespace {
bool fallback_announced = false;  // the notice for a head_dim the fused kernels lack is printed once
}

Attention::Attention(const AttentionShape& a, const Gemm& gemm, bool allow_fused) : a_(a), gemm_(gemm) {
    fused_ = allow_fused && flash_attention_supported(a.Dh);
    if (allow_fused && !fused_ && !fallback_announced) {
        std::printf("notice: head_dim %d has no fused attention kernel (even head_dim <= 128); using the reference attention, "
                    "which materialises the scores in chunks\n", a.Dh);
        fallback_announced = true;
    }
    if (fused_) wgmma_available();  // asks the GPU once (a sync), here rather than inside a step
    size_t bytes = fused_ ? flash_attention_backward_workspace(a) : ReferenceAttention(a).scratch_bytes();
    scratch_ = device_alloc<char>(bytes, "attention scratch");
}

Attention::~Attention() { device_free(scratch_); }

void Attention::forward(const bf16* q, const bf16* k, const bf16* v, const int32_t* doc_start, bf16* o, float* lse) {
    if (fused_) flash_attention_forward(a_, q, k, v, doc_start, o, lse, gemm_.stream);
    else ReferenceAttention(a_).forward(gemm_, q, k, v, doc_start, o, lse, scratch_);
}

void Attention::backward(const bf16* q, const bf16* k, const bf16* v, const bf16* o, const bf16* dO, const float* lse,
                         const int32_t* doc_start, bf16* dq, bf16* dk, bf16* dv, const Rotation& rope) {
    if (fused_) return flash_attention_backward(a_, q, k, v, o, dO, lse, doc_start, dq, dk, dv, scratch_, gemm_.stream, rope);
    check_rotation(rope);
    ReferenceAttention(a_).backward(gemm_, q, k, v, o, dO, lse, doc_start, dq, dk, dv, scratch_);
    rotate_back_after(a_, rope, dq, dk, gemm_.stream);
}
