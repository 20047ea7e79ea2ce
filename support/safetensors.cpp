// support/safetensors.cpp — reading and writing safetensors files (safetensors.h).
#include "support/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>

#include "support/common.h"
#include "support/json.h"


namespace {

size_t dtype_size(const std::string& dtype) {
    if (dtype == "F32" || dtype == "I32") return 4;
    if (dtype == "BF16" || dtype == "F16" || dtype == "I16") return 2;
    if (dtype == "F64" || dtype == "I64") return 8;
    if (dtype == "U8" || dtype == "I8" || dtype == "BOOL" || dtype == "F8_E4M3" || dtype == "F8_E5M2") return 1;
    return 0;
}

float half_to_float(uint16_t h) {
    uint32_t sign = uint32_t(h >> 15) << 31, exp = (h >> 10) & 0x1F, mant = h & 0x3FF, bits;
    if (exp == 0) {
        if (mant == 0) bits = sign;
        else {  // subnormal: renormalise
            int e = -1;
            do { ++e, mant <<= 1; } while (!(mant & 0x400));
            bits = sign | uint32_t(127 - 15 - e) << 23 | (mant & 0x3FF) << 13;
        }
    } else if (exp == 31) {
        bits = sign | 0x7F800000u | mant << 13;
    } else {
        bits = sign | (exp + 127 - 15) << 23 | mant << 13;
    }
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
}

bool is_dir(const std::string& path) {
    struct stat st;
    return stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

}  // namespace

SafetensorsReader::SafetensorsReader(const std::string& path) : where_(path) {
    if (!is_dir(path)) {
        add_file(path);
        return;
    }
    std::string index = path + "/model.safetensors.index.json";
    struct stat st;
    if (stat(index.c_str(), &st) == 0) {  // sharded: weight_map names each tensor's file
        Json j = read_json_file(index);
        const Json* map = j.find("weight_map");
        if (!map || map->type != Json::Object) fail(index + ": missing object \"weight_map\"");
        std::vector<std::string> files;
        for (const auto& [name, file] : map->object) {
            if (!file.is_string()) fail(index + ": weight_map entry " + name + " must name a file");
            if (std::find(files.begin(), files.end(), file.string) == files.end()) files.push_back(file.string);
        }
        for (const std::string& f : files) add_file(path + "/" + f);
        for (const auto& [name, file] : map->object)
            if (!tensors_.count(name)) fail(index + ": tensor " + name + " is not in " + file.string);
        return;
    }
    std::string single = path + "/model.safetensors";
    if (stat(single.c_str(), &st) != 0)
        fail("no model.safetensors or model.safetensors.index.json in " + path + " (is it an HF model directory?)");
    add_file(single);
}

// Reads one file's header and checks it against the file, before any tensor is read: the header fits the
// file; each entry has a known dtype, a shape and data_offsets [begin, end) inside the data, end not before
// begin, end - begin = numel x dtype size (computed without overflow: a shape may claim more than the file
// holds); no two tensors share bytes.
void SafetensorsReader::add_file(const std::string& file) {
    std::ifstream in(file, std::ios::binary);
    if (!in) fail("cannot read " + file + ": " + std::strerror(errno));
    in.seekg(0, std::ios::end);
    uint64_t size = uint64_t(in.tellg());
    in.seekg(0);
    uint64_t n = 0;
    if (size < 8 || !in.read(reinterpret_cast<char*>(&n), 8)) fail(file + ": not a safetensors file (too short)");
    if (n > size - 8 || n > (100u << 20))
        fail(file + ": not a safetensors file (its first 8 bytes give a header of " + std::to_string(n) + " bytes; the file has " +
             std::to_string(size) + ")");
    std::string header(n, '\0');
    in.read(header.data(), std::streamsize(n));
    Json j = parse_json(header, file + " (header)");
    if (j.type != Json::Object) fail(file + ": the safetensors header is not a JSON object");
    uint64_t data_start = 8 + n, data_size = size - data_start;
    std::vector<const SafeTensor*> in_file;
    for (const auto& [name, info] : j.object) {
        if (name == "__metadata__") continue;
        SafeTensor t;
        t.name = name, t.file = file;
        const Json* dtype = info.find("dtype");
        const Json* shape = info.find("shape");
        const Json* offsets = info.find("data_offsets");
        if (!dtype || !dtype->is_string() || !shape || shape->type != Json::Array || !offsets || offsets->type != Json::Array ||
            offsets->array.size() != 2 || !offsets->array[0].is_int() || !offsets->array[1].is_int() || offsets->array[0].integer < 0 ||
            offsets->array[1].integer < 0)
            fail(file + ": tensor " + name + " has a malformed header entry (needs \"dtype\", \"shape\" and \"data_offsets\": [begin, end])");
        t.dtype = dtype->string;
        size_t es = dtype_size(t.dtype);
        if (!es) fail(file + ": tensor " + name + " has an unknown dtype \"" + t.dtype + "\"");
        uint64_t begin = uint64_t(offsets->array[0].integer), end = uint64_t(offsets->array[1].integer);
        if (end < begin)
            fail(file + ": tensor " + name + " has data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) +
                 "]: the end comes before the begin");
        if (end > data_size)
            fail(file + ": tensor " + name + " ends at byte " + std::to_string(end) + " of the tensor data, beyond the file's " +
                 std::to_string(data_size) + " bytes (a truncated file?)");
        t.offset = data_start + begin, t.bytes = end - begin;
        for (const Json& d : shape->array) {
            if (!d.is_int() || d.integer < 0) fail(file + ": tensor " + name + " has a bad shape (dimensions are whole numbers >= 0)");
            t.shape.push_back(d.integer);
        }
        uint64_t numel = 1;
        for (int64_t d : t.shape) {
            if (numel != 0 && uint64_t(d) > t.bytes / es / numel)  // more elements than its bytes hold (and no overflow)
                fail(file + ": tensor " + name + " has shape " + shape_string(t.shape) + " in " + t.dtype + ", more than its " +
                     std::to_string(t.bytes) + " bytes hold");
            numel *= uint64_t(d);
        }
        if (numel * es != t.bytes)
            fail(file + ": tensor " + name + " has " + std::to_string(t.bytes) + " bytes, its shape and dtype need " +
                 std::to_string(numel * es));
        if (tensors_.count(name)) fail(file + ": tensor " + name + " is also in " + tensors_[name].file);
        in_file.push_back(&(tensors_[name] = t));
    }
    std::sort(in_file.begin(), in_file.end(), [](const SafeTensor* a, const SafeTensor* b) { return a->offset < b->offset; });
    const SafeTensor* previous = nullptr;
    for (const SafeTensor* t : in_file) {
        if (t->bytes == 0) continue;
        if (previous && t->offset < previous->offset + previous->bytes)
            fail(file + ": tensors " + previous->name + " and " + t->name + " overlap (their data_offsets share bytes)");
        previous = t;
    }
}

const SafeTensor* SafetensorsReader::find(const std::string& name) const {
    auto it = tensors_.find(name);
    return it == tensors_.end() ? nullptr : &it->second;
}

const SafeTensor& SafetensorsReader::checked(const std::string& name, const std::vector<int64_t>& shape) const {
    const SafeTensor* t = find(name);
    if (!t) fail(where_ + ": missing tensor " + name);
    if (t->shape != shape)
        fail(t->file + ": tensor " + name + " has shape " + shape_string(t->shape) + ", the config needs " + shape_string(shape));
    if (t->dtype != "BF16" && t->dtype != "F16" && t->dtype != "F32")
        fail(t->file + ": tensor " + name + " has dtype " + t->dtype + " (supported: BF16, F16, F32)");
    return *t;
}

std::vector<float> SafetensorsReader::read_float(const std::string& name, const std::vector<int64_t>& shape) const {
    const SafeTensor& t = checked(name, shape);
    std::vector<char> raw(t.bytes);
    read_tensor_bytes(t, 0, t.bytes, raw.data());
    std::vector<float> out(t.bytes / dtype_size(t.dtype));
    to_float(raw.data(), t.dtype, out.data(), out.size());
    return out;
}

// ------------------------------------------------------------------------------------------ pieces of tensors

size_t element_bytes(const std::string& dtype) { return dtype_size(dtype); }

void read_tensor_bytes(const SafeTensor& t, uint64_t begin, uint64_t n, void* dst) {
    if (begin + n > t.bytes) fail("internal: bytes " + std::to_string(begin) + "+" + std::to_string(n) + " beyond tensor " + t.name);
    int fd = open(t.file.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) fail("cannot read " + t.file + ": " + std::strerror(errno));
    char* out = static_cast<char*>(dst);
    uint64_t at = t.offset + begin, left = n;
    while (left > 0) {  // pread may return fewer bytes than asked (signals, very large reads)
        ssize_t got = pread(fd, out, size_t(std::min<uint64_t>(left, 1u << 30)), off_t(at));
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) {
            int err = got < 0 ? errno : EIO;
            close(fd);
            fail(t.file + ": cannot read tensor " + t.name + ": " + (got == 0 ? std::string("the file ends early") : std::strerror(err)));
        }
        out += got, at += uint64_t(got), left -= uint64_t(got);
    }
    close(fd);
}

void to_float(const void* raw, const std::string& dtype, float* out, size_t n) {
    const char* p = static_cast<const char*>(raw);
    if (dtype == "F32") {
        std::memcpy(out, p, n * 4);
        return;
    }
    if (dtype != "BF16" && dtype != "F16") fail("internal: to_float of dtype " + dtype);
    std::vector<uint16_t> h(std::min<size_t>(n, 1 << 16));
    for (size_t at = 0; at < n; at += h.size()) {  // through an aligned buffer, a block at a time
        size_t m = std::min(h.size(), n - at);
        std::memcpy(h.data(), p + 2 * at, m * 2);
        if (dtype == "BF16")
            for (size_t i = 0; i < m; ++i) out[at + i] = bf16_to_float(h[i]);
        else
            for (size_t i = 0; i < m; ++i) out[at + i] = half_to_float(h[i]);
    }
}

namespace {
std::string header_json(const std::vector<SafetensorsWriter::Entry>& entries, const std::map<std::string, std::string>& metadata,
                        uint64_t& total) {
    std::string header = "{";
    if (!metadata.empty()) {
        header += "\"__metadata__\": {";
        size_t i = 0;
        for (const auto& [k, v] : metadata) header += (i++ ? ", " : "") + json_quote(k) + ": " + json_quote(v);
        header += "}";
    }
    total = 0;
    for (const auto& e : entries) {
        size_t es = dtype_size(e.dtype);
        if (!es) fail("cannot write tensor " + e.name + " of dtype " + e.dtype);
        uint64_t numel = 1;
        for (int64_t d : e.shape) numel *= uint64_t(d);
        header += std::string(header.size() > 1 ? ", " : "") + json_quote(e.name) + ": {\"dtype\": \"" + e.dtype +
                  "\", \"shape\": " + shape_string(e.shape) + ", \"data_offsets\": [" + std::to_string(total) + ", " +
                  std::to_string(total + numel * es) + "]}";
        total += numel * es;
    }
    header += "}";
    while (header.size() % 8) header += ' ';  // keeps the data 8-byte aligned, as the reference writer does
    return header;
}
}  // namespace

SafetensorsWriter::SafetensorsWriter(const std::string& path, const std::vector<Entry>& entries,
                                     const std::map<std::string, std::string>& metadata)
    : path_(path) {
    std::string header = header_json(entries, metadata, expected_);
    FILE* f = std::fopen((path + ".tmp").c_str(), "wb");
    if (!f) fail("cannot write " + path + ".tmp: " + std::strerror(errno));
    file_ = f;
    uint64_t n = header.size();
    if (std::fwrite(&n, 8, 1, f) != 1 || std::fwrite(header.data(), 1, n, f) != n) fail("cannot write " + path + ".tmp: disk full?");
}

SafetensorsWriter::~SafetensorsWriter() {
    if (file_) std::fclose(static_cast<FILE*>(file_));
}

void SafetensorsWriter::write(const void* data, size_t bytes) {
    if (written_ + bytes > expected_) fail("internal: more tensor bytes than the header of " + path_ + " declares");
    if (bytes && std::fwrite(data, 1, bytes, static_cast<FILE*>(file_)) != bytes) fail("cannot write " + path_ + ".tmp: disk full?");
    written_ += bytes;
}

void SafetensorsWriter::finish(bool durable) {
    if (written_ != expected_) fail("internal: " + path_ + " got fewer tensor bytes than its header declares");
    FILE* f = static_cast<FILE*>(file_);
    file_ = nullptr;
    bool flushed = std::fflush(f) == 0 && (!durable || fsync(fileno(f)) == 0);
    if (std::fclose(f) != 0 || !flushed) fail("cannot write " + path_ + ".tmp: disk full?");
    if (std::rename((path_ + ".tmp").c_str(), path_.c_str()) != 0) fail("cannot rename " + path_ + ".tmp: " + std::strerror(errno));
}

void write_safetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata, bool durable) {
    std::vector<SafetensorsWriter::Entry> entries;
    for (const TensorToWrite& t : tensors) entries.push_back({t.name, t.dtype, t.shape});
    SafetensorsWriter w(path, entries, metadata);
    for (const TensorToWrite& t : tensors) {
        uint64_t numel = 1;
        for (int64_t d : t.shape) numel *= uint64_t(d);
        w.write(t.data, numel * dtype_size(t.dtype));
    }
    w.finish(durable);
}

std::string shape_string(const std::vector<int64_t>& shape) {
    std::string s = "[";
    for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
    return s + "]";
}
