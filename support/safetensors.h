// support/safetensors.h — the safetensors file format (HF's weight files): read tensors by name with their
// shapes checked, write them atomically. Knows nothing of models.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

// File layout: u64 little-endian header length N, N bytes of JSON {name: {"dtype","shape","data_offsets"}},
// then the raw little-endian tensor bytes.
struct SafeTensor {
    std::string name, dtype, file;  // dtype: "BF16", "F16", "F32", ...
    std::vector<int64_t> shape;
    uint64_t offset = 0, bytes = 0;  // absolute offset in `file`
};

// The tensors of a model directory: model.safetensors, or shards listed in model.safetensors.index.json
// (or any *.safetensors there). Every header is checked against its file when it is opened: a known dtype,
// each tensor's byte range inside the file and sized for its shape and dtype, no two tensors overlapping.
class SafetensorsReader {
  public:
    explicit SafetensorsReader(const std::string& path);  // a directory or one .safetensors file
    const SafeTensor* find(const std::string& name) const;
    const std::map<std::string, SafeTensor>& tensors() const { return tensors_; }
    // Tensor `name`, failing (naming file and tensor) unless it is present with `shape` and a float dtype
    // (BF16, F16, F32): what read_float checks before it reads, so a check of every tensor needs no tensor data.
    const SafeTensor& checked(const std::string& name, const std::vector<int64_t>& shape) const;
    // Reads `name` as fp32 values (converting BF16/F16/F32), after checked().
    std::vector<float> read_float(const std::string& name, const std::vector<int64_t>& shape) const;

  private:
    void add_file(const std::string& file);
    std::string where_;
    std::map<std::string, SafeTensor> tensors_;
};

// Pieces of tensors, for a loader that puts each byte where it goes (distributed/load.h). Both are safe to
// call from several threads at once.
//   read_tensor_bytes  bytes [begin, begin + n) of t's data into dst (pread; fails naming the file)
//   to_float           n values stored as `dtype` (BF16, F16 or F32) as fp32, exactly: the host reference of
//                      the GPU's conversion (kernels/ops.h convert_weights) and what read_float returns
void read_tensor_bytes(const SafeTensor& t, uint64_t begin, uint64_t n, void* dst);
void to_float(const void* raw, const std::string& dtype, float* out, size_t n);
size_t element_bytes(const std::string& dtype);  // 2 for "BF16"; 0 for a dtype this file does not know

struct TensorToWrite {
    std::string name, dtype;  // "BF16" or "F32"
    std::vector<int64_t> shape;
    const void* data;  // host memory, numel * dtype size bytes
};
// Writes a .safetensors file (atomically: to PATH.tmp, then renamed); with `durable` its bytes reach the
// disk (fsync) before the rename, as a checkpoint's must.
void write_safetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata = {}, bool durable = false);

std::string shape_string(const std::vector<int64_t>& shape);  // "[2048, 512]"

// Streams a .safetensors file: the header first (every tensor's name, dtype and shape), then the tensors'
// bytes in that order, so a model can be written one piece at a time. finish() renames PATH.tmp to PATH
// (after an fsync when `durable`).
class SafetensorsWriter {
  public:
    struct Entry { std::string name, dtype; std::vector<int64_t> shape; };
    SafetensorsWriter(const std::string& path, const std::vector<Entry>& entries,
                      const std::map<std::string, std::string>& metadata = {});
    ~SafetensorsWriter();
    void write(const void* data, size_t bytes);
    void finish(bool durable = false);

  private:
    std::string path_;
    void* file_ = nullptr;
    uint64_t expected_ = 0, written_ = 0;
};
