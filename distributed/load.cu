// distributed/load.cu — weights from safetensors files to the GPU (load.h).
//
// The plan is the unit layout (llama_config.h) intersected with the range a rank keeps: a unit's flat buffer
// holds its tensors one after another, so elements [lo, hi) of the buffer are, for each tensor t overlapping
// them, elements [max(lo, t.offset), min(hi, t.offset + numel)) - t.offset of t, which the file stores
// contiguously at t's data offset + first * element size. At stage 3 a rank's [lo, hi) is its shard, so it
// reads about 1/N of every unit's bytes.
//
// The run: the reads are cut into chunks of at most kChunkBytes; each thread takes the next chunk and
//   1. waits until the GPU copy that last read its pinned buffer is done (it has two, used in turn)
//   2. preads the chunk into the pinned buffer (the files' page cache or the disk)
//   3. host fp32 copy: converts on the host into it (offload's master weights)
//   4. bf16 stored: copies the chunk to its place on the GPU (and, for an fp32 copy on the GPU, converts it
//      from there); f16 or f32 stored: copies it to the thread's device staging buffer and converts it into
//      the bf16 (and fp32) places — all on the thread's own stream, so threads' copies and reads overlap.
#include "distributed/load.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <exception>
#include <thread>

#include "kernels/ops.h"
#include "support/cuda_calls.h"

uint64_t FileRead::offset() const { return tensor->offset + uint64_t(first) * element_bytes(tensor->dtype); }
uint64_t FileRead::bytes() const { return uint64_t(count) * element_bytes(tensor->dtype); }

int64_t FileRead::place(int64_t k) const { return row_place(first + k, cols, pad) - row_place(first, cols, pad); }

cudaError_t copy_into_rows(bf16* dst, const void* src, int64_t first, int64_t count, int64_t cols, int64_t pad,
                           cudaMemcpyKind kind, cudaStream_t stream) {
    if (!pad) return cudaMemcpyAsync(dst, src, size_t(count) * 2, kind, stream);
    const char* from = static_cast<const char*>(src);
    int64_t base = row_place(first, cols, pad);
    for (int64_t e = first, end = first + count; e < end;) {
        bf16* to = dst + (row_place(e, cols, pad) - base);
        int64_t n = std::min(end - e, cols - e % cols);
        cudaError_t status;
        if (e % cols == 0 && end - e >= cols) {  // whole rows
            int64_t rows = (end - e) / cols;
            n = rows * cols;
            status = cudaMemcpy2DAsync(to, size_t(cols + pad) * 2, from, size_t(cols) * 2, size_t(cols) * 2, size_t(rows), kind, stream);
        } else {
            status = cudaMemcpyAsync(to, from, size_t(n) * 2, kind, stream);
        }
        if (status != cudaSuccess) return status;
        from += n * 2, e += n;
    }
    return cudaSuccess;
}

std::vector<FileRead> plan_unit_reads(const LlamaConfig& c, const SafetensorsReader& files, int unit, int64_t lo, int64_t hi,
                                      const std::vector<int64_t>& cuts) {
    std::vector<FileRead> reads;
    for (const UnitTensor& t : unit_layout(c, unit).tensors) {
        int64_t a = t.first(lo), b = t.first(hi);  // the tensor's elements inside [lo, hi)
        if (a >= b) continue;
        const SafeTensor& f = files.checked(t.spec.name, t.spec.shape);
        std::vector<int64_t> points = {a, b};
        for (int64_t x : cuts)
            if (int64_t e = t.first(x); a < e && e < b) points.push_back(e);
        std::sort(points.begin(), points.end());
        points.erase(std::unique(points.begin(), points.end()), points.end());
        for (size_t k = 0; k + 1 < points.size(); ++k)
            reads.push_back({&f, points[k], points[k + 1] - points[k], t.at(points[k]), t.cols(), t.pad});
    }
    return reads;
}

int load_threads(int ranks_on_node) {
    int cores = int(std::thread::hardware_concurrency()) / std::max(1, ranks_on_node);
    return std::max(1, std::min(8, cores));
}

namespace {

constexpr uint64_t kChunkBytes = 16u << 20;

struct Chunk {
    size_t copy;
    int64_t first, count;  // elements of the copy's read
};

WeightType weight_type(const std::string& dtype) {
    return dtype == "BF16" ? WeightType::bf16 : dtype == "F16" ? WeightType::f16 : WeightType::f32;
}

// check_cuda for a loader thread: throws, so the calling thread reports it after every thread has stopped.
void cuda_or_throw(cudaError_t status, const char* what) {
    if (status != cudaSuccess) fail(std::string(what) + ": CUDA error: " + cudaGetErrorString(status));
}

// One thread's staging: two pinned buffers used in turn, its stream, and (made when a chunk needs it) a
// device buffer a chunk is converted from.
struct Staging {
    char* pinned[2] = {};
    cudaEvent_t read_out[2] = {};  // the GPU copy that last read pinned[i] is done
    void* device = nullptr;
    bf16* device16 = nullptr;  // a converted chunk on its way into padded rows
    cudaStream_t stream = nullptr;
    explicit Staging(int gpu) {
        cuda_or_throw(cudaSetDevice(gpu), "cudaSetDevice");  // the device is per thread
        cuda_or_throw(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate");
        for (int i = 0; i < 2; ++i) {
            cuda_or_throw(cudaMallocHost(&pinned[i], kChunkBytes), "cudaMallocHost (load staging)");
            cuda_or_throw(cudaEventCreateWithFlags(&read_out[i], cudaEventDisableTiming), "event");
        }
    }
    ~Staging() {
        if (stream) cudaStreamSynchronize(stream), cudaStreamDestroy(stream);
        for (int i = 0; i < 2; ++i) cudaFreeHost(pinned[i]), cudaEventDestroy(read_out[i]);
        device_free(device), device_free(device16);
    }
    void* device_buffer() {
        if (!device) device = device_alloc<char>(kChunkBytes, "load staging");
        return device;
    }
    bf16* device16_buffer() {
        if (!device16) device16 = device_alloc<bf16>(kChunkBytes / 2, "load staging");
        return device16;
    }
};

// Steps 1-4 for one chunk, through pinned buffer `slot`.
void load_chunk(const WeightCopy& w, const Chunk& ch, Staging& st, int slot) {
    const FileRead& r = w.read;
    const std::string& dtype = r.tensor->dtype;
    uint64_t es = element_bytes(dtype), bytes = uint64_t(ch.count) * es;
    char* pinned = st.pinned[slot];
    cuda_or_throw(cudaEventSynchronize(st.read_out[slot]), "the last copy out of a load buffer");   // 1
    read_tensor_bytes(*r.tensor, uint64_t(r.first + ch.first) * es, bytes, pinned);                  // 2
    if (w.to32 && w.to32_host) to_float(pinned, dtype, w.to32 + ch.first, size_t(ch.count));        // 3
    bf16* to16 = w.to16 ? w.to16 + r.place(ch.first) : nullptr;                                       // 4
    float* to32 = w.to32 && !w.to32_host ? w.to32 + ch.first : nullptr;
    if (r.pad && w.to32) fail("load: fp32 copies of a tensor with padded rows (" + r.tensor->name + ")");  // only frozen weights are padded
    if (r.pad && to16) {  // rows apart: copied (converted first, where stored otherwise) in pieces
        const void* from = pinned;
        cudaMemcpyKind kind = cudaMemcpyHostToDevice;
        if (dtype != "BF16") {
            void* staged = st.device_buffer();
            cuda_or_throw(cudaMemcpyAsync(staged, pinned, bytes, cudaMemcpyHostToDevice, st.stream), "copy weights");
            convert_weights(staged, weight_type(dtype), st.device16_buffer(), nullptr, ch.count, st.stream);
            from = st.device16, kind = cudaMemcpyDeviceToDevice;
        }
        cuda_or_throw(copy_into_rows(to16, from, r.first + ch.first, ch.count, r.cols, r.pad, kind, st.stream), "copy weights");
    } else if (to16 && dtype == "BF16") {
        cuda_or_throw(cudaMemcpyAsync(to16, pinned, bytes, cudaMemcpyHostToDevice, st.stream), "copy weights");
        convert_weights(to16, WeightType::bf16, nullptr, to32, ch.count, st.stream);
    } else if (to16 || to32) {
        void* staged = st.device_buffer();
        cuda_or_throw(cudaMemcpyAsync(staged, pinned, bytes, cudaMemcpyHostToDevice, st.stream), "copy weights");
        convert_weights(staged, weight_type(dtype), to16, to32, ch.count, st.stream);
    }
    cuda_or_throw(cudaEventRecord(st.read_out[slot], st.stream), "event");
}

}  // namespace

LoadReport load_weights(const std::vector<WeightCopy>& copies, int gpu, int threads, const std::function<void(double)>& progress) {
    double start = wall_seconds();
    std::vector<Chunk> chunks;
    for (size_t i = 0; i < copies.size(); ++i) {
        const FileRead& r = copies[i].read;
        int64_t per = int64_t(kChunkBytes / element_bytes(r.tensor->dtype));
        for (int64_t first = 0; first < r.count; first += per) chunks.push_back({i, first, std::min(per, r.count - first)});
    }
    std::atomic<size_t> next{0};
    std::atomic<int> running{threads};
    std::atomic<uint64_t> done{0};
    std::vector<std::exception_ptr> errors(static_cast<size_t>(threads));
    auto work = [&](int t) {
        try {
            Staging st(gpu);
            for (int slot = 0;; slot ^= 1) {
                size_t k = next++;
                if (k >= chunks.size()) break;
                const WeightCopy& w = copies[chunks[k].copy];
                load_chunk(w, chunks[k], st, slot);
                done += uint64_t(chunks[k].count) * element_bytes(w.read.tensor->dtype);
            }
            cuda_or_throw(cudaStreamSynchronize(st.stream), "loading weights");
        } catch (...) {
            errors[size_t(t)] = std::current_exception();
            next = chunks.size();  // the others stop after their chunk in hand
        }
        --running;
    };
    std::vector<std::thread> pool;
    for (int t = 0; t < threads; ++t) pool.emplace_back(work, t);
    while (running > 0) {
        if (progress) progress(double(done));
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    for (std::thread& t : pool) t.join();
    for (const std::exception_ptr& e : errors)
        if (e) std::rethrow_exception(e);
    return {double(done), wall_seconds() - start};
}
