// kernels/attention_sm90_d128.cuh — the Hopper (sm_90a) fused-attention forward for head_dim 128:
// flash_forward_wgmma_kernel's algorithm, pipeline and masks (attention_sm90.cuh) with every row of Q, K and V
// twice as wide. (The backward at head_dim 128 is still attention.cu's mma.sync kernel.)
//   o[t] = sum_j softmax_j(scale q_t . k_j) v_j over doc_start[t] <= j <= t,  lse[t] = log sum_j exp(scale q_t . k_j)
// (scale = 1/sqrt(128); o [B, T, H, 128] bf16, lse [B, H, T] fp32 in natural log, as the backward reads it).
// Owns: WgFwdD128Config, flash_forward_wgmma_d128_kernel, hopper_forward_d128 (the launcher). Reuses from
// attention_sm90.cuh the descriptors (sw128_desc, sw128_desc_plus), the wgmma wrappers, the mbarrier/TMA
// helpers, head_rows_map and the softmax pieces (wg_row_max, wg_exp, wg_pack, wg_pv), and from attention.cu
// FwdArgs and the shape checks; attention.cu includes it after attention_sm90.cuh and runs it where
// wgmma_d128_applies(); dev/attention.cu times its other configurations ("v6 fwd D128").
//
// The difference from head_dim 64: a 128-byte swizzled tile row holds 64 bf16, a row of Q/K/V is 128. So every
// tile is stored as two column halves, each its own 128-byte-swizzled tile of 64 columns (rows of 128 bytes,
// 8-row atoms of 1024 bytes), brought by its own TMA copy. head_rows_map is used unchanged: a [B, T, heads, 128]
// tensor is a [B, T, 2 heads, 64] one, and column half c of head h is its "head" 2h + c.
//   S = Q K^T    (both K-major, k = head dim) 8 k-steps of 16: steps 0-3 read half 0 of Q and K, 4-7 half 1
//                (within a half a step moves the descriptor 32 bytes, as at head_dim 64)
//   O += P V     (P from registers, V MN-major: n = head dim) two wgmma n64 per k-step, one per half of V into
//                o[0] (columns 0-63) and o[1] (64-127): each exactly the head_dim 64 kernel's P V
// Shared memory (1024-byte aligned): Q [2 halves][BR rows][128 B], then NS stages of
// K [2 halves][BC][128 B] and V [2 halves][BC][128 B].
// Registers per thread: O 64 fp32, S BC/2 fp32, P BC/4 bf16x2 (all three live while S of the next key block
// and P V of this one are in flight): 160 + addressing at BC 128, so BC 128 needs 2 warpgroups (255-register
// cap at 256 threads); 3 warpgroups (cap 168) take BC 64.
// Pipeline (as flash_forward_wgmma_kernel): thread 0 issues the copies; stage n % NS holds key block n and is
// refilled once every warp has handed back block n; step n reads K of block n + 1 and V of block n, so a copy
// has NS - 2 steps to land before it is waited for (NS = 2 would leave none).
#pragma once

namespace {

template <int NWG_, int BC_, int NS_>
struct WgFwdD128Config {  // NWG warpgroups per block (64 query rows each), BC keys per block, NS stages of K and V
    static constexpr int NWG = NWG_, BC = BC_, NS = NS_;
    static constexpr int D = 128, BR = 64 * NWG, THREADS = 128 * NWG, ROW = 128;  // ROW: bytes per row of a half
    static constexpr uint32_t Q_HALF = uint32_t(BR) * ROW, KV_HALF = uint32_t(BC) * ROW;  // bytes of one column half
    static constexpr uint32_t STAGE = 4 * KV_HALF;                                          // K half 0, 1, V half 0, 1
    static constexpr size_t smem = 1024 + 2 * size_t(Q_HALF) + size_t(NS) * STAGE;          // alignment; Q; stages
    static_assert((BC == 64 || BC == 96 || BC == 128) && NS >= 2 && NWG >= 1 && NWG <= 3, "tile shape (a TMA box has at most 256 rows)");
    static_assert(smem + (2 * NS + 1) * 8 <= 227 * 1024, "shared memory: at most 227 KB per block on an H100");
};

#if ATTENTION_WGMMA
// One k-step of 16 of s[64 x BC] (+)= A B, both K-major from shared memory (ACC = 0: s = A B).
template <int NT, int ACC>
__device__ __forceinline__ void wg_qk_step(float (&s)[NT][4], uint64_t a, uint64_t b) {
    if constexpr (NT == 16) wgmma_64x128_ss<0, 0, ACC>(s, a, b);
    else if constexpr (NT == 12) wgmma_64x96_ss<0, 0, ACC>(s, a, b);
    else wgmma_64x64_ss<0, 0, ACC>(s, a, b);
}
// s = Q K^T for one key block, k = Dh = 128 in 8 steps of 16: descriptors of this warpgroup's Q rows in
// column halves 0 and 1 (dq0, dq1) and of the K block's halves (dk0, dk1); steps 32 bytes apart in a half.
template <int NT>
__device__ __forceinline__ void wg_scores_d128(float (&s)[NT][4], uint64_t dq0, uint64_t dq1, uint64_t dk0, uint64_t dk1) {
    wg_qk_step<NT, 0>(s, dq0, dk0);
#pragma unroll
    for (int kk = 1; kk < 4; ++kk) wg_qk_step<NT, 1>(s, sw128_desc_plus(dq0, kk * 32), sw128_desc_plus(dk0, kk * 32));
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) wg_qk_step<NT, 1>(s, sw128_desc_plus(dq1, kk * 32), sw128_desc_plus(dk1, kk * 32));
}
#endif

// o[t] = sum_j softmax_j(scale q_t . k_j) v_j over doc_start[t] <= j <= t;  lse[t] = log sum_j exp(...)
// tm_q, tm_k, tm_v: q, k, v as 4-D maps (64 columns, 2 heads, t, b) whose boxes are BR (q) or BC (k, v) tokens of
// one column half of one head (head_rows_map with 2 H or 2 KVH heads).
template <class W>
__global__ void __launch_bounds__(W::THREADS, 1)
    flash_forward_wgmma_d128_kernel(const FwdArgs p, const __grid_constant__ CUtensorMap tm_q, const __grid_constant__ CUtensorMap tm_k,
                                    const __grid_constant__ CUtensorMap tm_v) {
#if ATTENTION_WGMMA
    constexpr int NWG = W::NWG, BR = W::BR, BC = W::BC, NS = W::NS, ROW = W::ROW, NT = BC / 8, KC = BC / 16;
    constexpr uint32_t QH = W::Q_HALF, KH = W::KV_HALF;
    extern __shared__ __align__(16) unsigned char smem_raw[];
    __shared__ __align__(8) uint64_t bars[2 * NS + 1];  // full [NS], empty [NS], Q
    // Q: half 0 [BR][128 B] at sQ, half 1 at sQ + QH; stage st at sS + st * STAGE: K half 0, 1, V half 0, 1 [BC][128 B]
    const uint32_t sQ = (smem_u32(smem_raw) + 1023u) & ~1023u, sS = sQ + 2 * QH;
    const uint32_t full = smem_u32(bars), empty = full + 8 * NS, qbar = full + 16 * NS;

    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, wg = warp / 4, tq = lane % 4;
    const int T = p.T, H = p.H;
    const int bh = blockIdx.x, b = bh / H, h = bh % H, g = h / (H / p.KVH);
    const int q0 = (int(gridDim.y) - 1 - int(blockIdx.y)) * BR;  // longest key ranges first
    const int32_t* doc = p.doc ? p.doc + int64_t(b) * T : nullptr;

    const int last_row = min(q0 + BR - 1, T - 1);
    const int ds_first = doc ? doc[q0] : 0, ds_last = doc ? doc[last_row] : 0;
    const int kt_begin = ds_first / BC, n_blocks = last_row / BC - kt_begin + 1;  // key blocks kt_begin + n
    const int row0 = q0 + 16 * warp + lane / 4;  // this thread's rows: row0, row0 + 8
    const int row_ds[2] = {doc ? doc[min(row0, T - 1)] : 0, doc ? doc[min(row0 + 8, T - 1)] : 0};
    // Masks where a key may fall outside [doc_start[t], t] or beyond T.
    auto need_mask = [&](int kt) { return kt * BC + BC - 1 > q0 || kt * BC < ds_last || kt * BC + BC > T; };

    if (tid == 0) {
        for (int st = 0; st < NS; ++st) mbar_init(full + 8 * st, 1), mbar_init(empty + 8 * st, 4 * NWG);
        mbar_init(qbar, 1);
        mbar_init_fence();
    }
    __syncthreads();
    // Key block n (K then V, each as two column halves) into stage n % NS (thread 0).
    auto load_block = [&](int n) {
        const uint32_t bar = full + 8 * (n % NS), dst = sS + (n % NS) * W::STAGE;
        const int key0 = (kt_begin + n) * BC;
        mbar_arrive_expect_tx(bar, W::STAGE);
        tma_load_4d(dst, &tm_k, bar, 0, 2 * g, key0, b);
        tma_load_4d(dst + KH, &tm_k, bar, 0, 2 * g + 1, key0, b);
        tma_load_4d(dst + 2 * KH, &tm_v, bar, 0, 2 * g, key0, b);
        tma_load_4d(dst + 3 * KH, &tm_v, bar, 0, 2 * g + 1, key0, b);
    };
    if (tid == 0) {
        mbar_arrive_expect_tx(qbar, 2 * QH);
        tma_load_4d(sQ, &tm_q, qbar, 0, 2 * h, q0, b);
        tma_load_4d(sQ + QH, &tm_q, qbar, 0, 2 * h + 1, q0, b);
        for (int n = 0; n < min(NS, n_blocks); ++n) load_block(n);
    }
    const uint64_t desc_q0 = sw128_desc(sQ + wg * 64 * ROW, false), desc_q1 = sw128_desc_plus(desc_q0, QH);  // this warpgroup's Q rows
    const uint64_t desc_k0 = sw128_desc(sS, false), desc_v0 = sw128_desc(sS + 2 * KH, true);  // stage 0's K, V (half 0)
    auto stage_desc = [&](uint64_t desc0, int n, uint32_t half) { return sw128_desc_plus(desc0, (n % NS) * W::STAGE + half * KH); };

    float o[2][8][4], m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f}, alpha[2];  // o[c]: columns 64c..64c+63
#pragma unroll
    for (int c = 0; c < 2; ++c)
#pragma unroll
        for (int nd = 0; nd < 8; ++nd) o[c][nd][0] = o[c][nd][1] = o[c][nd][2] = o[c][nd][3] = 0.f;
    uint32_t pa[KC][4];  // P of the key block whose P V is next
    // s = Q K^T of key block n; o += P V of key block n (pa)
    auto scores = [&](float (&s)[NT][4], int n) {
        wg_scores_d128(s, desc_q0, desc_q1, stage_desc(desc_k0, n, 0), stage_desc(desc_k0, n, 1));
    };
    auto pv = [&](int n) {
        wg_pv(o[0], pa, stage_desc(desc_v0, n, 0));  // columns 0-63: V half 0
        wg_pv(o[1], pa, stage_desc(desc_v0, n, 1));  // columns 64-127: V half 1
    };

    mbar_wait(qbar, 0);
    mbar_wait(full, 0);
    {  // the first key block: S, softmax
        float s[NT][4];
        wgmma_fence();
        scores(s, 0);
        wgmma_commit();
        wgmma_wait<0>();
        wgmma_pin(s);
        float m_use[2];
        if (need_mask(kt_begin)) wg_row_max<true>(s, m, alpha, m_use, p.scale_log2, kt_begin * BC + 2 * tq, row0, row_ds, T);
        else wg_row_max<false>(s, m, alpha, m_use, p.scale_log2, kt_begin * BC + 2 * tq, row0, row_ds, T);
        wg_exp(s, l, alpha, m_use, p.scale_log2);
        wg_pack(s, pa);
    }

    // Step n: S_{n+1} = Q K_{n+1}^T and O += P_n V_n issued together; the softmax of S_{n+1} while P V runs;
    // then O *= alpha and P_{n+1} packed into pa once P V is done with it (as flash_forward_wgmma_kernel).
    auto step = [&](auto mask, int n) {
        float s[NT][4], m_use[2];
        wgmma_pin(o[0]);  // (o *= alpha and the packing of pa stay above the fence)
        wgmma_pin(o[1]);
        wgmma_pin(pa);
        wgmma_fence();
        scores(s, n + 1);
        wgmma_commit();
        pv(n);
        wgmma_commit();
        wgmma_wait<1>();  // S
        wgmma_pin(s);
        wg_row_max<decltype(mask)::value>(s, m, alpha, m_use, p.scale_log2, (kt_begin + n + 1) * BC + 2 * tq, row0, row_ds, T);
        wg_exp(s, l, alpha, m_use, p.scale_log2);
        wgmma_wait<0>();  // P V
        wgmma_pin(o[0]);
        wgmma_pin(o[1]);
#pragma unroll
        for (int c = 0; c < 2; ++c)
#pragma unroll
            for (int nd = 0; nd < 8; ++nd)
                o[c][nd][0] *= alpha[0], o[c][nd][1] *= alpha[0], o[c][nd][2] *= alpha[1], o[c][nd][3] *= alpha[1];
        wg_pack(s, pa);
    };
    for (int n = 0; n + 1 < n_blocks; ++n) {
        // Thread 0 refills the stage of block n - 1 (every warp is past it) with block n - 1 + NS.
        if (tid == 0 && n >= 1 && n - 1 + NS < n_blocks) {
            mbar_wait(empty + 8 * ((n - 1) % NS), ((n - 1) / NS) & 1);
            load_block(n - 1 + NS);
        }
        mbar_wait(full + 8 * ((n + 1) % NS), ((n + 1) / NS) & 1);  // block n + 1 has landed
        if (need_mask(kt_begin + n + 1)) step(std::true_type{}, n);
        else step(std::false_type{}, n);
        if (lane == 0) mbar_arrive(empty + 8 * (n % NS));  // this warp is done with block n
    }

    // The last block's P V
    wgmma_pin(o[0]);
    wgmma_pin(o[1]);
    wgmma_pin(pa);
    wgmma_fence();
    pv(n_blocks - 1);
    wgmma_commit();
    wgmma_wait<0>();
    wgmma_pin(o[0]);
    wgmma_pin(o[1]);

    // o = O / l, lse = (m + log2 l) ln 2
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
        float lt = l[hf];
        lt += __shfl_xor_sync(0xffffffffu, lt, 1);
        lt += __shfl_xor_sync(0xffffffffu, lt, 2);
        const float inv = lt > 0.f ? 1.f / lt : 0.f;
        const int row = row0 + 8 * hf;
        if (row < T) {
            bf16* orow = p.o + (int64_t(b) * T + row) * (int64_t(H) * W::D) + int64_t(h) * W::D;
#pragma unroll
            for (int c = 0; c < 2; ++c)
#pragma unroll
                for (int nd = 0; nd < 8; ++nd)
                    *reinterpret_cast<__nv_bfloat162*>(orow + c * 64 + nd * 8 + 2 * tq) =
                        __floats2bfloat162_rn(o[c][nd][2 * hf] * inv, o[c][nd][2 * hf + 1] * inv);
            if (tq == 0) p.lse[(int64_t(b) * H + h) * T + row] = m[hf] * kLn2 + logf(lt);
        }
    }
#else
    __trap();  // launched only where wgmma_d128_applies() says the sm_90a code is there
#endif
}

// This kernel's conditions: Dh = 128 with 16-byte aligned tensors, on a GPU that runs this build's sm_90a code.
bool wgmma_d128_applies(const AttentionShape& a, std::initializer_list<const void*> ptrs) {
    return a.Dh == 128 && all_aligned(ptrs, 16) && wgmma_available();
}

// The launcher (doc_start: [B, T] or null), with the signature of flash_attention_forward.
template <class W>
void hopper_forward_d128(const AttentionShape& a, const bf16* q, const bf16* k, const bf16* v, const int32_t* doc_start, bf16* o,
                         float* lse, cudaStream_t stream) {
    check_shape(a, {q, k, v, o});
    if (!wgmma_d128_applies(a, {q, k, v, o}))
        fail("flash attention: the head_dim 128 wgmma forward needs head_dim 128, 16-byte aligned rows and an sm_90a build on an H100/H200");
    static bool configured = false;
    if (!configured) {
        check_cuda(cudaFuncSetAttribute(flash_forward_wgmma_d128_kernel<W>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(W::smem)),
                   "cudaFuncSetAttribute(flash_forward_wgmma_d128_kernel)");
        configured = true;
    }
    const FwdArgs p{q, k, v, doc_start, o, lse, a.B, a.T, a.H, a.KVH, a.Dh, float(kLog2e / std::sqrt(double(a.Dh))), true};
    // Each head's 128 columns as two 64-column heads: column half c of head h is head 2h + c of the map.
    const CUtensorMap tm_q = head_rows_map(q, a.B, a.T, 2 * a.H, W::BR), tm_k = head_rows_map(k, a.B, a.T, 2 * a.KVH, W::BC),
                      tm_v = head_rows_map(v, a.B, a.T, 2 * a.KVH, W::BC);
    const dim3 grid(unsigned(a.B * a.H), unsigned((a.T + W::BR - 1) / W::BR));
    flash_forward_wgmma_d128_kernel<W><<<grid, W::THREADS, W::smem, stream>>>(p, tm_q, tm_k, tm_v);
    check_launch("flash_forward_wgmma_d128_kernel");
}

}  // namespace
