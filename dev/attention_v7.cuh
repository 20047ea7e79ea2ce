// dev/attention_v7.cuh — v7: head_dim 128's Hopper backward before warp specialization (the library's from
// 2026-12-06 until dev v8, now ../kernels/attention_sm90_ws_bwd.cuh, replaced it), kept for dev/attention.cu
// to time beside the library. The math, tiles, products and masks are the library kernel's (its header says
// them; the pieces of a step, wg_dot .. store_dk_dv, are shared from there). What differs: every
// warp of the block computes; NWG warpgroups of 64 keys each (BC = 64 NWG), MINB blocks per SM; Q and dO by
// the TMA into two buffers (one mbarrier each) or by cp.async; block-wide barriers between the steps; and the
// compute threads add the dq partial themselves in the tile's turn (DqMode: kDqOrdered with red.global.add,
// the first contributor storing, the diagonal block reading the sum back to write bf16 dq; kDqBulk from
// shared memory by the TMA; kDqAtomic / kDqNone as timing bounds). With one warpgroup it computes both
// column halves of dQ_part; with two, one each. Registers: dK and dV 2 x 64 fp32, so the 255-register cap:
// 2 warpgroups and 1 block per SM, or 1 warpgroup and 2 blocks per SM. TMA = false spills ~110 bytes.
// dev/NOTES.md has its numbers.
#pragma once

namespace {

template <int NWG_, int MINB_, bool TMA_ = true, DqMode DQ_ = kDqOrdered>
struct WgBwdD128Config {  // NWG warpgroups per block (64 keys each), MINB blocks per SM asked of ptxas, TMA: Q and dO by the TMA
    static constexpr int NWG = NWG_, MINB = MINB_;
    static constexpr bool TMA = TMA_;
    static constexpr DqMode DQ = DQ_;  // the library: kDqOrdered (the others: see DqMode)
    static constexpr int D = 128, BR = 64, BC = 64 * NWG, THREADS = 128 * NWG, ROW = 128;  // ROW: bytes per row of a half
    static constexpr int NC = 2 / NWG;                                                      // dQ column halves per warpgroup
    static constexpr uint32_t KV_HALF = uint32_t(BC) * ROW, Q_HALF = uint32_t(BR) * ROW;    // bytes of one column half
    static constexpr uint32_t DQ_TILE = uint32_t(BR) * D * sizeof(float);  // bytes of one fp32 dq partial
    static constexpr size_t smem = 1024                                  // room to align the tiles to 1024 bytes
                                   + 4 * size_t(KV_HALF)                 // K, V: 2 halves each
                                   + 8 * size_t(Q_HALF)                  // Q[2], dO[2]: 2 halves each
                                   + size_t(BC) * ROW                    // dS^T [keys][64 queries]
                                   + size_t(6) * BR * sizeof(float)      // lse, D, doc_start [2] each
                                   + (DQ == kDqBulk ? 2 * size_t(DQ_TILE) : 0);  // kDqBulk: dq partials [2]
    static_assert(NWG == 1 || NWG == 2, "64 or 128 keys per block");
    static_assert(smem * MINB + MINB * 1024 <= 228 * 1024, "shared memory per SM");
};

// tm_q, tm_do (W::TMA): q and dO as 4-D maps (64 columns, 2H heads, t, b) whose boxes are BR tokens of one column
// half of one head (head_rows_map with 2H heads).
template <class W>
__global__ void __launch_bounds__(W::THREADS, W::MINB)
    flash_backward_wgmma_d128_kernel(const BwdArgs p, const __grid_constant__ CUtensorMap tm_q, const __grid_constant__ CUtensorMap tm_do) {
#if ATTENTION_WGMMA
    constexpr int BR = W::BR, BC = W::BC, THREADS = W::THREADS, ROW = W::ROW, NTQ = BR / 8, NC = W::NC, D = W::D;
    constexpr uint32_t KH = W::KV_HALF, QH = W::Q_HALF;
    extern __shared__ __align__(16) unsigned char smem_raw[];
    __shared__ int s_ticket;
    __shared__ __align__(8) uint64_t qbar[2];  // W::TMA: buffer bb's Q and dO tiles have landed
    // K [2 halves][BC][128 B], V the same, Q [2 buffers][2 halves][BR][128 B], dO the same, dS^T [BC][128 B]
    const uint32_t raw = smem_u32(smem_raw), base = (raw + 1023u) & ~1023u;
    const uint32_t sK = base, sV = sK + 2 * KH, sQ = sV + 2 * KH, sdO = sQ + 4 * QH, sdS = sdO + 4 * QH;
    float* lse_s = reinterpret_cast<float*>(smem_raw + (sdS + BC * ROW - raw));  // [2][BR]
    float* dr_s = lse_s + 2 * BR;                                                // [2][BR]
    int* ds_s = reinterpret_cast<int*>(dr_s + 2 * BR);                           // [2][BR]
    const uint32_t sDQ = sdS + BC * ROW + 6 * BR * 4;                            // kDqBulk: [2][BR * D] fp32

    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, gr = lane / 4, tq = lane % 4, wg = warp / 4;
    const int T = p.T, H = p.H, KVH = p.KVH, G = H / KVH;
    const int nqt = (T + BR - 1) / BR, nchains = p.B * KVH;
    if (tid == 0) {
        s_ticket = int(atomicAdd(p.ticket, 1u));
        if constexpr (W::TMA) mbar_init(smem_u32(qbar), 1), mbar_init(smem_u32(qbar + 1), 1), mbar_init_fence();
    }
    __syncthreads();
    const int j = s_ticket / nchains, bg = s_ticket % nchains, b = bg / KVH, g = bg % KVH, k0 = j * BC;
    const int64_t q_stride = int64_t(H) * D, kv_stride = int64_t(KVH) * D;
    const int32_t* doc = p.doc ? p.doc + int64_t(b) * T : nullptr;

    const int i_lo = k0 / BR, i_hi = last_query_tile<BR, BC, THREADS>(doc, i_lo, nqt, j);  // query tiles that see these keys
    const int n_steps = (i_hi - i_lo + 1) * G;

    auto load_step = [&](int step, int bb) {
        const int i = i_hi - step / G, h = g * G + step % G, q0 = i * BR;
        const uint32_t dq_ = sQ + bb * 2 * QH, ddo = sdO + bb * 2 * QH;  // buffer bb: half 0, half 1 at + QH
        if constexpr (W::TMA) {  // one thread; rows past T arrive as zeros
            if (tid == 0) {
                const uint32_t bar = smem_u32(qbar + bb);
                mbar_arrive_expect_tx(bar, 4 * QH);
                tma_load_4d(dq_, &tm_q, bar, 0, 2 * h, q0, b);
                tma_load_4d(dq_ + QH, &tm_q, bar, 0, 2 * h + 1, q0, b);
                tma_load_4d(ddo, &tm_do, bar, 0, 2 * h, q0, b);
                tma_load_4d(ddo + QH, &tm_do, bar, 0, 2 * h + 1, q0, b);
            }
        } else {
            const int64_t off = (int64_t(b) * T + q0) * q_stride + int64_t(h) * D;
#pragma unroll
            for (int c = 0; c < 2; ++c) {
                load_tile_sw128<BR, THREADS>(dq_ + c * QH, p.q + off + c * 64, q_stride, T - q0);
                load_tile_sw128<BR, THREADS>(ddo + c * QH, p.dO + off + c * 64, q_stride, T - q0);
            }
        }
        if (tid < BR) {
            const bool ok = q0 + tid < T;
            const int64_t rix = (int64_t(b) * H + h) * T + q0 + tid;
            cp_async4(smem_u32(lse_s + bb * BR + tid), ok ? p.lse + rix : p.lse, ok ? 4 : 0);
            cp_async4(smem_u32(dr_s + bb * BR + tid), ok ? p.Dr + rix : p.Dr, ok ? 4 : 0);
            cp_async4(smem_u32(ds_s + bb * BR + tid), doc && ok ? static_cast<const void*>(doc + q0 + tid) : p.lse, doc && ok ? 4 : 0);
        }
    };
    {
        const int64_t off = (int64_t(b) * T + k0) * kv_stride + int64_t(g) * D;
#pragma unroll
        for (int c = 0; c < 2; ++c) {
            load_tile_sw128<BC, THREADS>(sK + c * KH, p.k + off + c * 64, kv_stride, T - k0);
            load_tile_sw128<BC, THREADS>(sV + c * KH, p.v + off + c * 64, kv_stride, T - k0);
        }
    }
    load_step(0, 0);
    cp_async_commit();

    const int kw = warp * 16;                           // this warp's keys in the block
    const int mq = (warp % 4) * 16;                     // this warp's dQ rows
    const uint32_t sKg = sK + wg * 64 * ROW, sVg = sV + wg * 64 * ROW;  // this warpgroup's 64 keys (half 0; half 1 at + KH)
    float dk[2][8][4], dv[2][8][4];                     // [column half][n-tile][4]
#pragma unroll
    for (int c = 0; c < 2; ++c)
#pragma unroll
        for (int nd = 0; nd < 8; ++nd)
#pragma unroll
            for (int e = 0; e < 4; ++e) dk[c][nd][e] = dv[c][nd][e] = 0.f;
    DqHandoff handoff;  // the dq partials' tiles not yet released to their next contributors

    for (int step = 0; step < n_steps; ++step) {
        const int bb = step & 1;
        cp_async_wait_all();
        if constexpr (W::TMA) mbar_wait(smem_u32(qbar + bb), uint32_t(step >> 1) & 1u);  // use step/2 of buffer bb
        fence_proxy_async();  // this thread's copies, visible to wgmma
        __syncthreads();      // step's tiles landed; every product of the previous step is complete
        handoff.after_barrier<W::DQ == kDqBulk>(p.counters, tid);  // (kDqBulk: and step - 2's buffer is free)
        if (step + 1 < n_steps) {
            load_step(step + 1, bb ^ 1);
            cp_async_commit();
        }
        const int i = i_hi - step / G, h = g * G + step % G, q0 = i * BR;
        const uint32_t sQb = sQ + bb * 2 * QH, sdOb = sdO + bb * 2 * QH;
        const float* lse_b = lse_s + bb * BR;
        const float* dr_b = dr_s + bb * BR;
        const int* ds_b = ds_s + bb * BR;

        // S^T - lse/scale = K Q^T + (-lse/scale): both K-major, k = 128 in 8 steps (0-3: half 0, 4-7: half 1,
        // 32 bytes apart in a half). dP^T is issued later, with dV: one of S^T and dP^T in registers at a time.
        float st[NTQ][4];
        start_at_minus(st, lse_b, p.lse_to_s, tq);
        uint32_t kg = sKg, vg = sVg;
        asm volatile("" : "+r"(kg), "+r"(vg));  // (descriptors made here, not hoisted out of the loop: registers)
        const uint64_t dK0 = sw128_desc(kg, false), dQ0 = sw128_desc(sQb, false);
        wgmma_fence();
        wg_dot<2>(st, dK0, dQ0, KH, QH);
        wgmma_commit();
        wgmma_wait<0>();  // (no product is in flight across the branches below: ptxas would serialize them)
        wgmma_pin(st);

        // P^T, masked, packed to bf16 A fragments (as in flash_backward_kernel)
        const bool need_mask = k0 + BC - 1 > q0 || q0 + BR > T || k0 < ds_b[BR - 1];
        uint32_t pa[BR / 16][4];
        probs_as_fragments<BR>(st, pa, p.scale_log2, need_mask, k0 + kw + gr - q0, T - q0, q0, ds_b, tq);

        // dP^T - D = V dO^T + (-D) (as S^T), then dV += P^T dO (B[k = query][n = d] = dO, MN-major; one n64
        // product per column half): two groups; dS is formed once the first has landed, while dV runs
        float dpt[NTQ][4];
        start_at_minus(dpt, dr_b, 1.f, tq);
        const uint64_t dV0 = sw128_desc(vg, false), dO0 = sw128_desc(sdOb, false), dO0t = sw128_desc(sdOb, true);
        wgmma_pin(pa);
        wgmma_fence();
        wg_dot<2>(dpt, dV0, dO0, KH, QH);
        wgmma_commit();
        wg_accumulate(dv, pa, dO0t, QH);
        wgmma_commit();
        wgmma_wait<1>();  // dP^T
        wgmma_pin(dpt);

        // dS^T = P^T (dP^T - D) as bf16 A fragments, and into shared memory for dQ
        uint32_t dsa[BR / 16][4];
        ds_fragments(pa, dpt, dsa);
        store_ds(dsa, sdS, kw, gr, tq);

        // dK += dS^T Q: B[k = query][n = d] = Q, MN-major; one n64 product per column half
        const uint64_t dQ0t = sw128_desc(sQb, true);
        wgmma_pin(dsa);
        wgmma_fence();
        wg_accumulate(dk, dsa, dQ0t, QH);
        wgmma_commit();
        wgmma_wait<0>();  // dV and dK
        wgmma_pin(dk[0]);
        wgmma_pin(dk[1]);
        wgmma_pin(dv[0]);
        wgmma_pin(dv[1]);

        if constexpr (W::DQ == kDqNone) continue;
        // Our turn for this dq tile (see flash_backward_kernel)
        const int jmin = doc ? ds_b[0] / BC : 0, jmax = min(q0 + BR - 1, T - 1) / BC;
        const bool first = j == jmin, last = j == jmax;
        const int cidx = (b * H + h) * nqt + i;
        if (W::DQ == kDqOrdered && tid == 0 && !first) wait_counter(p.counters + cidx, unsigned(j - jmin));
        fence_proxy_async();  // this thread's dS^T stores, visible to wgmma
        __syncthreads();      // dS^T complete; the counter seen

        // dQ_part = dS K, column half(s) wg * NC + c of this warpgroup: A[m = query][k = key] = dS^T,
        // B[k = key][n = d] = K half, both MN-major; k = the block's BC keys, 16 rows (2048 bytes) a step
        float dq[NC][8][4];
        uint32_t ks = sK + wg * NC * KH, dss = sdS;
        asm volatile("" : "+r"(ks), "+r"(dss));  // (descriptors made here, not hoisted out of the loop: registers)
        const uint64_t dS0 = sw128_desc(dss, true), dKs = sw128_desc(ks, true);
        wgmma_fence();
#pragma unroll
        for (int c = 0; c < NC; ++c) wg_dq<BC / 16>(dq[c], dS0, dKs, c * KH);
        wgmma_commit();
        wgmma_wait<0>();
#pragma unroll
        for (int c = 0; c < NC; ++c) wgmma_pin(dq[c]);

        if constexpr (W::DQ == kDqBulk) {
            // Into shared memory (the tile's layout, below), then one thread adds it to the tile in its turn with
            // the TMA (the first contributor stores it); dq in bf16 comes from dq_from_tiles after the kernel.
            float4* buf = reinterpret_cast<float4*>(smem_raw + (sDQ + uint32_t(step & 1) * W::DQ_TILE - raw)) + lane;
#pragma unroll
            for (int c = 0; c < NC; ++c)
#pragma unroll
                for (int nt = 0; nt < 8; ++nt)
                    buf[((wg * NC + c) * 4 + warp % 4) * 8 * 32 + nt * 32] = make_float4(dq[c][nt][0], dq[c][nt][1], dq[c][nt][2], dq[c][nt][3]);
            fence_proxy_async();  // this thread's stores, visible to the TMA
            __syncthreads();      // the partial complete
            if (tid == 0) bulk_add_partial<W::DQ_TILE>(p, cidx, first, unsigned(j - jmin), sDQ + uint32_t(step & 1) * W::DQ_TILE);
            if (!last) handoff.hand(cidx, unsigned(j - jmin + 1));
            continue;
        }
        // Into the tile (float4 index ((half * 4 + warp % 4) * 8 + n-tile) * 32 + lane): the first contributor
        // stores, the others add with reductions; the last (the diagonal block) then reads the sum back (its own
        // reductions, same thread and address: ordered), scales and writes bf16 dq. (Adding in the L2 rather
        // than in registers keeps the partial and the sum from being live together: registers.)
        float4* acct = reinterpret_cast<float4*>(p.dq_acc + int64_t(cidx) * (BR * D)) + lane;
        auto write_dq = [&](int ch, int nt, float4 sum) {
            const int col = ch * 64 + nt * 8 + 2 * tq, row = q0 + mq + gr;
            bf16* dst = p.dq + (int64_t(b) * T + row) * q_stride + int64_t(h) * D + col;
            if (row < T) *reinterpret_cast<__nv_bfloat162*>(dst) = __floats2bfloat162_rn(sum.x * p.scale, sum.y * p.scale);
            if (row + 8 < T)
                *reinterpret_cast<__nv_bfloat162*>(dst + 8 * q_stride) = __floats2bfloat162_rn(sum.z * p.scale, sum.w * p.scale);
        };
        if (first && last) {  // the only contributor
#pragma unroll
            for (int c = 0; c < NC; ++c)
#pragma unroll
                for (int nt = 0; nt < 8; ++nt) write_dq(wg * NC + c, nt, make_float4(dq[c][nt][0], dq[c][nt][1], dq[c][nt][2], dq[c][nt][3]));
        } else {
#pragma unroll
            for (int c = 0; c < NC; ++c) {
                float4* accp = acct + ((wg * NC + c) * 4 + warp % 4) * 8 * 32;
#pragma unroll
                for (int nt = 0; nt < 8; ++nt) {
                    const float4 part = make_float4(dq[c][nt][0], dq[c][nt][1], dq[c][nt][2], dq[c][nt][3]);
                    if (first) __stcg(accp + nt * 32, part);
                    else red_add_f32x4(accp + nt * 32, part);
                }
            }
            if (last) {
#pragma unroll
                for (int c = 0; c < NC; ++c) {
                    const float4* accp = acct + ((wg * NC + c) * 4 + warp % 4) * 8 * 32;
#pragma unroll
                    for (int nt = 0; nt < 8; ++nt) write_dq(wg * NC + c, nt, __ldcg(accp + nt * 32));
                }
            }
        }
        if (!last) handoff.hand(cidx, unsigned(j - jmin + 1));
    }
    __syncthreads();
    handoff.finish<W::DQ == kDqBulk>(p.counters, tid);
    store_dk_dv(p, dk, dv, b, g, k0 + kw + gr, tq, T, kv_stride);
#else
    __trap();  // launched only where wgmma_available() says the sm_90a code is there
#endif
}

// The launcher (the harness's BwdFn signature); the workspace is Lib<128>::Bwd's (BR 64, D 128).
template <class W>
void launch_backward_wgmma_d128(const AttentionShape& a, const bf16* q, const bf16* k, const bf16* v, const bf16* o, const bf16* dO,
                                const float* lse, const int32_t* doc_start, bf16* dq, bf16* dk, bf16* dv, void* workspace,
                                cudaStream_t stream) {
    static_assert(W::BR == Lib<128>::Bwd::BR && W::D == Lib<128>::Bwd::D, "the same backward workspace");
    check_shape(a, {q, k, v, o, dO, dq, dk, dv});
    if (!ws_backward_applies<128>(a, {q, k, v, dO, dq, dk, dv}))
        fail("flash attention: the head_dim 128 wgmma backward needs head_dim 128, 16-byte aligned rows and an sm_90a build on an H100/H200");
    static bool configured = false;
    if (!configured) {
        check_cuda(cudaFuncSetAttribute(flash_backward_wgmma_d128_kernel<W>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(W::smem)),
                   "cudaFuncSetAttribute(flash_backward_wgmma_d128_kernel)");
        configured = true;
    }
    const BwdArgs p = prepare_backward(W::BR, W::D, a, q, k, v, o, dO, lse, doc_start, dq, dk, dv, workspace, stream);
    CUtensorMap tm_q{}, tm_do{};
    // Each head's 128 columns as two 64-column heads: column half c of head h is head 2h + c of the map.
    if (W::TMA) tm_q = head_rows_map(q, a.B, a.T, 2 * a.H, W::BR), tm_do = head_rows_map(dO, a.B, a.T, 2 * a.H, W::BR);
    const unsigned blocks = unsigned((a.T + W::BC - 1) / W::BC) * unsigned(a.B * a.KVH);
    flash_backward_wgmma_d128_kernel<W><<<blocks, unsigned(W::THREADS), W::smem, stream>>>(p, tm_q, tm_do);
    check_launch("flash_backward_wgmma_d128_kernel");
    if constexpr (W::DQ == kDqBulk) launch_dq_from_tiles<W::D>(p.dq_acc, dq, a, p.scale, stream);
}

}  // namespace
