// kernels/embedding.cu — the token embedding: a row gather, and its backward, a scatter-add.
//   forward   h[n, :] = E[ids[n], :]
//   backward  dE[id, :] += sum of dh[n, :] over the positions n with ids[n] = id
// The backward is where the design lies. A token may sit at many positions, so a thread per position
// adding with atomics would sum in a different order each run. Instead the positions are sorted by token
// (CUB's stable radix sort), and the block of each token's first sorted position adds that token's rows in
// position order: the same bits every run, which the bitwise checks of the ZeRO stages rely on. dE is fp32
// and accumulated (+=), so micro-batches add up.
#include "kernels/ops.h"

#include <cub/device/device_radix_sort.cuh>

#include "kernels/cuda_common.cuh"
#include "support/cuda_calls.h"

namespace {

// h[n, :] = E[ids[n], :]
__global__ void embedding_forward_kernel(const int32_t* ids, const bf16* E, bf16* h, int64_t N, int D) {
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < N * D; i += int64_t(gridDim.x) * blockDim.x)
        h[i] = E[int64_t(ids[i / D]) * D + i % D];
}

// dE[id, :] += sum of dh[n, :] over the positions n holding token id. The positions come sorted by token
// (a stable sort: each token's positions stay in order), and the block of each token's first sorted
// position adds that token's rows in order, a column per thread: deterministic, no atomics.
__global__ void embedding_backward_kernel(const int32_t* sorted_ids, const int32_t* sorted_pos, const bf16* dh, float* dE,
                                          int64_t N, int D) {
    int64_t i = blockIdx.x;
    int d = blockIdx.y * blockDim.x + threadIdx.x;
    if (d >= D || (i > 0 && sorted_ids[i] == sorted_ids[i - 1])) return;
    float acc = 0;
    for (int64_t j = i; j < N && sorted_ids[j] == sorted_ids[i]; ++j) acc += __bfloat162float(dh[int64_t(sorted_pos[j]) * D + d]);
    dE[int64_t(sorted_ids[i]) * D + d] += acc;
}

// pos[n] = n
__global__ void iota_kernel(int32_t* pos, int64_t N) {
    for (int64_t n = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; n < N; n += int64_t(gridDim.x) * blockDim.x) pos[n] = int32_t(n);
}

}  // namespace

void embedding_forward(const int32_t* ids, const bf16* E, bf16* h, int64_t N, int D, cudaStream_t s) {
    embedding_forward_kernel<<<blocks_for(N * D), kThreads, 0, s>>>(ids, E, h, N, D);
    check_launch("embedding_forward_kernel");
}
void embedding_backward(const int32_t* ids, const bf16* dh, float* dE, int64_t N, int D, cudaStream_t s) {
    // Scratch for the sort, grown as needed and kept (stream order keeps calls on one stream apart):
    // CUB's temporary storage, then positions, sorted ids and sorted positions [N] each.
    static char* scratch = nullptr;
    static size_t scratch_bytes = 0;
    int32_t* none = nullptr;
    size_t temp = 0;
    check_cuda(cub::DeviceRadixSort::SortPairs(nullptr, temp, ids, none, none, none, int(N)), "cub sort size");
    temp = (temp + 255) / 256 * 256;
    size_t need = temp + size_t(N) * 3 * sizeof(int32_t);
    if (need > scratch_bytes) {
        if (scratch) check_cuda(cudaStreamSynchronize(s), "sync"), device_free(scratch);
        scratch = device_alloc<char>(need, "embedding sort"), scratch_bytes = need;
    }
    int32_t* pos = reinterpret_cast<int32_t*>(scratch + temp);
    int32_t *sorted_ids = pos + N, *sorted_pos = pos + 2 * N;
    iota_kernel<<<blocks_for(N), kThreads, 0, s>>>(pos, N);
    check_launch("iota_kernel");
    check_cuda(cub::DeviceRadixSort::SortPairs(scratch, temp, ids, sorted_ids, pos, sorted_pos, int(N), 0, 32, s), "cub sort");
    embedding_backward_kernel<<<dim3(unsigned(N), blocks_for(D)), kThreads, 0, s>>>(sorted_ids, sorted_pos, dh, dE, N, D);
    check_launch("embedding_backward_kernel");
}
