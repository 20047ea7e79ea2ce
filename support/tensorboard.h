// support/tensorboard.h — scalars (loss, learning rate, gradient norm, tokens/s, memory) as TensorBoard event
// files that a stock TensorBoard reads (`tensorboard --logdir OUT/tensorboard`), written by hand: no
// protobuf library, no TensorFlow.
//
// An event file is a sequence of TFRecord records, each
//   uint64 length (little-endian) | uint32 masked_crc(the 8 length bytes) | data | uint32 masked_crc(data)
//   masked_crc(x) = ((c >> 15) | (c << 17)) + 0xa282ead8   with c = CRC-32C (Castagnoli) of x
// and each record's data one serialized tensorflow.Event protobuf. The fields written:
//   Event   { double wall_time = 1; int64 step = 2; string file_version = 3; Summary summary = 5; }
//   Summary { repeated Value value = 1; }
//   Value   { string tag = 1; float simple_value = 2; }
// in the protobuf wire format: every field is a key varint (field_number << 3 | wire_type) and its value:
// wire type 0 a varint (int64), 1 eight bytes little-endian (double), 2 a varint length and that many bytes
// (string, message), 5 four bytes little-endian (float). The first record is
// Event{wall_time, file_version: "brain.Event:2"}; the file is named events.out.tfevents.<unix seconds>.<host>
// as TensorFlow names its own. Knows nothing of training: callers hand it (tag, value) pairs.
#pragma once
#include <cstdint>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

// CRC-32C (Castagnoli polynomial 0x1EDC6F41, reflected 0x82F63B78): crc32c("123456789") = 0xE3069283.
uint32_t crc32c(const void* data, size_t n);
uint32_t masked_crc32c(const void* data, size_t n);
// One record: the framing above around `data`.
std::string tfrecord(const std::string& data);

// Serialized Event messages.
std::string event_file_version(double wall_time);  // the first record's Event
std::string event_scalars(double wall_time, int64_t step, const std::vector<std::pair<std::string, float>>& values);

// One event file in `dir` (created with its parents), written as the run goes; every call flushes, so the
// file can be read while the run is going. Fails naming the path when it cannot write.
class TensorBoardWriter {
  public:
    TensorBoardWriter() = default;
    ~TensorBoardWriter();
    TensorBoardWriter(const TensorBoardWriter&) = delete;
    TensorBoardWriter& operator=(const TensorBoardWriter&) = delete;

    void open(const std::string& dir);  // the file's name from the clock and the host name
    bool is_open() const { return file_ != nullptr; }
    const std::string& path() const { return path_; }
    // One Event at `step` holding one simple_value per (tag, value); non-finite values are left out.
    void scalars(int64_t step, const std::vector<std::pair<std::string, double>>& values);
    void close();

  private:
    void write(const std::string& event);
    FILE* file_ = nullptr;
    std::string path_;
};
