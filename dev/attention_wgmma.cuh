// dev/attention_wgmma.cuh — an experiment kept beside the harness, not used by the library: the fused
// attention backward with its products on Hopper's wgmma (sm_90a) instead of mma.sync. Same algorithm,
// steps and ordered dq accumulation as flash_backward_kernel (../attention.cu), head_dim 64 only. What it
// measured and why it is not the library's kernel: dev/NOTES.md ("wgmma backward").
// Included by dev/attention.cu after ../attention.cu (it uses BwdArgs, run_backward, wait_counter, ...).
#pragma once

namespace {

// ---------------------------------------------------------------------------------------------- Hopper (sm_90a)
// wgmma: one warpgroup (4 warps) computes D[64 x N] += A[64 x 16] B[16 x N] asynchronously, reading operands
// from shared memory through descriptors (A may instead come from registers). The accumulator layout is
// that of mma.m16n8k16 C fragments: warp w of the group holds rows 16w.., and d[j][0..3] is n-tile j
// ((g, 2q), (g, 2q+1), (g+8, 2q), (g+8, 2q+1)); a register A operand is the mma.m16n8k16 A fragment.
// Tiles are rows of 128 bytes (64 bf16) in 1024-byte aligned atoms of 8 rows, 16-byte chunk c of row r stored
// at chunk c ^ (r % 8) (the 128-byte swizzle). An operand is K-major (k contiguous in a row: the default) or
// MN-major (m or n contiguous: transposed, TA/TB = 1); for both, 8-row groups are 1024 bytes apart, and a
// k step of 16 moves the start by 32 bytes (K-major) or 2048 bytes (MN-major).
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define ATTENTION_WGMMA 1
#endif

// The matrix descriptor: start address / 16 (bits 0-13), leading and stride byte offsets / 16 (16-29, 32-45),
// 128-byte swizzle (bits 62-63 = 1). K-major: the stride offset is the 8-row step (1024), the leading one is
// unused (1). MN-major with at most 64 elements along M or N: one offset is the 8-row step along k and the
// other (the step between 64-element atoms along M or N) is unused, so both are 1024.
__device__ __forceinline__ uint64_t sw128_desc(uint32_t addr, bool mn_major) {
    const uint64_t lbo = mn_major ? 1024 >> 4 : 1, sbo = 1024 >> 4;
    return uint64_t((addr & 0x3FFFFu) >> 4) | (lbo << 16) | (sbo << 32) | (uint64_t(1) << 62);
}
__device__ __forceinline__ uint32_t sw128_offset(int row, int col) {  // byte offset of element (row, col) in a tile
    return uint32_t(row * 128 + ((((col >> 3) ^ row) & 7) << 4) + (col & 7) * 2);
}

#if ATTENTION_WGMMA
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wgmma_wait() { asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory"); }
// Generic-proxy writes to shared memory (st.shared, cp.async) made visible to wgmma's reads (async proxy).
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
// Keeps the compiler from moving reads of accumulators above the wait that completes them.
template <int N>
__device__ __forceinline__ void wgmma_pin(float (&d)[N][4]) {
#pragma unroll
    for (int i = 0; i < N; ++i) asm volatile("" : "+f"(d[i][0]), "+f"(d[i][1]), "+f"(d[i][2]), "+f"(d[i][3])::"memory");
}

// d[64 x 64] += A B, A and B in shared memory
template <int TA, int TB>
__device__ __forceinline__ void wgmma_64x64_ss(float (&d)[8][4], uint64_t a, uint64_t b) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, %32, %33, p, 1, 1, %34, %35;\n}\n"
                 : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]), "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]), "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3])
                 : "l"(a), "l"(b), "n"(TA), "n"(TB));
}
// d[64 x 64] += A B, A in registers (this warp's 16 rows, an mma A fragment), B in shared memory
template <int TB>
__device__ __forceinline__ void wgmma_64x64_rs(float (&d)[8][4], const uint32_t (&a)[4], uint64_t b) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, {%32, %33, %34, %35}, %36, p, 1, 1, %37;\n}\n"
                 : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]), "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]), "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "n"(TB));
}
// d[64 x 32] += A B, A and B in shared memory
template <int TA, int TB>
__device__ __forceinline__ void wgmma_64x32_ss(float (&d)[4][4], uint64_t a, uint64_t b) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, %16, %17, p, 1, 1, %18, %19;\n}\n"
                 : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3])
                 : "l"(a), "l"(b), "n"(TA), "n"(TB));
}
#endif

// ---------------------------------------------------------------------------------------------- backward, Hopper
// The same algorithm, steps and dq ordering as flash_backward_kernel, for Dh = 64 (16-byte aligned rows),
// with the products on wgmma (sm_90a): the block's 8 warps are two warpgroups, each owning 64 of the 128 keys
// (warp w: keys 16w.., as before). Operands are read by the tensor cores straight from 128-byte-swizzled
// shared memory, once per warpgroup instead of once per warp through ldmatrix; P^T and dS^T enter dV and dK
// as register operands; S^T and dP^T are issued together, and dV runs while dS is formed. No product is in
// flight across a branch (ptxas would serialize every wgmma of the kernel).
template <int NWG_, int MINB_>
struct WgBwdConfig {  // NWG warpgroups per block, MINB blocks per SM asked of ptxas
    static constexpr int NWG = NWG_, MINB = MINB_;
    static constexpr int D = 64, BR = 64, BC = 64 * NWG, THREADS = 128 * NWG, ROW = 128;  // ROW: bytes per tile row
    static constexpr int NTD = 8 / NWG;                                   // dQ n-tiles per warp (64 / NWG columns)
    static constexpr size_t smem = 1024                                   // room to align the tiles to 1024 bytes
                                   + size_t(2 * BC + 4 * BR + BC) * ROW  // K, V, Q[2], dO[2], dS^T [keys][queries]
                                   + size_t(6) * BR * sizeof(float);      // lse, D, doc_start [2] each
};
using WgBwd = WgBwdConfig<2, 1>;

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

template <class W>
__global__ void __launch_bounds__(W::THREADS, W::MINB) flash_backward_wgmma_kernel(const BwdArgs p) {
#if ATTENTION_WGMMA
    constexpr int BR = W::BR, BC = W::BC, THREADS = W::THREADS, ROW = W::ROW, NTQ = BR / 8, NTD = W::NTD;
    extern __shared__ __align__(16) unsigned char smem_raw[];
    __shared__ int s_ticket;
    const uint32_t raw = smem_u32(smem_raw), base = (raw + 1023u) & ~1023u;
    const uint32_t sK = base, sV = sK + BC * ROW, sQ = sV + BC * ROW, sdO = sQ + 2 * BR * ROW, sdS = sdO + 2 * BR * ROW;
    float* lse_s = reinterpret_cast<float*>(smem_raw + (sdS + BC * ROW - raw));  // [2][BR]
    float* dr_s = lse_s + 2 * BR;                                                // [2][BR]
    int* ds_s = reinterpret_cast<int*>(dr_s + 2 * BR);                           // [2][BR]

    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, gr = lane / 4, tq = lane % 4, wg = warp / 4;
    const int T = p.T, H = p.H, KVH = p.KVH, Dh = p.Dh, G = H / KVH;
    const int nqt = (T + BR - 1) / BR, nchains = p.B * KVH;
    if (tid == 0) s_ticket = int(atomicAdd(p.ticket, 1u));
    __syncthreads();
    const int j = s_ticket / nchains, bg = s_ticket % nchains, b = bg / KVH, g = bg % KVH, k0 = j * BC;
    const int64_t q_stride = int64_t(H) * Dh, kv_stride = int64_t(KVH) * Dh;
    const int32_t* doc = p.doc ? p.doc + int64_t(b) * T : nullptr;

    const int i_lo = k0 / BR;  // query tiles that see these keys, as in flash_backward_kernel
    int i_hi = nqt - 1;
    if (doc) {
        int count = 0;
        for (int base_i = i_lo; base_i < nqt; base_i += THREADS) {
            const int i = base_i + tid;
            count += __syncthreads_count(i < nqt && doc[i * BR] / BC <= j);
        }
        i_hi = i_lo + count - 1;
    }
    const int n_steps = (i_hi - i_lo + 1) * G;

    auto load_step = [&](int step, int bb) {
        const int i = i_hi - step / G, h = g * G + step % G, q0 = i * BR;
        const int64_t off = (int64_t(b) * T + q0) * q_stride + int64_t(h) * Dh;
        load_tile_sw128<BR, THREADS>(sQ + bb * BR * ROW, p.q + off, q_stride, T - q0);
        load_tile_sw128<BR, THREADS>(sdO + bb * BR * ROW, p.dO + off, q_stride, T - q0);
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
    int pend = -1;  // the counter of the last dq partial added, released after the next barrier
    unsigned pend_val = 0;

    for (int step = 0; step < n_steps; ++step) {
        const int bb = step & 1;
        cp_async_wait_all();
        fence_proxy_async();  // this thread's copies, visible to wgmma
        __syncthreads();      // step's tiles landed; every product of the previous step is complete
        if (pend >= 0) {
            if (tid == 0) st_release(p.counters + pend, pend_val);
            pend = -1;
        }
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
        const int key_q = k0 + kw + gr - q0, rows_q = T - q0;
        uint32_t pa[BR / 16][4];
#pragma unroll
        for (int nt = 0; nt < NTQ; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int c = nt * 8 + 2 * tq + (e & 1);
                float pv = ex2(st[nt][e] * p.scale_log2);
                if (need_mask) {
                    const int key = key_q + 8 * (e >> 1);
                    if ((c >= rows_q) | (key > c) | (key + q0 < ds_b[c])) pv = 0.f;
                }
                st[nt][e] = pv;
            }
#pragma unroll
        for (int kq = 0; kq < BR / 16; ++kq) {
            pa[kq][0] = pack_bf16(st[2 * kq][0], st[2 * kq][1]);
            pa[kq][1] = pack_bf16(st[2 * kq][2], st[2 * kq][3]);
            pa[kq][2] = pack_bf16(st[2 * kq + 1][0], st[2 * kq + 1][1]);
            pa[kq][3] = pack_bf16(st[2 * kq + 1][2], st[2 * kq + 1][3]);
        }

        // dV += P^T dO: B[k = query][n = d] = dO, MN-major
        wgmma_fence();
#pragma unroll
        for (int kq = 0; kq < BR / 16; ++kq) wgmma_64x64_rs<1>(dv, pa[kq], sw128_desc(sdOb + kq * 16 * ROW, true));
        wgmma_commit();

        // dS^T = P^T (dP^T - D) as bf16 A fragments, and into shared memory for dQ
        uint32_t dsa[BR / 16][4];
#pragma unroll
        for (int kq = 0; kq < BR / 16; ++kq)
#pragma unroll
            for (int r = 0; r < 4; ++r) {
                __nv_bfloat162 pb;
                memcpy(&pb, &pa[kq][r], 4);
                const float2 pf = __bfloat1622float2(pb);
                const int nt = 2 * kq + r / 2, e = 2 * (r % 2);
                dsa[kq][r] = pack_bf16(dpt[nt][e] * pf.x, dpt[nt][e + 1] * pf.y);
                const int key = kw + gr + 8 * (r & 1), col = kq * 16 + 8 * (r >> 1) + 2 * tq;
                asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(sdS + sw128_offset(key, col)), "r"(dsa[kq][r]) : "memory");
            }

        // dK += dS^T Q: B[k = query][n = d] = Q, MN-major
        wgmma_fence();
#pragma unroll
        for (int kq = 0; kq < BR / 16; ++kq) wgmma_64x64_rs<1>(dk, dsa[kq], sw128_desc(sQb + kq * 16 * ROW, true));
        wgmma_commit();
        wgmma_wait<0>();  // dV and dK
        wgmma_pin(dk);
        wgmma_pin(dv);

        // Our turn for this dq tile (see flash_backward_kernel)
        const int jmin = doc ? ds_b[0] / BC : 0, jmax = min(q0 + BR - 1, T - 1) / BC;
        const bool first = j == jmin, last = j == jmax;
        const int cidx = (b * H + h) * nqt + i;
        if (tid == 0 && !first) wait_counter(p.counters + cidx, unsigned(j - jmin));
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
        if (!last) pend = cidx, pend_val = unsigned(j - jmin + 1);
    }
    __syncthreads();
    if (pend >= 0 && tid == 0) st_release(p.counters + pend, pend_val);

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

__global__ void wgmma_probe_kernel(int* out) {
#if ATTENTION_WGMMA
    *out = 1;
#else
    *out = 0;
#endif
}

// Whether the GPU runs this build's sm_90a code (an H100 or H200, and a build that includes it): asked once.
bool wgmma_available() {
    static int available = -1;
    if (available < 0) {
        int* d = nullptr;
        check_cuda(cudaMalloc(&d, sizeof(int)), "cudaMalloc");
        wgmma_probe_kernel<<<1, 1>>>(d);
        check_launch("wgmma_probe_kernel");
        check_cuda(cudaMemcpy(&available, d, sizeof(int), cudaMemcpyDeviceToHost), "cudaMemcpy");
        check_cuda(cudaFree(d), "cudaFree");
    }
    return available == 1;
}

// The Hopper backward's conditions: Dh = 64 with 16-byte aligned rows, on a GPU that runs it.
bool wgmma_backward_applies(const AttentionShape& a, std::initializer_list<const void*> ptrs) {
    return a.Dh == WgBwd::D && all_aligned(ptrs, 16) && wgmma_available();
}

template <class W>
void launch_backward_wgmma(const AttentionShape& a, const bf16* q, const bf16* k, const bf16* v, const bf16* o, const bf16* dO,
                           const float* lse, const int32_t* doc_start, bf16* dq, bf16* dk, bf16* dv, void* workspace,
                           cudaStream_t stream) {
    if (!wgmma_backward_applies(a, {q, k, v, dO}))
        fail("flash attention: the wgmma backward needs head_dim 64, 16-byte aligned rows and an sm_90a build on an H100/H200");
    static bool configured = false;
    run_backward(flash_backward_wgmma_kernel<W>, "flash_backward_wgmma_kernel", W::BR, W::BC, W::D, W::THREADS, W::smem,
                 configured, a, q, k, v, o, dO, lse, doc_start, dq, dk, dv, workspace, stream);
}

}  // namespace
