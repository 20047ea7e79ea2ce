// dev/attention_v13.cuh — v13: the Hopper forward (../kernels/attention_sm90.cuh) as a persistent kernel: one
// block per SM walks its share of the tiles, the K/V stages one ring across its tiles, Q in QB buffers.
// Measured and not kept (dev/NOTES.md, v13): 9% faster than its own one-tile launch at T = 1,024, but its
// code runs each key block 15-20% slower than the library's one-tile kernel (6% more instructions, issue
// slots 47% -> 41% busy), so it loses from T = 2,048 on; at T = 1,024 its 128-row tiles at head_dim 64 beat
// the library's kernel by 6%. PersistFwd<W, QB> adds the Q buffers to a WgFwdConfig.
#pragma once

template <class W, int QB_>
struct PersistFwd : W {
    static constexpr int QB = QB_;
    static constexpr size_t smem = 1024 + QB * W::HALVES * size_t(W::Q_HALF) + size_t(W::NS) * W::STAGE;  // alignment; Q [QB]; stages
    static_assert(QB == 1 || QB == 2, "one or two Q buffers");
    static_assert(smem + (2 * W::NS + 2 * QB) * 8 + 64 <= 227 * 1024, "shared memory: at most 227 KB per block");
};

// One tile: query rows q0.. of head h of sequence b, key blocks kt_begin .. kt_begin + n_blocks - 1.
struct FwdTile {
    int b, h, g, q0, kt_begin, n_blocks, ds_last;
};
// Tile i: the query-row blocks longest first, (b, h) inner.
template <class W>
__device__ __forceinline__ FwdTile fwd_tile(const FwdArgs& p, int i) {
    const int nq = (p.T + W::BR - 1) / W::BR, bh = i % (p.B * p.H);
    FwdTile t;
    t.b = bh / p.H, t.h = bh % p.H, t.g = t.h / (p.H / p.KVH);
    t.q0 = (nq - 1 - i / (p.B * p.H)) * W::BR;
    const int last_row = min(t.q0 + W::BR - 1, p.T - 1);
    const int32_t* doc = p.doc ? p.doc + int64_t(t.b) * p.T : nullptr;
    const int ds_first = doc ? doc[t.q0] : 0;
    t.ds_last = doc ? doc[last_row] : 0;
    t.kt_begin = ds_first / W::BC, t.n_blocks = last_row / W::BC - t.kt_begin + 1;
    return t;
}
// The loader's cursor, in shared memory (only the loader thread touches it): the next key block to load (its
// tile as the block's local count, its place in the tile, its global count) and that tile's coordinates;
// how many tiles' Q are loaded.
struct FwdLoader {
    int kv_tile, kv_block, kv_count, q_count;
    int b, g, kt_begin, n_blocks;
};

// o[t] = sum_j softmax_j(scale q_t . k_j) v_j over doc_start[t] <= j <= t;  lse[t] = log sum_j exp(...)
// tm_q, tm_k, tm_v: q, k, v as 4-D maps (64 columns, HALVES heads, t, b) whose boxes are BR (q) or BC (k, v)
// tokens of one half of one head.
// A block walks tiles (persistent: one block per SM, dev v13): in rounds of gridDim.x tiles in fwd_tile's
// longest-first order, each round walked the other way round from the one before (a block with a round's
// longest tile gets the next round's shortest). Launched with one block per tile, each block has one tile.
// The loads never stop at a tile's edge: the K/V stages are one ring over all the block's key blocks (global
// count j: stage j % NS, phase (j / NS) & 1), so the next tile's first key blocks land under this tile's last
// steps, and Q has QB buffers (tile t in buffer t % QB) with a full and an empty mbarrier each (QB = 2: the
// next tile's Q loads at this tile's start; QB = 1: once every warp is done with this tile). The loader loads
// key block j only once its own warp has released block j - NS, and a tile's Q only once its warp is done
// with the tile that used the buffer before: it waits for the other warps, never for itself.
template <class W>
__global__ void __launch_bounds__(W::THREADS, 1)
    flash_forward_persistent_kernel(const FwdArgs p, const __grid_constant__ CUtensorMap tm_q, const __grid_constant__ CUtensorMap tm_k,
                               const __grid_constant__ CUtensorMap tm_v) {
#if ATTENTION_WGMMA
    constexpr int NWG = W::NWG, BC = W::BC, NS = W::NS, QB = W::QB, ROW = W::ROW, HV = W::HALVES, NT = BC / 8, KC = BC / 16;
    constexpr uint32_t QH = W::Q_HALF, KH = W::KV_HALF;
    extern __shared__ __align__(16) unsigned char smem_raw[];
    __shared__ __align__(8) uint64_t bars[2 * NS + 2 * QB];  // full [NS], empty [NS], Q full [QB], Q empty [QB]
    __shared__ FwdLoader cur;
    // Q buffer u, half c: [BR][128 B] at sQ + (u HV + c) QH; stage st at sS + st STAGE: K's halves, then V's, [BC][128 B] each
    const uint32_t sQ = (smem_u32(smem_raw) + 1023u) & ~1023u, sS = sQ + QB * HV * QH;
    const uint32_t full = smem_u32(bars), empty = full + 8 * NS, qfull = full + 16 * NS, qempty = qfull + 8 * QB;

    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, wg = warp / 4, tq = lane % 4;
    const int T = p.T, H = p.H, tiles = p.B * p.H * ((T + W::BR - 1) / W::BR);
    auto tile_index = [&](int t) {  // this block's t-th tile
        return t * int(gridDim.x) + ((t & 1) ? int(gridDim.x) - 1 - int(blockIdx.x) : int(blockIdx.x));
    };
    // PP: the last warpgroup's first thread loads (warpgroup 0's turns never wait for it); else thread 0
    const bool loader = tid == (W::PP ? (NWG - 1) * 128 : 0);

    if (tid == 0) {
        for (int st = 0; st < NS; ++st) mbar_init(full + 8 * st, 1), mbar_init(empty + 8 * st, 4 * NWG);
        for (int u = 0; u < QB; ++u) mbar_init(qfull + 8 * u, 1), mbar_init(qempty + 8 * u, 4 * NWG);
        mbar_init_fence();
    }
    if (loader) {
        const FwdTile f = fwd_tile<W>(p, tile_index(0));
        cur = {0, 0, 0, 0, f.b, f.g, f.kt_begin, f.n_blocks};
    }
    __syncthreads();

    // The loader tops up: every key block j < released + NS (its warp has released the blocks before
    // `released`) and every Q of a tile t < q_done + QB (its warp is done with the tiles before `q_done`).
    auto top_up = [&](int released, int q_done) {
        while (cur.q_count < q_done + QB && tile_index(cur.q_count) < tiles) {
            const int t = cur.q_count, u = t % QB;
            if (t >= QB) mbar_wait(qempty + 8 * u, ((t / QB) + 1) & 1);  // tile t - QB is done with it
            const FwdTile f = fwd_tile<W>(p, tile_index(t));
            mbar_arrive_expect_tx(qfull + 8 * u, HV * QH);
            for (int c = 0; c < HV; ++c) tma_load_4d(sQ + (u * HV + c) * QH, &tm_q, qfull + 8 * u, 0, HV * f.h + c, f.q0, f.b);
            ++cur.q_count;
        }
        while (cur.kv_count < released + NS && tile_index(cur.kv_tile) < tiles) {
            const int j = cur.kv_count, st = j % NS;
            if (j >= NS) mbar_wait(empty + 8 * st, ((j / NS) + 1) & 1);  // every warp has released block j - NS
            const uint32_t bar = full + 8 * st, dst = sS + st * W::STAGE;
            const int key0 = (cur.kt_begin + cur.kv_block) * BC;
            mbar_arrive_expect_tx(bar, W::STAGE);
            for (int c = 0; c < HV; ++c) {
                tma_load_4d(dst + c * KH, &tm_k, bar, 0, HV * cur.g + c, key0, cur.b);
                tma_load_4d(dst + (HV + c) * KH, &tm_v, bar, 0, HV * cur.g + c, key0, cur.b);
            }
            ++cur.kv_count;
            if (++cur.kv_block == cur.n_blocks) {
                ++cur.kv_tile, cur.kv_block = 0;
                if (tile_index(cur.kv_tile) < tiles) {
                    const FwdTile f = fwd_tile<W>(p, tile_index(cur.kv_tile));
                    cur.b = f.b, cur.g = f.g, cur.kt_begin = f.kt_begin, cur.n_blocks = f.n_blocks;
                }
            }
        }
    };
    if (loader) top_up(0, 0);
    __syncwarp();  // (the loader's warp converged again before the products)

    const uint64_t desc_k0 = sw128_desc(sS, false), desc_v0 = sw128_desc(sS + HV * KH, true);  // stage 0's K, V (half 0)
    auto stage_desc = [&](uint64_t desc0, int j) { return sw128_desc_plus(desc0, (j % NS) * W::STAGE); };
    int n_tiles = 0;
    while (tile_index(n_tiles) < tiles) ++n_tiles;

    // PP (FlashAttention-3's pingpong): the warpgroups take turns to issue their products, so that one's
    // softmax runs while the next one's products hold the tensor cores. Each warpgroup issues n_blocks + 1
    // times a tile (the first S, each step's S and P V, the last P V); warpgroup w waits for its turn at named
    // barrier 1 + w (its 128 threads and the 128 of the warpgroup before it, which arrive after issuing) and
    // hands it on to w + 1 (mod NWG). The ring runs on across tiles: the last warpgroup opens warpgroup 0's
    // first turn and skips its hand-on only at its very last issue, so every barrier's arrivals match its waits.
    auto turn_wait = [&] {
        if constexpr (W::PP) named_barrier(1 + wg, 256);
    };
    auto turn_pass = [&](bool last) {
        if constexpr (W::PP)
            if (!(last && wg == NWG - 1)) named_barrier_arrive(1 + (wg + 1) % NWG, 256);
    };
    if constexpr (W::PP)
        if (wg == NWG - 1) named_barrier_arrive(1, 256);

    int j0 = 0;  // the global count of this tile's first key block
    for (int t = 0; t < n_tiles; ++t) {
        const FwdTile f = fwd_tile<W>(p, tile_index(t));
        const int b = f.b, h = f.h, q0 = f.q0, kt_begin = f.kt_begin, n_blocks = f.n_blocks, u = t % QB;
        const int32_t* doc = p.doc ? p.doc + int64_t(b) * T : nullptr;
        const int row0 = q0 + 16 * warp + lane / 4;  // this thread's rows: row0, row0 + 8
        const int row_ds[2] = {doc ? doc[min(row0, T - 1)] : 0, doc ? doc[min(row0 + 8, T - 1)] : 0};
        // Masks where a key may fall outside [doc_start[t], t] or beyond T.
        auto need_mask = [&](int kt) { return kt * BC + BC - 1 > q0 || kt * BC < f.ds_last || kt * BC + BC > T; };
        uint64_t desc_q[HV];  // this warpgroup's Q rows, half by half
#pragma unroll
        for (int c = 0; c < HV; ++c) desc_q[c] = sw128_desc(sQ + (u * HV + c) * QH + wg * 64 * ROW, false);

        float o[HV][8][4], m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f}, alpha[2];  // o[c]: columns 64c..64c+63
#pragma unroll
        for (int c = 0; c < HV; ++c)
#pragma unroll
            for (int nd = 0; nd < 8; ++nd) o[c][nd][0] = o[c][nd][1] = o[c][nd][2] = o[c][nd][3] = 0.f;
        uint32_t pa[KC][4];  // P of the key block whose P V is next
        auto pv = [&](int j) {  // o += P V of key block j (global count), half by half of V
#pragma unroll
            for (int c = 0; c < HV; ++c) wg_pv(o[c], pa, sw128_desc_plus(stage_desc(desc_v0, j), c * KH));
        };
        auto pin_o = [&] {
#pragma unroll
            for (int c = 0; c < HV; ++c) wgmma_pin(o[c]);
        };

        mbar_wait(qfull + 8 * u, (t / QB) & 1);
        mbar_wait(full + 8 * (j0 % NS), (j0 / NS) & 1);
        {  // the first key block: S, softmax
            float s[NT][4];
            turn_wait();
            wgmma_fence();
            wg_scores(s, desc_q, stage_desc(desc_k0, j0), KH);
            wgmma_commit();
            turn_pass(false);
            wgmma_wait<0>();
            wgmma_pin(s);
            float m_use[2];
            if (need_mask(kt_begin)) wg_row_max<true>(s, m, alpha, m_use, p.scale_log2, kt_begin * BC + 2 * tq, row0, row_ds, T);
            else wg_row_max<false>(s, m, alpha, m_use, p.scale_log2, kt_begin * BC + 2 * tq, row0, row_ds, T);
            wg_exp(s, l, alpha, m_use, p.scale_log2);
            pack_fragments(s, pa);
        }

        // Step n: S_{n+1} = Q K_{n+1}^T and O += P_n V_n issued together; the softmax of S_{n+1} while P V runs;
        // then O *= alpha and P_{n+1} packed into pa (only once P V is done with it: ptxas serializes every wgmma
        // if the registers of an in-flight register operand are written). (ptxas places the wait for P V early in
        // the softmax, before its first shuffle, so in fact little of a warpgroup's own softmax runs under its
        // P V: the other warpgroups' products fill the tensor cores. dev/NOTES.md, "wgmma forward".)
        auto step = [&](auto mask, int n) {
            float s[NT][4], m_use[2];
            pin_o();  // (o *= alpha and the packing of pa stay above the fence)
            wgmma_pin(pa);
            turn_wait();
            wgmma_fence();
            wg_scores(s, desc_q, stage_desc(desc_k0, j0 + n + 1), KH);
            wgmma_commit();
            pv(j0 + n);
            wgmma_commit();
            turn_pass(false);
            wgmma_wait<1>();  // S
            wgmma_pin(s);
            wg_row_max<decltype(mask)::value>(s, m, alpha, m_use, p.scale_log2, (kt_begin + n + 1) * BC + 2 * tq, row0, row_ds, T);
            wg_exp(s, l, alpha, m_use, p.scale_log2);
            wgmma_wait<0>();  // P V
            pin_o();
#pragma unroll
            for (int c = 0; c < HV; ++c)
#pragma unroll
                for (int nd = 0; nd < 8; ++nd)
                    o[c][nd][0] *= alpha[0], o[c][nd][1] *= alpha[0], o[c][nd][2] *= alpha[1], o[c][nd][3] *= alpha[1];
            pack_fragments(s, pa);
        };
        for (int n = 0; n + 1 < n_blocks; ++n) {
            if (loader) top_up(j0 + n, t);  // its warp has released the blocks before j0 + n
            __syncwarp();
            const int j = j0 + n + 1;
            mbar_wait(full + 8 * (j % NS), (j / NS) & 1);  // block n + 1 has landed
            if (need_mask(kt_begin + n + 1)) step(std::true_type{}, n);
            else step(std::false_type{}, n);
            if (lane == 0) mbar_arrive(empty + 8 * ((j0 + n) % NS));  // this warp is done with block n
        }

        // The last block's P V; then this warp releases the block and the tile's Q buffer, and the loader
        // sends the next tiles' loads out before O is written.
        pin_o();
        wgmma_pin(pa);
        turn_wait();
        wgmma_fence();
        pv(j0 + n_blocks - 1);
        wgmma_commit();
        turn_pass(t + 1 == n_tiles);
        wgmma_wait<0>();
        pin_o();
        if (lane == 0) mbar_arrive(empty + 8 * ((j0 + n_blocks - 1) % NS)), mbar_arrive(qempty + 8 * u);
        j0 += n_blocks;
        if (loader) top_up(j0, t + 1);
        __syncwarp();

        wg_store_o_lse<HV>(p, o, m, l, b, h, row0, tq);
    }
#else
    __trap();  // launched only where wgmma_available() says the sm_90a code is there
#endif
}


// blocks: how many blocks walk the tiles (at most one per tile): 0 for one block per tile, -1 for one per SM;
// dev/attention.cu checks a few blocks walking many tiles each.
template <class W>
void launch_forward_persistent(const AttentionShape& a, const bf16* q, const bf16* k, const bf16* v, const int32_t* doc_start, bf16* o,
                          float* lse, cudaStream_t stream, int blocks) {
    if (!wgmma_forward_applies<W>(a, {q, k, v, o}))
        fail("flash attention: this wgmma forward needs head_dim " + std::to_string(W::D) +
             ", 16-byte aligned rows and an sm_90a build on an H100/H200");
    static int sms = 0;  // (and the kernel's shared memory set, once)
    if (!sms) {
        check_cuda(cudaFuncSetAttribute(flash_forward_persistent_kernel<W>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(W::smem)),
                   "cudaFuncSetAttribute(flash_forward_persistent_kernel)");
        int device = 0;
        check_cuda(cudaGetDevice(&device), "cudaGetDevice");
        check_cuda(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device), "cudaDeviceGetAttribute");
    }
    const FwdArgs p{q, k, v, doc_start, o, lse, a.B, a.T, a.H, a.KVH, a.Dh, float(kLog2e / std::sqrt(double(a.Dh))), true};
    // head_dim D as HALVES heads of 64 columns: half c of head h is map head HALVES h + c
    const CUtensorMap tm_q = head_rows_map(q, a.B, a.T, W::HALVES * a.H, W::BR),
                      tm_k = head_rows_map(k, a.B, a.T, W::HALVES * a.KVH, W::BC),
                      tm_v = head_rows_map(v, a.B, a.T, W::HALVES * a.KVH, W::BC);
    const int tiles = a.B * a.H * ((a.T + W::BR - 1) / W::BR);
    const int grid = blocks == 0 ? tiles : std::min(tiles, blocks < 0 ? sms : blocks);
    flash_forward_persistent_kernel<W><<<grid, W::THREADS, W::smem, stream>>>(p, tm_q, tm_k, tm_v);
    check_launch("flash_forward_persistent_kernel");
}

