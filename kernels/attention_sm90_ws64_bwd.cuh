// kernels/attention_sm90_ws64_bwd.cuh — head_dim 64's Hopper (sm_90a) attention backward: the warp-specialized
// kernel of attention_sm90_ws_bwd.cuh (WsBwd) with 128 queries a step, FlashAttention-3's tile at head_dim 64
// (dev v11; WsBwd<64>, 64 queries a step, is its fallback). The math, masks, GQA order, the three warpgroups
// and their mbarriers and named barriers are WsBwd's:
//   dp_tj = dO_t . v_j,  ds_tj = p_tj (dp_tj - D_t),  dq_t = scale sum_j ds_tj k_j,
//   dk_j = scale sum_{t, h in group} ds_tj q_t,  dv_j = sum_{t, h} p_tj dO_t
// What differs is the step: BR = 128 queries against the block's BC = 128 keys, so each step's products are
// twice as large for the same synchronization (two mbarrier waits, two named barriers, four drains), and
// S^T and dP^T are m64n128 products (wider B operands: fewer shared-memory reads per FLOP). Per compute
// warpgroup (64 keys):
//   S^T = K Q^T, dP^T = V dO^T   m64n128k16 x 4 (k = head dim), accumulators [16][4]
//   dV += P^T dO, dK += dS^T Q   A from registers (8 k-steps of 16 queries), B MN-major, m64n64k16
//   dS^T                         into shared memory [128 keys][128 queries] as two 64-query halves
//   dQ_part = dS K               warpgroup cw: queries 64 cw.. (dS^T's half cw), all 64 columns, k = 128 keys
// So each warpgroup's dQ partial is one whole 64-row dq tile of the workspace (Lib<64>::Bwd's layout: BR 64),
// and the writer adds the step's two tiles, each in its own turn; a tile whose keys this block does not
// see (documents: its first row's document starts after this block) is skipped, as its contributor range
// (jmin .. jmax of that 64-row tile) says. dq_from_tiles converts them after the kernel, as for WsBwd<64>.
// Owns: WsBwd64x128, flash_backward_ws64x128_kernel, ws64x128_registers_fit, launch_backward_ws64x128 (each
// with NEXT_S: dev v14, the next step's S^T issued early, as WsBwd's; the library runs NEXT_S off).
// Shared memory: K, V 16 KB each; Q, dO 2 stages x 16 KB each; dS^T 32 KB; lse/D/starts [2][128]; the dq
// partials 2 buffers x 2 tiles x 16 KB: ~196 KB, 1 block per SM. Registers: the producer warpgroup keeps 40
// (the writer's two tiles a step spilled 104 bytes at 24), the compute warpgroups 232 (128 x 40 + 256 x 232 =
// 384 x 168, the pool at launch); ptxas (CUDA 13.0): 8 bytes of spills. attention.cu includes it after
// attention_sm90_ws_bwd.cuh.
#pragma once

namespace {

struct WsBwd64x128 {
    static constexpr int D = 64, BR = 128, BC = 128, THREADS = 384, ROW = 128, MINB = 1, TILE_ROWS = 64;
    static constexpr uint32_t KV_TILE = uint32_t(BC) * ROW, Q_TILE = uint32_t(BR) * ROW;  // bytes of a K (V) and a Q (dO) tile
    static constexpr uint32_t DS_HALF = uint32_t(BC) * ROW;                               // dS^T: 64 queries of the 128 keys
    static constexpr uint32_t DQ_TILE = uint32_t(TILE_ROWS) * D * sizeof(float);          // one fp32 dq tile (16 KB)
    static constexpr size_t smem = 1024                              // room to align the tiles to 1024 bytes
                                   + 2 * size_t(KV_TILE)             // K, V
                                   + 4 * size_t(Q_TILE)              // Q[2], dO[2]
                                   + 2 * size_t(DS_HALF)             // dS^T [2 query halves][keys][64]
                                   + size_t(6) * BR * sizeof(float)  // lse, D, doc_start [2] each
                                   + 4 * size_t(DQ_TILE);            // dq partials [2 buffers][2 tiles]
    static_assert(smem <= 227 * 1024, "shared memory per block");
    // the dq order below relies on these: a block's first query tile is its own (i_lo = j), and both 64-row
    // tiles of query tile i have their last contributor at key block i
    static_assert(BR == BC && BR == 2 * TILE_ROWS, "128 queries, 128 keys, 64-row dq tiles");
};

#if ATTENTION_WGMMA
// acc += rows cols^T over head_dim 64: 4 k-steps of 16, both K-major, N = 128 (S^T = K Q^T, dP^T = V dO^T)
__device__ __forceinline__ void wg_dot_n128(float (&acc)[16][4], uint64_t rows, uint64_t cols) {
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) wg_qk_step<16, 1>(acc, sw128_desc_plus(rows, kk * 32), sw128_desc_plus(cols, kk * 32));
}
// dS^T's 8 k-steps of fragments into the two 64-query halves of shared memory (store_ds per half)
__device__ __forceinline__ void store_ds_128(const uint32_t (&dsa)[8][4], uint32_t sdS, uint32_t half_bytes, int kw, int gr, int tq) {
    uint32_t lo[4][4], hi[4][4];
#pragma unroll
    for (int kq = 0; kq < 4; ++kq)
#pragma unroll
        for (int r = 0; r < 4; ++r) lo[kq][r] = dsa[kq][r], hi[kq][r] = dsa[kq + 4][r];
    store_ds(lo, sdS, kw, gr, tq);
    store_ds(hi, sdS + half_bytes, kw, gr, tq);
}

// S^T - lse/scale = K Q^T + (-lse/scale) issued as one commit group (not waited for): 64 keys (`k`) x the
// stage's 128 queries (`q`, their lse at lse_b)
__device__ __forceinline__ void wg_issue_st_n128(float (&sT)[16][4], const float* lse_b, float lse_to_s, int tq, uint32_t k, uint32_t q) {
    start_at_minus(sT, lse_b, lse_to_s, tq);
    asm volatile("" : "+r"(k), "+r"(q));  // (descriptors made here, not hoisted out of the loop: registers)
    wgmma_fence();
    wg_dot_n128(sT, sw128_desc(k, false), sw128_desc(q, false));
    wgmma_commit();
}
#endif

// tm_q, tm_do: q and dO as 4-D maps (64 columns, H heads, t, b) whose boxes are 128 tokens of one head.
// NEXT_S: each step issues the next step's S^T once its own products are done (WsBwd's NEXT_S; dev v14).
template <bool NEXT_S = false>
__global__ void __launch_bounds__(384, 1)
    flash_backward_ws64x128_kernel(const BwdArgs p, const __grid_constant__ CUtensorMap tm_q, const __grid_constant__ CUtensorMap tm_do) {
#if ATTENTION_WGMMA
    using W = WsBwd64x128;
    constexpr int D = W::D, BR = W::BR, BC = W::BC, THREADS = W::THREADS, ROW = W::ROW, NTQ = BR / 8, TR = W::TILE_ROWS;
    constexpr uint32_t QT = W::Q_TILE, DSH = W::DS_HALF;
    extern __shared__ __align__(16) unsigned char smem_raw[];
    __shared__ int s_ticket;
    __shared__ __align__(8) uint64_t bars[8];  // full[2], empty[2], dq_full[2], dq_empty[2]
    const uint32_t full = smem_u32(bars), empty = full + 16, dq_full = full + 32, dq_empty = full + 48;  // [s]: + 8 s
    const uint32_t raw = smem_u32(smem_raw), base = (raw + 1023u) & ~1023u;
    const uint32_t sK = base, sV = sK + W::KV_TILE, sQ = sV + W::KV_TILE, sdO = sQ + 2 * QT, sdS = sdO + 2 * QT;
    float* lse_s = reinterpret_cast<float*>(smem_raw + (sdS + 2 * DSH - raw));  // [2][BR]
    float* dr_s = lse_s + 2 * BR;                                               // [2][BR]
    int* ds_s = reinterpret_cast<int*>(dr_s + 2 * BR);                          // [2][BR]
    const uint32_t sDQ = sdS + 2 * DSH + 6 * BR * 4;                            // [2 buffers][2 tiles][64 x 64] fp32

    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, wg = warp / 4;
    const int T = p.T, H = p.H, KVH = p.KVH, G = H / KVH;
    const int nqt = (T + BR - 1) / BR, nqt64 = (T + TR - 1) / TR, nchains = p.B * KVH;
    if (tid == 0) {
        s_ticket = int(atomicAdd(p.ticket, 1u));
        for (int s = 0; s < 2; ++s) {
            mbar_init(full + 8 * s, 1 + 32);  // the TMA's bytes (thread 0 of warp 0) and warp 0's 32 lanes (lse, D, starts)
            mbar_init(empty + 8 * s, 8);      // the 8 compute warps are done with the stage
            mbar_init(dq_full + 8 * s, 8);    // the 8 compute warps wrote their tiles of the partial
            mbar_init(dq_empty + 8 * s, 1);   // the writer's copies have read them
        }
        mbar_init_fence();
    }
    __syncthreads();
    const int j = s_ticket / nchains, bg = s_ticket % nchains, b = bg / KVH, g = bg % KVH, k0 = j * BC;
    const int64_t kv_stride = int64_t(KVH) * D;
    const int32_t* doc = p.doc ? p.doc + int64_t(b) * T : nullptr;
    const int i_lo = k0 / BR, i_hi = last_query_tile<BR, BC, THREADS>(doc, i_lo, nqt, j);  // 128-query tiles that see these keys
    const int n_steps = (i_hi - i_lo + 1) * G;
    {  // K and V, once, by every thread
        const int64_t off = (int64_t(b) * T + k0) * kv_stride + int64_t(g) * D;
        load_tile_sw128<BC, THREADS>(sK, p.k + off, kv_stride, T - k0);
        load_tile_sw128<BC, THREADS>(sV, p.v + off, kv_stride, T - k0);
        cp_async_commit();
        cp_async_wait_all();
        fence_proxy_async();  // this thread's copies, visible to wgmma
    }
    __syncthreads();  // the last block-wide barrier

    if (wg == 0) {  // ------------------------------------------------------------------------- the producer
        setmaxnreg_dec<40>();
        if (warp == 0) {  // step s's Q, dO, lse, D and starts into stage s % 2 once its step s - 2 is done
            for (int step = 0; step < n_steps; ++step) {
                const int st = step & 1, i = i_hi - step / G, h = g * G + step % G, q0 = i * BR;
                if (step >= 2) mbar_wait(empty + 8 * st, uint32_t((step - 2) >> 1) & 1u);
                if (lane == 0) {  // rows past T arrive as zeros
                    const uint32_t bar = full + 8 * st;
                    mbar_arrive_expect_tx(bar, 2 * QT);
                    tma_load_4d(sQ + st * QT, &tm_q, bar, 0, h, q0, b);
                    tma_load_4d(sdO + st * QT, &tm_do, bar, 0, h, q0, b);
                }
                ws_load_rows<BR>(p, doc, T, H, b, h, q0, lane, lse_s + st * BR, dr_s + st * BR, ds_s + st * BR);
                mbar_arrive(full + 8 * st);  // (release: the stores above, to the compute threads' wait)
            }
        } else if (warp == 1 && lane == 0) {  // each step's two dq tiles into the workspace, each in its turn
            for (int step = 0; step < n_steps; ++step) {
                const int db = step & 1, i = i_hi - step / G, h = g * G + step % G;
                mbar_wait(dq_full + 8 * db, uint32_t(step >> 1) & 1u);
                int added[2] = {-1, -1};
                unsigned next[2] = {0, 0};
                for (int c = 0; c < 2; ++c) {
                    const int i64 = 2 * i + c, q64 = i64 * TR;  // the 64-row tile and its first row
                    if (q64 >= T) continue;
                    const int jmin = doc ? doc[q64] / BC : 0, jmax = min(q64 + TR - 1, T - 1) / BC;
                    if (j < jmin || j > jmax) continue;  // these keys are not among the tile's (documents)
                    const int cidx = (b * H + h) * nqt64 + i64;
                    bulk_add_partial<W::DQ_TILE>(p, cidx, j == jmin, unsigned(j - jmin), sDQ + uint32_t(2 * db + c) * W::DQ_TILE);
                    if (j != jmax) added[c] = cidx, next[c] = unsigned(j - jmin + 1);
                }
                bulk_wait_read<0>();
                mbar_arrive(dq_empty + 8 * db);  // the compute warps may write the next partials here
                bulk_wait<0>();                  // the adds have completed: the tiles are their next contributors'
                for (int c = 0; c < 2; ++c)
                    if (added[c] >= 0) st_release(p.counters + added[c], next[c]);
            }
        }
        return;
    }

    // ------------------------------------------------------------------------------------ the compute
    setmaxnreg_inc<232>();
    const int cw = wg - 1, cwarp = warp - 4, gr = lane / 4, tq = lane % 4;  // compute warpgroup 0/1, its warps 0..7
    const int kw = cwarp * 16;                                              // this warp's keys in the block
    const uint32_t sKg = sK + cw * 64 * ROW, sVg = sV + cw * 64 * ROW;     // this warpgroup's 64 keys
    float dk[1][8][4], dv[1][8][4];
#pragma unroll
    for (int nd = 0; nd < 8; ++nd)
#pragma unroll
        for (int e = 0; e < 4; ++e) dk[0][nd][e] = dv[0][nd][e] = 0.f;

    float sT_next[NTQ][4];  // NEXT_S: S^T of the step, issued by the step before (the first one here)
    if constexpr (NEXT_S) {  // (every block has a step, its first query tile holding its first key, where doc_start[t] <= t)
        if (n_steps > 0) {
            mbar_wait(full, 0u);
            wg_issue_st_n128(sT_next, lse_s, p.lse_to_s, tq, sKg, sQ);
        }
    }
    for (int step = 0; step < n_steps; ++step) {
        const int st = step & 1, i = i_hi - step / G, q0 = i * BR;
        float sT_own[NTQ][4];
        float(&sT)[NTQ][4] = NEXT_S ? sT_next : sT_own;
        if constexpr (!NEXT_S) mbar_wait(full + 8 * st, uint32_t(step >> 1) & 1u);  // the stage's tiles and rows have landed
        const uint32_t sQb = sQ + st * QT, sdOb = sdO + st * QT;
        const float* lse_b = lse_s + st * BR;
        const float* dr_b = dr_s + st * BR;
        const int* ds_b = ds_s + st * BR;

        // S^T - lse/scale = K Q^T + (-lse/scale): 64 keys x 128 queries
        uint32_t vg = sVg;
        if constexpr (NEXT_S) {
            asm volatile("" : "+r"(vg));
        } else {
            start_at_minus(sT, lse_b, p.lse_to_s, tq);
            uint32_t kg = sKg;
            asm volatile("" : "+r"(kg), "+r"(vg));  // (descriptors made here, not hoisted out of the loop: registers)
            wgmma_fence();
            wg_dot_n128(sT, sw128_desc(kg, false), sw128_desc(sQb, false));
            wgmma_commit();
        }
        wgmma_wait<0>();  // (NEXT_S: issued at the end of the step before)
        wgmma_pin(sT);

        const bool need_mask = k0 + BC - 1 > q0 || q0 + BR > T || k0 < ds_b[BR - 1];
        uint32_t pa[BR / 16][4];
        probs_as_fragments<BR>(sT, pa, p.scale_log2, need_mask, k0 + kw + gr - q0, T - q0, q0, ds_b, tq);

        // dP^T - D = V dO^T + (-D), then dV += P^T dO: two groups
        float dpt[NTQ][4];
        start_at_minus(dpt, dr_b, 1.f, tq);
        const uint64_t dO0t = sw128_desc(sdOb, true);
        wgmma_pin(pa);
        wgmma_fence();
        wg_dot_n128(dpt, sw128_desc(vg, false), sw128_desc(sdOb, false));
        wgmma_commit();
        wg_accumulate(dv, pa, dO0t, 0);
        wgmma_commit();
        wgmma_wait<1>();  // dP^T
        wgmma_pin(dpt);

        // dS^T = P^T (dP^T - D) as bf16 A fragments, and into shared memory for dQ
        uint32_t dsa[BR / 16][4];
        ds_fragments(pa, dpt, dsa);
        if (step > 0) named_barrier(1, 256);  // the other warpgroup's dq product of the last step has read dS^T
        store_ds_128(dsa, sdS, DSH, kw, gr, tq);

        // dK += dS^T Q, left running while the two warpgroups meet
        const uint64_t dQ0t = sw128_desc(sQb, true);
        wgmma_pin(dsa);
        wgmma_fence();
        wg_accumulate(dk, dsa, dQ0t, 0);
        wgmma_commit();
        fence_proxy_async();  // this thread's dS^T stores, visible to wgmma
        named_barrier(2, 256);  // both warpgroups' dS^T are in

        // dQ_part for queries 64 cw..: A[m = query][k = key] = dS^T's half cw, B[k = key][n = d] = K, both MN-major
        float dq[8][4];
        uint32_t ks = sK, dss = sdS + cw * DSH;
        asm volatile("" : "+r"(ks), "+r"(dss));
        wgmma_fence();
        wg_dq<BC / 16>(dq, sw128_desc(dss, true), sw128_desc(ks, true), 0);
        wgmma_commit();
        wgmma_wait<0>();  // dV, dK and dQ_part (their A fragments in registers are free only then)
        if constexpr (NEXT_S) {  // the next step's S^T, left running while the partial is written (after the last
                                 // step, this step's again: every warp issues the same products, none waits in a
                                 // divergent path)
            const bool more = step + 1 < n_steps;
            const int st1 = more ? (step + 1) & 1 : st;
            if (more) mbar_wait(full + 8 * st1, uint32_t((step + 1) >> 1) & 1u);  // its stage's tiles and rows have landed
            wg_issue_st_n128(sT, lse_s + st1 * BR, p.lse_to_s, tq, sKg, sQ + st1 * QT);
        }
        wgmma_pin(dk[0]);
        wgmma_pin(dv[0]);
        wgmma_pin(dq);
        __syncwarp();
        if (lane == 0) mbar_arrive(empty + 8 * st);  // this warp is done with the stage (Q, dO, lse, D, starts)

        // The partial into tile cw of buffer db once the writer has read what it held two steps ago (the
        // tile's layout: float4 index ((warp % 4) * 8 + n-tile) * 32 + lane)
        if (step >= 2) mbar_wait(dq_empty + 8 * st, uint32_t((step - 2) >> 1) & 1u);
        float4* buf = reinterpret_cast<float4*>(smem_raw + (sDQ + uint32_t(2 * st + cw) * W::DQ_TILE - raw)) + lane;
#pragma unroll
        for (int nt = 0; nt < 8; ++nt) buf[((cwarp % 4) * 8 + nt) * 32] = make_float4(dq[nt][0], dq[nt][1], dq[nt][2], dq[nt][3]);
        fence_proxy_async();  // this thread's stores, visible to the TMA
        __syncwarp();
        if (lane == 0) mbar_arrive(dq_full + 8 * st);
    }

    if constexpr (NEXT_S) wgmma_wait<0>();  // the extra S^T of the last step
    store_dk_dv(p, dk, dv, b, g, k0 + kw + gr, tq, T, kv_stride);
#else
    __trap();  // launched only where wgmma_available() says the sm_90a code is there
#endif
}

// As ws_registers_fit: the kernel must start at 168 registers a thread for setmaxnreg's pool to be exact.
template <bool NEXT_S = false>
bool ws64x128_registers_fit() {
    static const bool fits = starts_at_168_registers(reinterpret_cast<const void*>(flash_backward_ws64x128_kernel<NEXT_S>),
                                                     "head_dim 64 attention backward of 128 queries a step");
    return fits;
}

// The launcher (dev/attention.cu's BwdFn signature); the workspace is Lib<64>::Bwd's (64-row fp32 dq tiles).
template <bool NEXT_S = false>
void launch_backward_ws64x128(const AttentionShape& a, const bf16* q, const bf16* k, const bf16* v, const bf16* o, const bf16* dO,
                              const float* lse, const int32_t* doc_start, bf16* dq, bf16* dk, bf16* dv, void* workspace, cudaStream_t stream,
                              const Rotation& rope = {}) {
    using W = WsBwd64x128;
    static_assert(W::TILE_ROWS == Lib<64>::Bwd::BR && W::D == Lib<64>::Bwd::D, "the same backward workspace");
    check_shape(a, {q, k, v, o, dO, dq, dk, dv});
    if (!ws_backward_applies<64>(a, {q, k, v, dO, dq, dk, dv}))
        fail("flash attention: this backward needs head_dim 64, 16-byte aligned rows and an sm_90a build on an H100/H200");
    if (!ws64x128_registers_fit<NEXT_S>()) fail("flash attention: this backward needs 168 registers a thread");
    static bool configured = false;
    if (!configured) {
        check_cuda(cudaFuncSetAttribute(flash_backward_ws64x128_kernel<NEXT_S>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(W::smem)),
                   "cudaFuncSetAttribute(flash_backward_ws64x128_kernel)");
        configured = true;
    }
    // prepare_backward with the workspace's 64-row tiles (its counters and fp32 tiles are per 64 rows)
    BwdArgs p = prepare_backward(W::TILE_ROWS, W::D, a, q, k, v, o, dO, lse, doc_start, dq, dk, dv, workspace, stream);
    p.rope = rope;
    const CUtensorMap tm_q = head_rows_map(q, a.B, a.T, a.H, W::BR), tm_do = head_rows_map(dO, a.B, a.T, a.H, W::BR);
    const unsigned blocks = unsigned((a.T + W::BC - 1) / W::BC) * unsigned(a.B * a.KVH);
    flash_backward_ws64x128_kernel<NEXT_S><<<blocks, unsigned(W::THREADS), W::smem, stream>>>(p, tm_q, tm_do);
    check_launch("flash_backward_ws64x128_kernel");
    launch_dq_from_tiles<W::D>(p.dq_acc, dq, a, p.scale, stream, rope);
}

}  // namespace
