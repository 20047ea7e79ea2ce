// kernels/attention_sm90_ws_bwd.cuh — the Hopper (sm_90a) fused-attention backward for head_dim 64 and 128,
// warp-specialized as FlashAttention-3's: the math, masks, GQA order and deterministic dq accumulation of
// flash_backward_kernel (attention.cu) with every product on wgmma.
//   D_t = dO_t . o_t,  dp_tj = dO_t . v_j,  ds_tj = p_tj (dp_tj - D_t)
//   dq_t = scale sum_j ds_tj k_j,  dk_j = scale sum_{t, h in group} ds_tj q_t,  dv_j = sum_{t, h} p_tj dO_t
// Owns: WsBwd<D>, the pieces of a step (wg_dot, wg_accumulate, wg_dq, store_dk_dv; dev v7, head_dim 128's
// kernel before this one, uses them too), flash_backward_ws_kernel<D>, ws_backward_applies, ws_registers_fit
// and launch_backward_ws<D>.
// Reuses from attention_sm90.cuh the descriptors, the wgmma wrappers, the mbarrier/TMA helpers and
// head_rows_map; from attention_sm90_bwd.cuh load_tile_sw128, ds_fragments, store_ds and launch_dq_from_tiles;
// from attention.cu BwdArgs, prepare_backward (counters zeroed, D = rowsum(dO o)), the steps' shared pieces
// (last_query_tile, start_at_minus, probs_as_fragments), the dq turns (bulk_add_partial, st_release) and the
// workspace layout (Lib<D>::Bwd: BR = 64, fp32 dq tiles). attention.cu includes it after attention_sm90_bwd.cuh.
//
// Tiles: a 128-byte swizzled row holds 64 bf16, so each K, V, Q, dO tile is NH = D / 64 column halves, each an
// ordinary 128-byte-swizzled tile of 64 columns (8-row atoms of 1024 bytes); Q and dO come by the TMA
// (head_rows_map with NH H heads: half c of head h is map head NH h + c), K and V once per block by cp.async
// (load_tile_sw128 per half). A block owns BC = 128 keys of one KV head and walks the query tiles that see
// them (BR = 64 queries a step, from the last tile; the heads of the GQA group inner).
// Per step, per compute warpgroup (64 of the keys; warp w: keys 16w.., as wgmma's accumulators lay them):
//   S^T = K Q^T                  M = 64 keys, N = 64 queries, k = head dim: 4 NH k-steps, both K-major (steps
//                                0-3 read half 0 of both operands, +32 bytes a step, 4-7 half 1). The
//                                accumulator starts at -lse/scale.
//   P^T                          in registers, masked as flash_backward_kernel, packed to bf16 A fragments
//   dP^T = V dO^T, dV += P^T dO  issued together (two commit groups): dP^T as S^T (starting at -D); dV with A
//                                from registers and B MN-major (n = head dim): per k-step of 16 queries one
//                                m64n64k16 per column half of dO, into dv[c]
//   dS^T                         once dP^T has landed, while dV runs; bf16 A fragments, and into shared memory
//                                [BC keys][64 queries] (one 128-byte half) for dQ
//   dK += dS^T Q                 as dV
//   dQ_part = dS K               A = dS^T (MN-major), B = K (MN-major, n = head dim), k = all 128 keys: each
//                                warpgroup computes D / 2 columns of the partial (m64n64 at 128, m64n32 at 64)
// A block is three warpgroups (384 threads, 1 block per SM), and they wait only for what they need:
//   warpgroup 0, the producer (setmaxnreg 24, WsBwd's PREG): its warp 0 loads each step's Q and dO halves by the TMA and the
//     rows' lse, D and document starts into one of two stages (mbarriers full[s] / empty[s]); its warp 1
//     (lane 0) adds each step's fp32 dq partial from shared memory into the tile in the workspace with
//     cp.reduce.async.bulk (the first contributor stores), in the tile's turn (the key blocks' order, by the
//     counters: the same bits run to run), and hands the buffer back once the TMA has read it (mbarriers
//     dq_full[s] / dq_empty[s]).
//   warpgroups 1, 2, the compute (setmaxnreg 240, the rest): every product on wgmma. They meet only where they must: a
//     named barrier (256 threads) once both have written dS^T, before the dQ product reads all 128 keys of
//     it, and one before dS^T is written again (the other's dQ product of the step before has read it). No
//     compute thread waits for a dq tile's turn. On an H100 at T = 8192 (dev v8, v9 against the kernels
//     before, where the compute warps took the turns themselves): head_dim 128 338 -> 468 TFLOP/s, head_dim
//     64 254 -> 335. (dev v16, WsBwd's KSPLIT: each computes dQ_part over its own 64 keys instead, and the
//     two meet only in the shared-memory partial: ksplit_dq_part.)
// dq in bf16 comes from dq_from_tiles after the kernel. Registers per compute thread at head_dim 128: dK and
// dV 2 x 64 fp32, S^T or dP^T 32 fp32, P^T and dS^T 16 + 16 packed, dQ_part 32. The descriptors are made in
// the loop from opaque bases (else ptxas hoists ~50 of them into registers and spills).
#pragma once

namespace {

// The block's shape and shared memory for head_dim D (NH = D / 64 column halves per row): K, V (NH halves
// each), Q, dO (NS stages x NH halves), dS^T, lse/D/starts [NS stages], two fp32 dq partials (BR x D).
// DQ: kDqBulk, the partials added in the key blocks' order (deterministic; the library's), or kDqAtomic,
// added as they come onto zeroed tiles (dev/attention.cu's bound: what the order costs; on an H100 nothing
// now, dev/NOTES.md v10). PREG: the producer warpgroup's registers after setmaxnreg; the compute warpgroups
// get the rest of the 384 x 168 the block starts with (24: 240). EARLY_DP: dP^T issued right after S^T, to
// run beside the softmax (else after it, with dV: S^T and dP^T then never hold registers at once). NEXT_S:
// each step issues the next step's S^T once its own products are done, so the tensor cores run it while the
// warps write their dq partial and start the next step (else each step issues its own S^T and waits for it;
// dev v14). KSPLIT: each compute warpgroup's dQ_part over its own 64 keys and every column (dS^T and K of its
// own rows), the two summed in the shared-memory partial (warpgroup 0 writes it, warpgroup 1 adds to it), so
// the warpgroups never wait for each other within a step, only warpgroup 1 for warpgroup 0's partial (else
// each computes D / 2 columns over all 128 keys, behind two 256-thread barriers a step; dev v16).
template <int D_, int NS_ = 2, DqMode DQ_ = kDqBulk, int PREG_ = 24, bool EARLY_DP_ = false, bool NEXT_S_ = false, bool KSPLIT_ = false>
struct WsBwd {
    static constexpr int D = D_, NS = NS_, NH = D / 64, BR = 64, BC = 128, THREADS = 384, ROW = 128, MINB = 1;
    static constexpr DqMode DQ = DQ_;
    static constexpr bool EARLY_DP = EARLY_DP_, NEXT_S = NEXT_S_, KSPLIT = KSPLIT_;
    static constexpr int PREG = PREG_, CREG = (THREADS * 168 - 128 * PREG) / 256 / 8 * 8;  // multiples of 8
    static constexpr int NTD = D / 16;  // dQ_part n-tiles of 8 columns per compute warpgroup (D / 2 columns)
    static constexpr uint32_t KV_HALF = uint32_t(BC) * ROW, Q_HALF = uint32_t(BR) * ROW;  // bytes of one column half
    static constexpr uint32_t DQ_TILE = uint32_t(BR) * D * sizeof(float);                 // one fp32 dq partial
    static constexpr size_t smem = 1024                              // room to align the tiles to 1024 bytes
                                   + 2 * NH * size_t(KV_HALF)        // K, V
                                   + 2 * NS * NH * size_t(Q_HALF)    // Q[NS], dO[NS]
                                   + size_t(BC) * ROW                // dS^T [keys][64 queries]
                                   + size_t(3 * NS) * BR * sizeof(float)  // lse, D, doc_start [NS] each
                                   + 2 * size_t(DQ_TILE);            // dq partials [2]
    static_assert(D == 64 || D == 128, "head_dim 64 or 128");
    static_assert(DQ == kDqBulk || DQ == kDqAtomic, "ordered or unordered bulk adds");
    static_assert(PREG % 8 == 0 && PREG >= 24 && CREG <= 256, "setmaxnreg's range");
    static_assert(smem <= 227 * 1024, "shared memory per block");
    static_assert(!(EARLY_DP && NEXT_S), "dP^T beside the softmax or the next S^T beside the dq partial, not both");
    static_assert(!(KSPLIT && NEXT_S), "the key-split dQ_part is written without the next S^T early");
};

#if ATTENTION_WGMMA
// The products of a step, as one compute warpgroup issues them (dev/attention_v7.cuh's kernel shares them).
// Tiles are NH 128-byte-swizzled column halves of 64; `rows_half`, `cols_half`: bytes from a tile's half 0
// to its half 1.
// acc += rows cols^T over the head dim: 4 NH k-steps of 16, both K-major (S^T = K Q^T, dP^T = V dO^T)
template <int NH>
__device__ __forceinline__ void wg_dot(float (&acc)[8][4], uint64_t rows, uint64_t cols, uint32_t rows_half, uint32_t cols_half) {
#pragma unroll
    for (int kk = 0; kk < 4 * NH; ++kk)
        wgmma_64x64_ss<0, 0>(acc, sw128_desc_plus(rows, (kk / 4) * rows_half + (kk % 4) * 32), sw128_desc_plus(cols, (kk / 4) * cols_half + (kk % 4) * 32));
}
// S^T - lse/scale = K Q^T + (-lse/scale) issued as one commit group (not waited for): 64 keys (`k`) x the
// stage's queries (`q`, their lse at lse_b)
template <int NH, int NTQ>
__device__ __forceinline__ void wg_issue_st(float (&sT)[NTQ][4], const float* lse_b, float lse_to_s, int tq, uint32_t k, uint32_t q,
                                            uint32_t k_half, uint32_t q_half) {
    start_at_minus(sT, lse_b, lse_to_s, tq);
    asm volatile("" : "+r"(k), "+r"(q));  // (descriptors made here, not hoisted out of the loop: registers)
    wgmma_fence();
    wg_dot<NH>(sT, sw128_desc(k, false), sw128_desc(q, false), k_half, q_half);
    wgmma_commit();
}
// acc[c] += a b, column half c of b: A from registers (k-steps of 16 queries), B[k = query][n = d] MN-major
// (dV += P^T dO, dK += dS^T Q)
template <int NH, int KQ>
__device__ __forceinline__ void wg_accumulate(float (&acc)[NH][8][4], const uint32_t (&a)[KQ][4], uint64_t b_t, uint32_t b_half) {
#pragma unroll
    for (int kq = 0; kq < KQ; ++kq)
#pragma unroll
        for (int c = 0; c < NH; ++c) wgmma_64x64_rs<1>(acc[c], a[kq], sw128_desc_plus(b_t, c * b_half + kq * 16 * 128));
}
// dQ_part = dS K for the 8 NT columns of K `at` bytes from k (64 columns: a column half; 32: a quarter of
// head_dim 64): A[m = query][k = key] = dS^T, B[k = key][n = d], both MN-major, k = KC steps of 16 keys
// (128-byte rows)
template <int KC, int NT>
__device__ __forceinline__ void wg_dq(float (&dq)[NT][4], uint64_t ds, uint64_t k, uint32_t at) {
    static_assert(NT == 8 || NT == 4, "64 or 32 columns");
    if constexpr (NT == 8) wgmma_64x64_ss<1, 1, 0>(dq, ds, sw128_desc_plus(k, at));
    else wgmma_64x32_ss<1, 1, 0>(dq, ds, sw128_desc_plus(k, at));
#pragma unroll
    for (int kc = 1; kc < KC; ++kc) {
        const uint64_t a = sw128_desc_plus(ds, kc * 16 * 128), b = sw128_desc_plus(k, at + kc * 16 * 128);
        if constexpr (NT == 8) wgmma_64x64_ss<1, 1, 1>(dq, a, b);
        else wgmma_64x32_ss<1, 1, 1>(dq, a, b);
    }
}
// dK (scaled; with p.rope, rotated back by RoPE's -θ of its key) and dV of this lane's keys key0 and key0 + 8
// (those before T) into the [B, T, KVH, 64 NH] tensors (kv_stride = KVH 64 NH). The lane's n-tile j (of 8 NH,
// columns 8 j + 2 tq and the next) pairs with j + 4 NH, D/2 columns on: the rotation's pairs stay in the lane.
template <int NH>
__device__ __forceinline__ void store_dk_dv(const BwdArgs& p, const float (&dk)[NH][8][4], const float (&dv)[NH][8][4], int b, int g,
                                            int key0, int tq, int T, int64_t kv_stride) {
    constexpr int NT = 8 * NH, HALF = 32 * NH;
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
        const int key = key0 + 8 * hf;
        if (key >= T) continue;
        const int64_t off = (int64_t(b) * T + key) * kv_stride + int64_t(g) * 64 * NH;
        float x[NT][2];
#pragma unroll
        for (int j = 0; j < NT; ++j) x[j][0] = dk[j / 8][j % 8][2 * hf] * p.scale, x[j][1] = dk[j / 8][j % 8][2 * hf + 1] * p.scale;
        if (p.rope.cos) {
            const int64_t at = int64_t(p.rope.positions[int64_t(b) * T + key]) * HALF + 2 * tq;
#pragma unroll
            for (int j = 0; j < NT / 2; ++j)
#pragma unroll
                for (int e = 0; e < 2; ++e) rotate_pair(x[j][e], x[j + NT / 2][e], p.rope.cos[at + 8 * j + e], -p.rope.sin[at + 8 * j + e]);
        }
#pragma unroll
        for (int j = 0; j < NT; ++j) {
            const int col = j * 8 + 2 * tq;
            *reinterpret_cast<__nv_bfloat162*>(p.dk + off + col) = __floats2bfloat162_rn(x[j][0], x[j][1]);
            *reinterpret_cast<__nv_bfloat162*>(p.dv + off + col) = __floats2bfloat162_rn(dv[j / 8][j % 8][2 * hf], dv[j / 8][j % 8][2 * hf + 1]);
        }
    }
}

#endif

#if ATTENTION_WGMMA
// The producer's rows of a step (one warp): lse, D and document starts of queries q0 .. q0 + BR of head h
// (zeros past T).
template <int BR>
__device__ __forceinline__ void ws_load_rows(const BwdArgs& p, const int32_t* doc, int T, int H, int b, int h, int q0, int lane,
                                             float* lse_s, float* dr_s, int* ds_s) {
#pragma unroll
    for (int r = lane; r < BR; r += 32) {
        const bool ok = q0 + r < T;
        const int64_t rix = (int64_t(b) * H + h) * T + q0 + r;
        lse_s[r] = ok ? p.lse[rix] : 0.f;
        dr_s[r] = ok ? p.Dr[rix] : 0.f;
        ds_s[r] = doc && ok ? doc[q0 + r] : 0;
    }
}
#endif

#if ATTENTION_WGMMA
// KSPLIT's end of a step, one compute warpgroup (cw), its dS^T [its 64 keys][64 queries] in shared memory:
//   dQ_part(cw) = dS(:, keys of cw) K(keys of cw, :)      column half by column half (head_dim 128: two)
// after the first (dK and dV done too) the stage goes back to the producer; warpgroup 0 writes its part into the
// partial buffer (once the writer has read what it held two steps ago), warpgroup 1 waits for that and adds
// its own, then hands the buffer to the writer. The partial's layout is the tile's (float4 ((half * 4 + warp)
// * 8 + n-tile) * 32 + lane), so a thread of warpgroup 1 adds to exactly what its twin in warpgroup 0 wrote.
template <class W>
__device__ __forceinline__ void ksplit_dq_part(uint32_t sdS, uint32_t sK, uint32_t sdq, int cw, int cwarp, int lane, int step, int st,
                                               uint32_t empty, uint32_t dq_empty, uint32_t dq_half, uint32_t dq_full,
                                               float (&dk)[W::NH][8][4], float (&dv)[W::NH][8][4]) {
    constexpr int NH = W::NH, ROW = W::ROW;
    constexpr uint32_t KH = W::KV_HALF;
    const int db = step & 1;
    uint32_t ks = sK + uint32_t(cw) * 64 * ROW, dss = sdS + uint32_t(cw) * 64 * ROW;
    asm volatile("" : "+r"(ks), "+r"(dss));  // (descriptors made here, not hoisted out of the loop: registers)
    const uint64_t dS0 = sw128_desc(dss, true), dKs = sw128_desc(ks, true);
    const uint32_t buf = sdq + uint32_t(db) * W::DQ_TILE + uint32_t(lane) * 16;  // this lane's float4s, 512 bytes apart
#pragma unroll
    for (int c = 0; c < NH; ++c) {
        float dq[8][4];
        wgmma_fence();
        wg_dq<4>(dq, dS0, dKs, uint32_t(c) * KH);  // 64 keys: 4 k-steps of 16
        wgmma_commit();
        wgmma_wait<0>();  // (the first: dV and dK too, so their A fragments in registers are free)
        wgmma_pin(dq);
        if (c == 0) {
#pragma unroll
            for (int h = 0; h < NH; ++h) wgmma_pin(dk[h]), wgmma_pin(dv[h]);
            __syncwarp();
            if (lane == 0) mbar_arrive(empty + 8 * st);  // this warp is done with the stage (Q, dO, lse, D, starts)
            if (cw == 0 && step >= 2) mbar_wait(dq_empty + 8 * db, uint32_t((step - 2) >> 1) & 1u);
            if (cw == 1) mbar_wait(dq_half + 8 * db, uint32_t(step >> 1) & 1u);
        }
#pragma unroll
        for (int nt = 0; nt < 8; ++nt) {
            const uint32_t at = buf + uint32_t((c * 4 + cwarp % 4) * 8 + nt) * 512;
            float o[4] = {0.f, 0.f, 0.f, 0.f};
            if (cw == 1) asm volatile("ld.shared.v4.f32 {%0, %1, %2, %3}, [%4];\n" : "=f"(o[0]), "=f"(o[1]), "=f"(o[2]), "=f"(o[3]) : "r"(at) : "memory");
            asm volatile("st.shared.v4.f32 [%0], {%1, %2, %3, %4};\n" ::"r"(at), "f"(o[0] + dq[nt][0]), "f"(o[1] + dq[nt][1]), "f"(o[2] + dq[nt][2]),
                         "f"(o[3] + dq[nt][3]) : "memory");
        }
    }
    if (cw == 1) fence_proxy_async();  // the sums, visible to the writer's TMA
    __syncwarp();
    if (lane == 0) mbar_arrive((cw == 0 ? dq_half : dq_full) + 8 * db);
}
#endif

// tm_q, tm_do: q and dO as 4-D maps (64 columns, 2H heads, t, b) whose boxes are BR tokens of one column half of
// one head (head_rows_map with 2H heads).
template <class W>
__global__ void __launch_bounds__(384, 1)
    flash_backward_ws_kernel(const BwdArgs p, const __grid_constant__ CUtensorMap tm_q, const __grid_constant__ CUtensorMap tm_do) {
#if ATTENTION_WGMMA
    constexpr int D = W::D, NS = W::NS, BR = W::BR, BC = W::BC, THREADS = W::THREADS, ROW = W::ROW, NTQ = BR / 8, NH = W::NH, NTD = W::NTD;
    constexpr uint32_t KH = W::KV_HALF, QH = W::Q_HALF;
    extern __shared__ __align__(16) unsigned char smem_raw[];
    __shared__ int s_ticket;
    __shared__ __align__(8) uint64_t bars[2 * NS + (W::KSPLIT ? 6 : 4)];  // full[NS], empty[NS], dq_full[2], dq_empty[2] (, dq_half[2])
    const uint32_t full = smem_u32(bars), empty = full + 8 * NS, dq_full = empty + 8 * NS, dq_empty = dq_full + 16;  // [s]: + 8 s
    const uint32_t dq_half = dq_empty + 16;  // KSPLIT: warpgroup 0's part of the partial is in buffer [s]
    const uint32_t raw = smem_u32(smem_raw), base = (raw + 1023u) & ~1023u;
    const uint32_t sK = base, sV = sK + NH * KH, sQ = sV + NH * KH, sdO = sQ + NS * NH * QH, sdS = sdO + NS * NH * QH;
    float* lse_s = reinterpret_cast<float*>(smem_raw + (sdS + BC * ROW - raw));  // [NS][BR]
    float* dr_s = lse_s + NS * BR;                                               // [NS][BR]
    int* ds_s = reinterpret_cast<int*>(dr_s + NS * BR);                          // [NS][BR]
    const uint32_t sDQ = sdS + BC * ROW + 3 * NS * BR * 4;                       // [2][BR * D] fp32

    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, wg = warp / 4;
    const int T = p.T, H = p.H, KVH = p.KVH, G = H / KVH;
    const int nqt = (T + BR - 1) / BR, nchains = p.B * KVH;
    if (tid == 0) {
        s_ticket = int(atomicAdd(p.ticket, 1u));
        for (int s = 0; s < NS; ++s) {
            mbar_init(full + 8 * s, 1 + 32);  // the TMA's bytes (thread 0 of warp 0) and warp 0's 32 lanes (lse, D, starts)
            mbar_init(empty + 8 * s, 8);      // the 8 compute warps are done with the stage
        }
        for (int s = 0; s < 2; ++s) {
            mbar_init(dq_full + 8 * s, W::KSPLIT ? 4 : 8);  // the 8 compute warps wrote their part of the partial
                                                            // (KSPLIT: warpgroup 1's 4 added theirs to warpgroup 0's)
            mbar_init(dq_empty + 8 * s, 1);   // the writer's copy has read it
            if constexpr (W::KSPLIT) mbar_init(dq_half + 8 * s, 4);  // warpgroup 0's 4 warps wrote their part
        }
        mbar_init_fence();
    }
    __syncthreads();
    const int j = s_ticket / nchains, bg = s_ticket % nchains, b = bg / KVH, g = bg % KVH, k0 = j * BC;
    const int64_t kv_stride = int64_t(KVH) * D;
    const int32_t* doc = p.doc ? p.doc + int64_t(b) * T : nullptr;
    const int i_lo = k0 / BR, i_hi = last_query_tile<BR, BC, THREADS>(doc, i_lo, nqt, j);  // query tiles that see these keys
    const int n_steps = (i_hi - i_lo + 1) * G;
    {  // K and V, once, by every thread
        const int64_t off = (int64_t(b) * T + k0) * kv_stride + int64_t(g) * D;
#pragma unroll
        for (int c = 0; c < NH; ++c) {
            load_tile_sw128<BC, THREADS>(sK + c * KH, p.k + off + c * 64, kv_stride, T - k0);
            load_tile_sw128<BC, THREADS>(sV + c * KH, p.v + off + c * 64, kv_stride, T - k0);
        }
        cp_async_commit();
        cp_async_wait_all();
        fence_proxy_async();  // this thread's copies, visible to wgmma
    }
    __syncthreads();  // the last block-wide barrier

    if (wg == 0) {  // ------------------------------------------------------------------------- the producer
        setmaxnreg_dec<W::PREG>();
        if (warp == 0) {  // step s's Q, dO, lse, D and starts into stage s % NS once its step s - NS is done
            for (int step = 0; step < n_steps; ++step) {
                const int st = step % NS, i = i_hi - step / G, h = g * G + step % G, q0 = i * BR;
                if (step >= NS) mbar_wait(empty + 8 * st, uint32_t((step - NS) / NS) & 1u);
                if (lane == 0) {  // rows past T arrive as zeros
                    const uint32_t bar = full + 8 * st, sq = sQ + st * NH * QH, sdo = sdO + st * NH * QH;
                    mbar_arrive_expect_tx(bar, 2 * NH * QH);
#pragma unroll
                    for (int c = 0; c < NH; ++c) {  // half c of head h is head NH h + c of the maps
                        tma_load_4d(sq + c * QH, &tm_q, bar, 0, NH * h + c, q0, b);
                        tma_load_4d(sdo + c * QH, &tm_do, bar, 0, NH * h + c, q0, b);
                    }
                }
                ws_load_rows<BR>(p, doc, T, H, b, h, q0, lane, lse_s + st * BR, dr_s + st * BR, ds_s + st * BR);
                mbar_arrive(full + 8 * st);  // (release: the stores above, to the compute threads' wait)
            }
        } else if (warp == 1 && lane == 0) {  // the dq partials into their tiles, each in its turn
            for (int step = 0; step < n_steps; ++step) {
                const int db = step & 1, i = i_hi - step / G, h = g * G + step % G, q0 = i * BR;
                const int jmin = doc ? doc[q0] / BC : 0, jmax = min(q0 + BR - 1, T - 1) / BC;
                const int cidx = (b * H + h) * nqt + i;
                const uint32_t src = sDQ + uint32_t(db) * W::DQ_TILE;
                mbar_wait(dq_full + 8 * db, uint32_t(step >> 1) & 1u);
                if constexpr (W::DQ == kDqBulk) {
                    bulk_add_partial<W::DQ_TILE>(p, cidx, j == jmin, unsigned(j - jmin), src);
                } else {  // unordered, onto the zeroed tile
                    bulk_reduce_add_f32(p.dq_acc + int64_t(cidx) * (BR * D), src, W::DQ_TILE);
                    bulk_commit();
                }
                bulk_wait_read<0>();
                mbar_arrive(dq_empty + 8 * db);  // the compute warps may write the next partial here
                bulk_wait<0>();  // the add has completed: the tile is the next contributor's
                if (W::DQ == kDqBulk && j != jmax) st_release(p.counters + cidx, unsigned(j - jmin + 1));
            }
        }
        return;
    }

    // ------------------------------------------------------------------------------------ the compute
    setmaxnreg_inc<W::CREG>();
    const int cw = wg - 1, cwarp = warp - 4, gr = lane / 4, tq = lane % 4;  // compute warpgroup 0/1, its warps 0..7
    const int kw = cwarp * 16;                                              // this warp's keys in the block
    const uint32_t sKg = sK + cw * 64 * ROW, sVg = sV + cw * 64 * ROW;     // this warpgroup's 64 keys (half 0; half 1 at + KH)
    float dk[NH][8][4], dv[NH][8][4];                                       // [column half][n-tile][4]
#pragma unroll
    for (int c = 0; c < NH; ++c)
#pragma unroll
        for (int nd = 0; nd < 8; ++nd)
#pragma unroll
            for (int e = 0; e < 4; ++e) dk[c][nd][e] = dv[c][nd][e] = 0.f;

    float sT[NTQ][4];  // S^T of the step (NEXT_S: issued by the step before; the first one here)
    if constexpr (W::NEXT_S) {  // (every block has a step, its first query tile holding its first key, where doc_start[t] <= t)
        if (n_steps > 0) {
            mbar_wait(full, 0u);
            wg_issue_st<NH>(sT, lse_s, p.lse_to_s, tq, sKg, sQ, KH, QH);
        }
    }
    for (int step = 0; step < n_steps; ++step) {
        const int st = step % NS, db = step & 1, i = i_hi - step / G, q0 = i * BR;  // Q/dO stage, dq buffer
        if constexpr (!W::NEXT_S) mbar_wait(full + 8 * st, uint32_t(step / NS) & 1u);  // the stage's tiles and rows have landed
        const uint32_t sQb = sQ + st * NH * QH, sdOb = sdO + st * NH * QH;
        const float* lse_b = lse_s + st * BR;
        const float* dr_b = dr_s + st * BR;
        const int* ds_b = ds_s + st * BR;

        // S^T - lse/scale = K Q^T + (-lse/scale), as v7
        float dpt[NTQ][4];
        uint32_t vg = sVg;
        if constexpr (W::NEXT_S) {
            wgmma_wait<0>();  // S^T, issued at the end of the step before
        } else {
            start_at_minus(sT, lse_b, p.lse_to_s, tq);
            if constexpr (W::EARLY_DP) start_at_minus(dpt, dr_b, 1.f, tq);
            uint32_t kg = sKg;
            asm volatile("" : "+r"(kg), "+r"(vg));  // (descriptors made here, not hoisted out of the loop: registers)
            const uint64_t dK0 = sw128_desc(kg, false), dQ0 = sw128_desc(sQb, false);
            wgmma_fence();
            wg_dot<NH>(sT, dK0, dQ0, KH, QH);
            wgmma_commit();
            if constexpr (W::EARLY_DP) {  // dP^T - D = V dO^T + (-D) now, to run beside the softmax below
                wg_dot<NH>(dpt, sw128_desc(vg, false), sw128_desc(sdOb, false), KH, QH);
                wgmma_commit();
                wgmma_wait<1>();  // S^T
            } else {
                wgmma_wait<0>();
            }
        }
        if constexpr (W::NEXT_S) asm volatile("" : "+r"(vg));
        wgmma_pin(sT);

        const bool need_mask = k0 + BC - 1 > q0 || q0 + BR > T || k0 < ds_b[BR - 1];
        uint32_t pa[BR / 16][4];
        probs_as_fragments<BR>(sT, pa, p.scale_log2, need_mask, k0 + kw + gr - q0, T - q0, q0, ds_b, tq);

        // dP^T - D = V dO^T + (-D), then dV += P^T dO: two groups, as v7 (EARLY_DP: dV alone, dP^T running)
        const uint64_t dO0t = sw128_desc(sdOb, true);
        if constexpr (!W::EARLY_DP) start_at_minus(dpt, dr_b, 1.f, tq);
        const uint64_t dV0 = sw128_desc(vg, false), dO0 = sw128_desc(sdOb, false);
        wgmma_pin(pa);
        wgmma_fence();
        if constexpr (!W::EARLY_DP) {
            wg_dot<NH>(dpt, dV0, dO0, KH, QH);
            wgmma_commit();
        }
        wg_accumulate(dv, pa, dO0t, QH);
        wgmma_commit();
        wgmma_wait<1>();  // dP^T
        wgmma_pin(dpt);

        // dS^T = P^T (dP^T - D) as bf16 A fragments, and into shared memory for dQ
        uint32_t dsa[BR / 16][4];
        ds_fragments(pa, dpt, dsa);
        if (step > 0) {  // the dq products of the last step have read dS^T (KSPLIT: this warpgroup's own rows)
            if constexpr (!W::KSPLIT) named_barrier(1, 256);
            else if (cw == 0) named_barrier(1, 128);
            else named_barrier(2, 128);
        }
        store_ds(dsa, sdS, kw, gr, tq);  // (KSPLIT: rows of this warpgroup's keys, read only by its own products)

        // dK += dS^T Q (as v7), left running while the two warpgroups meet
        const uint64_t dQ0t = sw128_desc(sQb, true);
        wgmma_pin(dsa);
        wgmma_fence();
        wg_accumulate(dk, dsa, dQ0t, QH);
        wgmma_commit();
        fence_proxy_async();  // this thread's dS^T stores, visible to wgmma
        if constexpr (W::KSPLIT) {
            if (cw == 0) named_barrier(1, 128);  // this warpgroup's dS^T is in
            else named_barrier(2, 128);
            ksplit_dq_part<W>(sdS, sK, sDQ, cw, cwarp, lane, step, st, empty, dq_empty, dq_half, dq_full, dk, dv);
            continue;
        }
        named_barrier(2, 256);  // both warpgroups' dS^T are in

        // dQ_part = dS K, this warpgroup's D / 2 columns (head_dim 128: column half cw; 64: columns 32 cw..):
        // A[m = query][k = key] = dS^T, B[k = key][n = d] = K, both MN-major
        float dq[NTD][4];
        uint32_t ks = sK + (NH == 2 ? cw * KH : cw * 64), dss = sdS;
        asm volatile("" : "+r"(ks), "+r"(dss));
        const uint64_t dS0 = sw128_desc(dss, true), dKs = sw128_desc(ks, true);
        wgmma_fence();
        wg_dq<BC / 16>(dq, dS0, dKs, 0);
        wgmma_commit();
        wgmma_wait<0>();  // dV, dK and dQ_part (their A fragments in registers are free only then)
        if constexpr (W::NEXT_S) {  // the next step's S^T, left running while the partial is written (after the last
                                 // step, this step's again: every warp issues the same products, none waits in a
                                 // divergent path)
            const bool more = step + 1 < n_steps;
            const int st1 = more ? (step + 1) % NS : st;
            if (more) mbar_wait(full + 8 * st1, uint32_t((step + 1) / NS) & 1u);  // its stage's tiles and rows have landed
            wg_issue_st<NH>(sT, lse_s + st1 * BR, p.lse_to_s, tq, sKg, sQ + st1 * NH * QH, KH, QH);
        }
#pragma unroll
        for (int c = 0; c < NH; ++c) wgmma_pin(dk[c]), wgmma_pin(dv[c]);
        wgmma_pin(dq);
        __syncwarp();
        if (lane == 0) mbar_arrive(empty + 8 * st);  // this warp is done with the stage (Q, dO, lse, D, starts)

        // The partial into buffer db once the writer has read what it held two steps ago (the tile's layout:
        // float4 index ((half * 4 + warp % 4) * 8 + n-tile) * 32 + lane; head_dim 128: half = cw, n-tiles 0..7;
        // 64: half 0, n-tiles 4 cw..)
        if (step >= 2) mbar_wait(dq_empty + 8 * db, uint32_t((step - 2) >> 1) & 1u);
        float4* buf = reinterpret_cast<float4*>(smem_raw + (sDQ + uint32_t(db) * W::DQ_TILE - raw)) + lane;
        const int half = NH == 2 ? cw : 0, nt0 = NH == 2 ? 0 : NTD * cw;
#pragma unroll
        for (int nt = 0; nt < NTD; ++nt) buf[((half * 4 + cwarp % 4) * 8 + nt0 + nt) * 32] = make_float4(dq[nt][0], dq[nt][1], dq[nt][2], dq[nt][3]);
        fence_proxy_async();  // this thread's stores, visible to the TMA
        __syncwarp();
        if (lane == 0) mbar_arrive(dq_full + 8 * db);
    }

    if constexpr (W::NEXT_S) wgmma_wait<0>();  // the extra S^T of the last step
    store_dk_dv(p, dk, dv, b, g, k0 + kw + gr, tq, T, kv_stride);
#else
    __trap();  // launched only where wgmma_available() says the sm_90a code is there
#endif
}

// Its conditions: head_dim D with 16-byte aligned rows, on a GPU that runs the sm_90a code.
template <int D>
bool ws_backward_applies(const AttentionShape& a, std::initializer_list<const void*> ptrs) {
    return a.Dh == D && all_aligned(ptrs, 16) && wgmma_available();
}

// ws_registers_fit: starts_at_168_registers (attention_sm90.cuh) for WsBwd<...>'s kernel.
template <class W>
bool ws_registers_fit() {
    static const bool fits = starts_at_168_registers(reinterpret_cast<const void*>(flash_backward_ws_kernel<W>),
                                                     W::D == 64 ? "head_dim 64 warp-specialized attention backward"
                                                                : "head_dim 128 warp-specialized attention backward");
    return fits;
}

// The launcher (dev/attention.cu's BwdFn signature); the workspace is Lib<D>::Bwd's (BR 64, fp32 dq tiles).
template <class W>
void launch_backward_ws(const AttentionShape& a, const bf16* q, const bf16* k, const bf16* v, const bf16* o, const bf16* dO,
                        const float* lse, const int32_t* doc_start, bf16* dq, bf16* dk, bf16* dv, void* workspace, cudaStream_t stream,
                        const Rotation& rope = {}) {
    constexpr int D = W::D;
    static_assert(W::BR == Lib<D>::Bwd::BR && W::D == Lib<D>::Bwd::D, "the same backward workspace");
    check_shape(a, {q, k, v, o, dO, dq, dk, dv});
    if (!ws_backward_applies<D>(a, {q, k, v, dO, dq, dk, dv}))
        fail("flash attention: the warp-specialized backward needs head_dim " + std::to_string(D) +
             ", 16-byte aligned rows and an sm_90a build on an H100/H200");
    if (!ws_registers_fit<W>()) fail("flash attention: the warp-specialized backward needs 168 registers a thread");
    static bool configured = false;
    if (!configured) {
        check_cuda(cudaFuncSetAttribute(flash_backward_ws_kernel<W>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(W::smem)),
                   "cudaFuncSetAttribute(flash_backward_ws_kernel)");
        configured = true;
    }
    BwdArgs p = prepare_backward(W::BR, W::D, a, q, k, v, o, dO, lse, doc_start, dq, dk, dv, workspace, stream);
    p.rope = rope;
    if constexpr (W::DQ == kDqAtomic)  // every contributor adds: the tiles start at zero
        check_cuda(cudaMemsetAsync(p.dq_acc, 0, size_t(a.B) * a.H * ((a.T + W::BR - 1) / W::BR) * W::BR * D * sizeof(float), stream),
                   "cudaMemsetAsync(dq tiles)");
    // q and dO as maps of 64-column heads: half c of head h is map head NH h + c
    const CUtensorMap tm_q = head_rows_map(q, a.B, a.T, W::NH * a.H, W::BR), tm_do = head_rows_map(dO, a.B, a.T, W::NH * a.H, W::BR);
    const unsigned blocks = unsigned((a.T + W::BC - 1) / W::BC) * unsigned(a.B * a.KVH);
    flash_backward_ws_kernel<W><<<blocks, unsigned(W::THREADS), W::smem, stream>>>(p, tm_q, tm_do);
    check_launch("flash_backward_ws_kernel");
    launch_dq_from_tiles<W::D>(p.dq_acc, dq, a, p.scale, stream, rope);
}

}  // namespace
