// kernels/attention_sm90_bwd.cuh — the Hopper (sm_90a) fused-attention backward for head_dim 64 before warp
// specialization (the library's where attention_sm90_ws_bwd.cuh's cannot have its registers; dev v5):
// flash_backward_kernel's steps, masks, GQA order and deterministic dq accumulation (attention.cu) with every
// product on wgmma and each step's Q and dO tiles brought by the TMA; and, for both Hopper backwards, the
// conversion of kDqBulk's fp32 dq tiles to bf16 (dq_from_tiles_kernel).
//   D_t = dO_t . o_t,  dp_tj = dO_t . v_j,  ds_tj = p_tj (dp_tj - D_t)
//   dq_t = scale sum_j ds_tj k_j,  dk_j = scale sum_{t, h in group} ds_tj q_t,  dv_j = sum_{t, h} p_tj dO_t
// Owns: WgBwdConfig, flash_backward_wgmma_kernel, launch_backward_wgmma (dev/attention.cu times its other
// configurations as "v5 bwd"), dq_from_tiles_kernel and launch_dq_from_tiles, and the pieces both head dims'
// backwards share: load_tile_sw128, ds_fragments, store_ds. Reuses from attention_sm90.cuh
// the descriptors, the wgmma wrappers, the mbarrier/TMA helpers, head_rows_map and wgmma_applies; from
// attention.cu BwdArgs, prepare_backward, the steps' shared pieces (last_query_tile, start_at_minus,
// probs_as_fragments) and the dq hand-off (wait_counter, DqHandoff, bulk_add_partial). attention.cu includes
// it after attention_sm90.cuh (and before attention_sm90_ws_bwd.cuh, which uses launch_dq_from_tiles).
#pragma once

namespace {

// Where float4 e of dq tile `tile` (kDqBulk's fp32 tiles, in the Hopper backwards' layout) belongs: float4
// ((half * 4 + rows16) * 8 + n-tile) * 32 + lane holds row 16 rows16 + lane / 4 (x, y) and 8 rows on (z, w),
// columns 64 half + 8 n-tile + 2 (lane % 4) and the next (half: 0 at D = 64, 0 and 1 at 128); tile =
// (b H + h) nqt + t / 64.
struct DqTilePlace {
    int b, h, row, col;
};
__device__ __forceinline__ DqTilePlace dq_tile_place(int64_t tile, int e, int H, int nqt) {
    const int lane = e % 32, nt = (e / 32) % 8, rows16 = (e / 256) % 4, half = e / 1024, i = int(tile % nqt);
    return {int(tile / nqt / H), int(tile / nqt % H), i * 64 + rows16 * 16 + lane / 4, half * 64 + nt * 8 + 2 * (lane % 4)};
}

// dq[b, t, h, :] = scale * the fp32 sum of its tile in acc
template <int D>
__global__ void dq_from_tiles_kernel(const float4* acc, bf16* dq, int T, int H, int nqt, int64_t n, float scale) {
    constexpr int PER_TILE = 64 * D / 4;
    for (int64_t f = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; f < n; f += int64_t(gridDim.x) * blockDim.x) {
        const DqTilePlace at = dq_tile_place(f / PER_TILE, int(f % PER_TILE), H, nqt);
        const float4 v = acc[f];
        bf16* dst = dq + (int64_t(at.b) * T + at.row) * H * D + int64_t(at.h) * D + at.col;
        if (at.row < T) *reinterpret_cast<__nv_bfloat162*>(dst) = __floats2bfloat162_rn(v.x * scale, v.y * scale);
        if (at.row + 8 < T) *reinterpret_cast<__nv_bfloat162*>(dst + int64_t(8) * H * D) = __floats2bfloat162_rn(v.z * scale, v.w * scale);
    }
}

// The same, each pair (column i, i + D/2) rotated back by RoPE's -θ of its row (rotate_pair): a thread takes
// a float4 of the first half and its partner PAIR float4s on (the same rows; columns + D/2: at D = 128 the
// other 64-column half, at 64 the n-tile 4 on). n counts the pairs.
template <int D>
__global__ void dq_from_tiles_rotated_kernel(const float4* acc, bf16* dq, int T, int H, int nqt, int64_t n, float scale, Rotation rope) {
    constexpr int PER_TILE = 64 * D / 4, PAIR = D == 128 ? 1024 : 128, HALF = D / 2;
    for (int64_t g = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; g < n; g += int64_t(gridDim.x) * blockDim.x) {
        const int64_t tile = g / (PER_TILE / 2);
        const int first = int(g % (PER_TILE / 2)), e = first / PAIR * 2 * PAIR + first % PAIR;  // e: in the first half
        const DqTilePlace at = dq_tile_place(tile, e, H, nqt);
        const float4 x1 = acc[tile * PER_TILE + e], x2 = acc[tile * PER_TILE + e + PAIR];
        float lo[2][2] = {{x1.x, x1.y}, {x1.z, x1.w}}, hi[2][2] = {{x2.x, x2.y}, {x2.z, x2.w}};
        for (int r = 0; r < 2; ++r) {
            const int t = at.row + 8 * r;
            if (t >= T) continue;
            const int64_t pos = rope.positions[int64_t(at.b) * T + t];
            for (int j = 0; j < 2; ++j) {
                lo[r][j] *= scale, hi[r][j] *= scale;
                rotate_pair(lo[r][j], hi[r][j], rope.cos[pos * HALF + at.col + j], -rope.sin[pos * HALF + at.col + j]);
            }
            bf16* dst = dq + (int64_t(at.b) * T + t) * H * D + int64_t(at.h) * D + at.col;
            *reinterpret_cast<__nv_bfloat162*>(dst) = __floats2bfloat162_rn(lo[r][0], lo[r][1]);
            *reinterpret_cast<__nv_bfloat162*>(dst + HALF) = __floats2bfloat162_rn(hi[r][0], hi[r][1]);
        }
    }
}

// dq in bf16 from the fp32 tiles after a kDqBulk backward (the tiles of B H heads of T rows, BR = 64); with
// `rope` set, rotated back (dq of q before RoPE)
template <int D>
void launch_dq_from_tiles(const float* dq_acc, bf16* dq, const AttentionShape& a, float scale, cudaStream_t stream, const Rotation& rope = {}) {
    const int nqt = (a.T + 63) / 64;
    const int64_t n = int64_t(a.B) * a.H * nqt * (64 * D / 4);
    const auto* acc = reinterpret_cast<const float4*>(dq_acc);
    if (rope.cos) {
        dq_from_tiles_rotated_kernel<D><<<unsigned(std::min<int64_t>((n / 2 + 255) / 256, 65535)), 256, 0, stream>>>(acc, dq, a.T, a.H, nqt, n / 2, scale, rope);
        check_launch("dq_from_tiles_rotated_kernel");
        return;
    }
    dq_from_tiles_kernel<D><<<unsigned(std::min<int64_t>((n + 255) / 256, 65535)), 256, 0, stream>>>(acc, dq, a.T, a.H, nqt, n, scale);
    check_launch("dq_from_tiles_kernel");
}

// ---------------------------------------------------------------------------------------------- backward, Hopper
// The same algorithm, steps and dq ordering as flash_backward_kernel, for Dh = 64 (16-byte aligned rows),
// with the products on wgmma (sm_90a): a block has NWG warpgroups, each owning 64 keys (warp w: keys 16w..,
// as before). Operands are read by the tensor cores straight from 128-byte-swizzled shared memory, once per
// warpgroup instead of once per warp through ldmatrix; P^T and dS^T enter dV and dK as register operands;
// S^T and dP^T are issued together, and dV runs while dS is formed. No product is in flight across a branch
// (ptxas would serialize every wgmma of the kernel). With TMA, thread 0 asks the TMA for the next step's Q
// and dO tiles (they complete on that buffer's mbarrier) instead of every thread issuing 16-byte cp.async
// copies: 5.78-5.80 -> 5.39-5.40 ms at T = 8192 (dev/NOTES.md).
template <int NWG_, int MINB_, bool TMA_ = false, DqMode DQ_ = kDqOrdered>
struct WgBwdConfig {  // NWG warpgroups per block, MINB blocks per SM asked of ptxas, TMA: Q and dO tiles by the TMA
    static constexpr int NWG = NWG_, MINB = MINB_;
    static constexpr bool TMA = TMA_;
    static constexpr DqMode DQ = DQ_;  // the library: kDqOrdered (the others: see DqMode)
    static constexpr int D = 64, BR = 64, BC = 64 * NWG, THREADS = 128 * NWG, ROW = 128;  // ROW: bytes per tile row
    static constexpr int NTD = 8 / NWG;                                   // dQ n-tiles per warp (64 / NWG columns)
    static constexpr size_t smem = 1024                                   // room to align the tiles to 1024 bytes
                                   + size_t(2 * BC + 4 * BR + BC) * ROW  // K, V, Q[2], dO[2], dS^T [keys][queries]
                                   + size_t(6) * BR * sizeof(float)       // lse, D, doc_start [2] each
                                   + (DQ == kDqBulk ? size_t(BR) * D * sizeof(float) : 0);  // kDqBulk: one dq partial
    static_assert(DQ != kDqBulk || NWG == 1, "kDqBulk: dq_from_tiles_kernel's layout is one warpgroup's");
};

// Rows [0, ROWS) of a Dh = 64 tile into swizzled shared memory at dst: row r from src + r * row_stride; rows
// >= rows_valid are zero-filled.
template <int ROWS, int THREADS>
__device__ __forceinline__ void load_tile_sw128(uint32_t dst, const bf16* src, int64_t row_stride, int rows_valid) {
    const int c = int(threadIdx.x) % 8;
#pragma unroll
    for (int r = int(threadIdx.x) / 8; r < ROWS; r += THREADS / 8) {
        const bool ok = r < rows_valid;
        cp_async16(dst + sw128_offset(r, c * 8), ok ? src + r * row_stride + c * 8 : src, ok ? 16 : 0);
    }
}

// dS^T = P^T (dP^T - D) as bf16 A fragments, from P^T's packed fragments pa and dP^T - D in dpt
template <int KQ>
__device__ __forceinline__ void ds_fragments(const uint32_t (&pa)[KQ][4], const float (&dpt)[2 * KQ][4], uint32_t (&dsa)[KQ][4]) {
#pragma unroll
    for (int kq = 0; kq < KQ; ++kq)
#pragma unroll
        for (int r = 0; r < 4; ++r) {
            __nv_bfloat162 pb;
            memcpy(&pb, &pa[kq][r], 4);
            const float2 pf = __bfloat1622float2(pb);
            const int nt = 2 * kq + r / 2, e = 2 * (r % 2);
            dsa[kq][r] = pack_bf16(dpt[nt][e] * pf.x, dpt[nt][e + 1] * pf.y);
        }
}
// dS^T's fragments into shared memory at sdS [keys][64 queries] (one 128-byte-swizzled tile, or head_dim
// 128's column half), for dQ (this lane's keys kw + gr, + 8)
template <int KQ>
__device__ __forceinline__ void store_ds(const uint32_t (&dsa)[KQ][4], uint32_t sdS, int kw, int gr, int tq) {
#pragma unroll
    for (int kq = 0; kq < KQ; ++kq)
#pragma unroll
        for (int r = 0; r < 4; ++r) {
            const int key = kw + gr + 8 * (r & 1), col = kq * 16 + 8 * (r >> 1) + 2 * tq;
            asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(sdS + sw128_offset(key, col)), "r"(dsa[kq][r]) : "memory");
        }
}
// tm_q, tm_do (W::TMA): q and dO as 4-D maps (d, head, t, b) whose boxes are BR tokens of one head.
template <class W>
__global__ void __launch_bounds__(W::THREADS, W::MINB)
    flash_backward_wgmma_kernel(const BwdArgs p, const __grid_constant__ CUtensorMap tm_q, const __grid_constant__ CUtensorMap tm_do) {
#if ATTENTION_WGMMA
    constexpr int BR = W::BR, BC = W::BC, THREADS = W::THREADS, ROW = W::ROW, NTQ = BR / 8, NTD = W::NTD;
    extern __shared__ __align__(16) unsigned char smem_raw[];
    __shared__ int s_ticket;
    __shared__ __align__(8) uint64_t qbar[2];  // W::TMA: buffer bb's Q and dO tiles have landed
    const uint32_t raw = smem_u32(smem_raw), base = (raw + 1023u) & ~1023u;
    const uint32_t sK = base, sV = sK + BC * ROW, sQ = sV + BC * ROW, sdO = sQ + 2 * BR * ROW, sdS = sdO + 2 * BR * ROW;
    float* lse_s = reinterpret_cast<float*>(smem_raw + (sdS + BC * ROW - raw));  // [2][BR]
    float* dr_s = lse_s + 2 * BR;                                                // [2][BR]
    int* ds_s = reinterpret_cast<int*>(dr_s + 2 * BR);                           // [2][BR]
    const uint32_t sDQ = sdS + BC * ROW + 6 * BR * 4;                            // kDqBulk: [BR * D] fp32

    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, gr = lane / 4, tq = lane % 4, wg = warp / 4;
    const int T = p.T, H = p.H, KVH = p.KVH, Dh = p.Dh, G = H / KVH;
    const int nqt = (T + BR - 1) / BR, nchains = p.B * KVH;
    if (tid == 0) {
        s_ticket = int(atomicAdd(p.ticket, 1u));
        if constexpr (W::TMA) mbar_init(smem_u32(qbar), 1), mbar_init(smem_u32(qbar + 1), 1), mbar_init_fence();
    }
    __syncthreads();
    const int j = s_ticket / nchains, bg = s_ticket % nchains, b = bg / KVH, g = bg % KVH, k0 = j * BC;
    const int64_t q_stride = int64_t(H) * Dh, kv_stride = int64_t(KVH) * Dh;
    const int32_t* doc = p.doc ? p.doc + int64_t(b) * T : nullptr;

    const int i_lo = k0 / BR, i_hi = last_query_tile<BR, BC, THREADS>(doc, i_lo, nqt, j);  // query tiles that see these keys
    const int n_steps = (i_hi - i_lo + 1) * G;

    auto load_step = [&](int step, int bb) {
        const int i = i_hi - step / G, h = g * G + step % G, q0 = i * BR;
        if constexpr (W::TMA) {  // one thread; rows past T arrive as zeros
            if (tid == 0) {
                const uint32_t bar = smem_u32(qbar + bb);
                mbar_arrive_expect_tx(bar, 2 * BR * ROW);
                tma_load_4d(sQ + bb * BR * ROW, &tm_q, bar, 0, h, q0, b);
                tma_load_4d(sdO + bb * BR * ROW, &tm_do, bar, 0, h, q0, b);
            }
        } else {
            const int64_t off = (int64_t(b) * T + q0) * q_stride + int64_t(h) * Dh;
            load_tile_sw128<BR, THREADS>(sQ + bb * BR * ROW, p.q + off, q_stride, T - q0);
            load_tile_sw128<BR, THREADS>(sdO + bb * BR * ROW, p.dO + off, q_stride, T - q0);
        }
        if (tid < BR) {
            const bool ok = q0 + tid < T;
            const int64_t rix = (int64_t(b) * H + h) * T + q0 + tid;
            cp_async4(smem_u32(lse_s + bb * BR + tid), ok ? p.lse + rix : p.lse, ok ? 4 : 0);
            cp_async4(smem_u32(dr_s + bb * BR + tid), ok ? p.Dr + rix : p.Dr, ok ? 4 : 0);
            cp_async4(smem_u32(ds_s + bb * BR + tid), doc && ok ? static_cast<const void*>(doc + q0 + tid) : p.lse, doc && ok ? 4 : 0);
        }
    };
    load_tile_sw128<BC, THREADS>(sK, p.k + (int64_t(b) * T + k0) * kv_stride + int64_t(g) * Dh, kv_stride, T - k0);
    load_tile_sw128<BC, THREADS>(sV, p.v + (int64_t(b) * T + k0) * kv_stride + int64_t(g) * Dh, kv_stride, T - k0);
    load_step(0, 0);
    cp_async_commit();

    const int kw = warp * 16;                                  // this warp's keys in the tile
    const int mq = (warp % 4) * 16, dq0 = wg * 8 * NTD;        // this warp's dQ rows and columns
    const uint32_t sKg = sK + wg * 64 * ROW, sVg = sV + wg * 64 * ROW;  // this warpgroup's 64 keys
    float dk[8][4], dv[8][4];
#pragma unroll
    for (int nd = 0; nd < 8; ++nd)
#pragma unroll
        for (int e = 0; e < 4; ++e) dk[nd][e] = dv[nd][e] = 0.f;
    DqHandoff handoff;  // the dq partials' tiles not yet released to their next contributors

    for (int step = 0; step < n_steps; ++step) {
        const int bb = step & 1;
        cp_async_wait_all();
        if constexpr (W::TMA) mbar_wait(smem_u32(qbar + bb), uint32_t(step >> 1) & 1u);  // use step/2 of buffer bb
        fence_proxy_async();  // this thread's copies, visible to wgmma
        __syncthreads();      // step's tiles landed; every product of the previous step is complete
        handoff.after_barrier<W::DQ == kDqBulk>(p.counters, tid);
        if (step + 1 < n_steps) {
            load_step(step + 1, bb ^ 1);
            cp_async_commit();
        }
        const int i = i_hi - step / G, h = g * G + step % G, q0 = i * BR;
        const uint32_t sQb = sQ + bb * BR * ROW, sdOb = sdO + bb * BR * ROW;
        const float* lse_b = lse_s + bb * BR;
        const float* dr_b = dr_s + bb * BR;
        const int* ds_b = ds_s + bb * BR;

        // S^T - lse/scale = K Q^T + (-lse/scale) and dP^T - D = V dO^T + (-D): both K-major, issued together
        float st[NTQ][4], dpt[NTQ][4];
#pragma unroll
        for (int nt = 0; nt < NTQ; ++nt) {
            const float2 l2 = *reinterpret_cast<const float2*>(lse_b + nt * 8 + 2 * tq);
            const float2 d2 = *reinterpret_cast<const float2*>(dr_b + nt * 8 + 2 * tq);
            st[nt][0] = st[nt][2] = -l2.x * p.lse_to_s;
            st[nt][1] = st[nt][3] = -l2.y * p.lse_to_s;
            dpt[nt][0] = dpt[nt][2] = -d2.x;
            dpt[nt][1] = dpt[nt][3] = -d2.y;
        }
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < 4; ++kk) wgmma_64x64_ss<0, 0>(st, sw128_desc(sKg + kk * 32, false), sw128_desc(sQb + kk * 32, false));
        wgmma_commit();
#pragma unroll
        for (int kk = 0; kk < 4; ++kk) wgmma_64x64_ss<0, 0>(dpt, sw128_desc(sVg + kk * 32, false), sw128_desc(sdOb + kk * 32, false));
        wgmma_commit();
        wgmma_wait<0>();  // (no product is in flight across the branches below: ptxas would serialize them)
        wgmma_pin(st);
        wgmma_pin(dpt);

        // P^T, masked, packed to bf16 A fragments (as in flash_backward_kernel)
        const bool need_mask = k0 + BC - 1 > q0 || q0 + BR > T || k0 < ds_b[BR - 1];
        uint32_t pa[BR / 16][4];
        probs_as_fragments<BR>(st, pa, p.scale_log2, need_mask, k0 + kw + gr - q0, T - q0, q0, ds_b, tq);

        // dV += P^T dO: B[k = query][n = d] = dO, MN-major
        wgmma_fence();
#pragma unroll
        for (int kq = 0; kq < BR / 16; ++kq) wgmma_64x64_rs<1>(dv, pa[kq], sw128_desc(sdOb + kq * 16 * ROW, true));
        wgmma_commit();

        // dS^T = P^T (dP^T - D) as bf16 A fragments, and into shared memory for dQ
        uint32_t dsa[BR / 16][4];
        ds_fragments(pa, dpt, dsa);
        store_ds(dsa, sdS, kw, gr, tq);

        // dK += dS^T Q: B[k = query][n = d] = Q, MN-major
        wgmma_fence();
#pragma unroll
        for (int kq = 0; kq < BR / 16; ++kq) wgmma_64x64_rs<1>(dk, dsa[kq], sw128_desc(sQb + kq * 16 * ROW, true));
        wgmma_commit();
        wgmma_wait<0>();  // dV and dK
        wgmma_pin(dk);
        wgmma_pin(dv);

        if constexpr (W::DQ == kDqNone) continue;
        // Our turn for this dq tile (see flash_backward_kernel)
        const int jmin = doc ? ds_b[0] / BC : 0, jmax = min(q0 + BR - 1, T - 1) / BC;
        const bool first = j == jmin, last = j == jmax;
        const int cidx = (b * H + h) * nqt + i;
        if (W::DQ == kDqOrdered && tid == 0 && !first) wait_counter(p.counters + cidx, unsigned(j - jmin));
        if (W::DQ == kDqBulk && tid == 0) bulk_wait_read<0>();  // the last partial read out: its buffer is free
        fence_proxy_async();  // this thread's dS^T stores, visible to wgmma
        __syncthreads();      // dS^T complete; the counter seen

        // dQ_part = dS K, this warpgroup's 64 / NWG columns: A[m = query][k = key] = dS^T, B[k = key][n = d] = K,
        // both MN-major
        float dq[NTD][4];
#pragma unroll
        for (int nt = 0; nt < NTD; ++nt) dq[nt][0] = dq[nt][1] = dq[nt][2] = dq[nt][3] = 0.f;
        wgmma_fence();
#pragma unroll
        for (int kc = 0; kc < BC / 16; ++kc) {
            const uint64_t a = sw128_desc(sdS + kc * 16 * ROW, true), bk = sw128_desc(sK + kc * 16 * ROW + dq0 * 2, true);
            if constexpr (NTD == 8) wgmma_64x64_ss<1, 1>(dq, a, bk);
            else wgmma_64x32_ss<1, 1>(dq, a, bk);
        }
        wgmma_commit();
        wgmma_wait<0>();
        wgmma_pin(dq);

        if constexpr (W::DQ == kDqBulk) {
            // Into shared memory (the tile's layout), then one thread adds it to the tile in its turn with the TMA
            // (the first contributor stores it); dq in bf16 comes from dq_from_tiles after the kernel.
            float4* buf = reinterpret_cast<float4*>(smem_raw + (sDQ - raw)) + warp * NTD * 32 + lane;
#pragma unroll
            for (int nt = 0; nt < NTD; ++nt) buf[nt * 32] = make_float4(dq[nt][0], dq[nt][1], dq[nt][2], dq[nt][3]);
            fence_proxy_async();  // this thread's stores, visible to the TMA
            __syncthreads();      // the partial complete
            if (tid == 0) bulk_add_partial<BR * W::D * 4>(p, cidx, first, unsigned(j - jmin), sDQ);
            if (!last) handoff.hand(cidx, unsigned(j - jmin + 1));
            continue;
        }
        float4* accp = reinterpret_cast<float4*>(p.dq_acc + int64_t(cidx) * (BR * W::D)) + warp * NTD * 32 + lane;
#pragma unroll
        for (int nt = 0; nt < NTD; ++nt) {
            const float4 part = make_float4(dq[nt][0], dq[nt][1], dq[nt][2], dq[nt][3]);
            if (!first && !last) {
                red_add_f32x4(accp + nt * 32, part);
            } else if (!last) {
                __stcg(accp + nt * 32, part);
            } else {
                const float4 sum = first ? make_float4(0.f, 0.f, 0.f, 0.f) : __ldcg(accp + nt * 32);
                const int col = dq0 + nt * 8 + 2 * tq, row = q0 + mq + gr;
                bf16* dst = p.dq + (int64_t(b) * T + row) * q_stride + int64_t(h) * Dh + col;
                if (row < T)
                    *reinterpret_cast<__nv_bfloat162*>(dst) = __floats2bfloat162_rn((sum.x + part.x) * p.scale, (sum.y + part.y) * p.scale);
                if (row + 8 < T)
                    *reinterpret_cast<__nv_bfloat162*>(dst + 8 * q_stride) =
                        __floats2bfloat162_rn((sum.z + part.z) * p.scale, (sum.w + part.w) * p.scale);
            }
        }
        if (!last) handoff.hand(cidx, unsigned(j - jmin + 1));
    }
    __syncthreads();
    handoff.finish<W::DQ == kDqBulk>(p.counters, tid);

#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
        const int key = k0 + kw + gr + 8 * hf;
        if (key >= T) continue;
        const int64_t off = (int64_t(b) * T + key) * kv_stride + int64_t(g) * Dh;
#pragma unroll
        for (int nd = 0; nd < 8; ++nd) {
            const int col = nd * 8 + 2 * tq;
            *reinterpret_cast<__nv_bfloat162*>(p.dk + off + col) =
                __floats2bfloat162_rn(dk[nd][2 * hf] * p.scale, dk[nd][2 * hf + 1] * p.scale);
            *reinterpret_cast<__nv_bfloat162*>(p.dv + off + col) = __floats2bfloat162_rn(dv[nd][2 * hf], dv[nd][2 * hf + 1]);
        }
    }
#else
    __trap();  // launched only where wgmma_available() says the sm_90a code is there
#endif
}

template <class W>
void launch_backward_wgmma(const AttentionShape& a, const bf16* q, const bf16* k, const bf16* v, const bf16* o, const bf16* dO,
                           const float* lse, const int32_t* doc_start, bf16* dq, bf16* dk, bf16* dv, void* workspace,
                           cudaStream_t stream) {
    if (!wgmma_applies(a, {q, k, v, dO}))
        fail("flash attention: the wgmma backward needs head_dim 64, 16-byte aligned rows and an sm_90a build on an H100/H200");
    static bool configured = false;
    if (!configured) {
        check_cuda(cudaFuncSetAttribute(flash_backward_wgmma_kernel<W>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(W::smem)),
                   "cudaFuncSetAttribute(flash_backward_wgmma_kernel)");
        configured = true;
    }
    const BwdArgs p = prepare_backward(W::BR, W::D, a, q, k, v, o, dO, lse, doc_start, dq, dk, dv, workspace, stream);
    CUtensorMap tm_q{}, tm_do{};
    if (W::TMA) tm_q = head_rows_map(q, a.B, a.T, a.H, W::BR), tm_do = head_rows_map(dO, a.B, a.T, a.H, W::BR);
    const unsigned blocks = unsigned((a.T + W::BC - 1) / W::BC) * unsigned(a.B * a.KVH);
    flash_backward_wgmma_kernel<W><<<blocks, unsigned(W::THREADS), W::smem, stream>>>(p, tm_q, tm_do);
    check_launch("flash_backward_wgmma_kernel");
    if constexpr (W::DQ == kDqBulk) launch_dq_from_tiles<W::D>(p.dq_acc, dq, a, p.scale, stream);
}

}  // namespace
