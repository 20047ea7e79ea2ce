// distributed/load.h — a model's weights from its safetensors files to the GPU, each rank reading only the
// bytes it keeps (at stage 3 its shard's byte ranges), in the files' own dtype.
//   plan_unit_reads   which bytes of which file fill elements [lo, hi) of a unit's flat buffer: one read per
//                     tensor overlapping the range, cut where the caller's destinations change (CPU only)
//   load_weights      runs the reads: several threads pread chunks into pinned staging buffers; each chunk
//                     goes up as it is stored and is converted on the GPU when that differs
//                     (kernels/ops.h convert_weights): bf16 is copied straight to its place, f16 and f32 are
//                     staged and rounded to bf16; fp32 copies (trainable master weights) are float(stored
//                     value) — made on the GPU from the staged bytes, or on the host (support/safetensors.h
//                     to_float) for master weights in host memory (offload). The same bits as reading each
//                     tensor as fp32 and rounding it to bf16 on the host.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "support/llama_config.h"
#include "support/safetensors.h"

using bf16 = __nv_bfloat16;

// Elements [first, first + count) of one tensor, stored at file offset tensor->offset + first * element
// size, which fill elements [at, at + count) of a unit's flat buffer.
// A tensor whose unit rows carry a pad (llama_config.h UnitTensor) is read the same way, contiguously from
// the file, and lands row by row: element first + k at `at` + place(k).
struct FileRead {
    const SafeTensor* tensor = nullptr;
    int64_t first = 0, count = 0, at = 0;
    int64_t cols = 0, pad = 0;  // the unit's rows: cols elements, then pad (0: the elements are contiguous)
    uint64_t offset() const;    // in the file
    uint64_t bytes() const;
    int64_t place(int64_t k) const;  // where read element k lands, from `at`
};

// Copies `count` bf16 elements, contiguous at src, to tensor elements first, first + 1, .. of a buffer whose
// rows of `cols` lie `cols + pad` apart; dst is element first's place. At most three copies (the partial first
// row, the whole rows in one 2-D copy, the partial last row); one without pad.
cudaError_t copy_into_rows(bf16* dst, const void* src, int64_t first, int64_t count, int64_t cols, int64_t pad,
                           cudaMemcpyKind kind, cudaStream_t stream);

// The reads that fill elements [lo, hi) of unit `unit` (llama_config.h's layout; its gaps are read from
// nowhere), in the unit's order, each cut at every point of `cuts` inside it. Fails naming the file and
// tensor when a tensor is missing, has another shape, or a dtype other than BF16, F16, F32.
std::vector<FileRead> plan_unit_reads(const LlamaConfig& c, const SafetensorsReader& files, int unit, int64_t lo, int64_t hi,
                                      const std::vector<int64_t>& cuts = {});

// Where one read goes: bf16 weights on the GPU and/or fp32 values (on the GPU, or in host memory).
struct WeightCopy {
    FileRead read;
    bf16* to16 = nullptr;   // [read.count] device, or null
    float* to32 = nullptr;  // [read.count] device or host, or null
    bool to32_host = false;
};
struct LoadReport {
    double bytes = 0, seconds = 0;  // read from the files by this rank
};
// The threads this rank reads with: the node's hardware threads over its ranks, at most 8, at least 1.
int load_threads(int ranks_on_node);
// Runs every copy on the GPU `gpu` with `threads` threads; returns when every byte is in place (on the GPU
// too). progress(bytes done) is called now and then from the calling thread. A failed read fails here,
// naming the file, after the other threads have stopped.
LoadReport load_weights(const std::vector<WeightCopy>& copies, int gpu, int threads, const std::function<void(double)>& progress = {});
