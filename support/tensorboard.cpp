// support/tensorboard.cpp — TFRecord framing, CRC-32C and the few protobuf fields of a scalar Event
// (tensorboard.h has the formats).
#include "support/tensorboard.h"

#include <unistd.h>

#include <cmath>
#include <cstring>

#include "support/common.h"

namespace {

// The byte-at-a-time table of the reflected polynomial 0x82F63B78.
struct Crc32cTable {
    uint32_t entry[256];
    Crc32cTable() {
        for (uint32_t i = 0; i < 256; ++i) {
            uint32_t c = i;
            for (int k = 0; k < 8; ++k) c = (c >> 1) ^ (c & 1 ? 0x82F63B78u : 0u);
            entry[i] = c;
        }
    }
};

// ------------------------------------------------------------------------------------ protobuf wire format
enum WireType { kVarint = 0, kFixed64 = 1, kLengthDelimited = 2, kFixed32 = 5 };

void put_varint(std::string& out, uint64_t v) {
    while (v >= 0x80) out += char(uint8_t(v) | 0x80), v >>= 7;
    out += char(uint8_t(v));
}
void put_key(std::string& out, int field, WireType type) { put_varint(out, uint64_t(field) << 3 | uint64_t(type)); }
void put_little_endian(std::string& out, uint64_t v, int bytes) {
    for (int i = 0; i < bytes; ++i) out += char(uint8_t(v >> (8 * i)));
}
void put_double(std::string& out, int field, double v) {
    uint64_t bits;
    std::memcpy(&bits, &v, 8);
    put_key(out, field, kFixed64), put_little_endian(out, bits, 8);
}
void put_float(std::string& out, int field, float v) {
    uint32_t bits;
    std::memcpy(&bits, &v, 4);
    put_key(out, field, kFixed32), put_little_endian(out, bits, 4);
}
void put_bytes(std::string& out, int field, const std::string& bytes) {
    put_key(out, field, kLengthDelimited), put_varint(out, bytes.size()), out += bytes;
}

// Seconds since 1970 (an Event's wall_time).
double unix_seconds() {
    return double(std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::system_clock::now().time_since_epoch()).count()) / 1e6;
}

}  // namespace

uint32_t crc32c(const void* data, size_t n) {
    static const Crc32cTable table;
    const uint8_t* p = static_cast<const uint8_t*>(data);
    uint32_t c = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; ++i) c = table.entry[(c ^ p[i]) & 0xFF] ^ (c >> 8);
    return c ^ 0xFFFFFFFFu;
}

uint32_t masked_crc32c(const void* data, size_t n) {
    uint32_t c = crc32c(data, n);
    return ((c >> 15) | (c << 17)) + 0xa282ead8u;
}

std::string tfrecord(const std::string& data) {
    std::string length, out;
    put_little_endian(length, data.size(), 8);
    out = length;
    put_little_endian(out, masked_crc32c(length.data(), length.size()), 4);
    out += data;
    put_little_endian(out, masked_crc32c(data.data(), data.size()), 4);
    return out;
}

std::string event_file_version(double wall_time) {
    std::string event;
    put_double(event, 1, wall_time);      // Event.wall_time
    put_bytes(event, 3, "brain.Event:2");  // Event.file_version
    return event;
}

std::string event_scalars(double wall_time, int64_t step, const std::vector<std::pair<std::string, float>>& values) {
    std::string summary;
    for (const auto& [tag, v] : values) {
        std::string value;
        put_bytes(value, 1, tag);  // Value.tag
        put_float(value, 2, v);    // Value.simple_value
        put_bytes(summary, 1, value);  // Summary.value (repeated)
    }
    std::string event;
    put_double(event, 1, wall_time);  // Event.wall_time
    put_key(event, 2, kVarint), put_varint(event, uint64_t(step));  // Event.step
    put_bytes(event, 5, summary);     // Event.summary
    return event;
}

TensorBoardWriter::~TensorBoardWriter() { close(); }

void TensorBoardWriter::open(const std::string& dir) {
    close();
    for (size_t at = dir.find('/', 1); ; at = dir.find('/', at + 1)) {  // mkdir -p
        mkdir(dir.substr(0, at).c_str(), 0755);
        if (at == std::string::npos) break;
    }
    char host[256] = "localhost";
    gethostname(host, sizeof host - 1);
    double now = unix_seconds();
    path_ = dir + "/events.out.tfevents." + std::to_string(int64_t(now)) + "." + host;
    file_ = std::fopen(path_.c_str(), "wb");
    if (!file_) fail("cannot write " + path_ + " (TensorBoard event file)");
    write(event_file_version(now));
}

void TensorBoardWriter::scalars(int64_t step, const std::vector<std::pair<std::string, double>>& values) {
    if (!file_) return;
    std::vector<std::pair<std::string, float>> finite;
    for (const auto& [tag, v] : values)
        if (std::isfinite(v)) finite.emplace_back(tag, float(v));
    if (finite.empty()) return;
    double now = unix_seconds();
    write(event_scalars(now, step, finite));
}

void TensorBoardWriter::write(const std::string& event) {
    std::string record = tfrecord(event);
    if (std::fwrite(record.data(), 1, record.size(), file_) != record.size() || std::fflush(file_) != 0) fail("cannot write " + path_);
}

void TensorBoardWriter::close() {
    if (file_) std::fclose(file_);
    file_ = nullptr;
}
