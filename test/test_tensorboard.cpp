// test/test_tensorboard.cpp — the TensorBoard event files byte for byte: CRC-32C against its published check
// values (RFC 3720's vectors), the masked CRC and the TFRecord framing, the Event and Summary protobufs
// against bytes worked out by hand from the wire format, and a file written by TensorBoardWriter parsed
// back here with a generic protobuf reader (and by test/read_tensorboard.py when python3 is present).
#include "test.h"

#include <dirent.h>
#include <sys/wait.h>

#include <cmath>
#include <cstring>
#include <ctime>
#include <fstream>
#include <iterator>

#include "data.h"
#include "support/tensorboard.h"

namespace {

std::string bytes(std::initializer_list<int> b) {
    std::string s;
    for (int x : b) s += char(uint8_t(x));
    return s;
}

uint64_t little_endian(const std::string& s, size_t at, int n) {
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; --i) v = v << 8 | uint8_t(s[at + size_t(i)]);
    return v;
}

// A generic protobuf reader: each field as (number, wire type, varint value or the raw bytes).
struct Field {
    int number = 0, wire = 0;
    uint64_t varint = 0;
    std::string raw;
};
std::vector<Field> parse_fields(const std::string& msg) {
    std::vector<Field> out;
    size_t at = 0;
    auto varint = [&] {
        uint64_t v = 0;
        for (int shift = 0;; shift += 7) {
            REQUIRE(at < msg.size());
            uint8_t b = uint8_t(msg[at++]);
            v |= uint64_t(b & 0x7F) << shift;
            if (!(b & 0x80)) return v;
        }
    };
    while (at < msg.size()) {
        uint64_t key = varint();
        Field f;
        f.number = int(key >> 3), f.wire = int(key & 7);
        if (f.wire == 0) f.varint = varint();
        else if (f.wire == 1) f.raw = msg.substr(at, 8), at += 8;
        else if (f.wire == 5) f.raw = msg.substr(at, 4), at += 4;
        else if (f.wire == 2) {
            size_t n = size_t(varint());
            f.raw = msg.substr(at, n), at += n;
        } else FAIL("unexpected wire type ", f.wire);
        REQUIRE(at <= msg.size());
        out.push_back(f);
    }
    return out;
}

// The records of a TFRecord file, each checked against both of its CRCs.
std::vector<std::string> read_records(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    std::string data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::vector<std::string> out;
    size_t at = 0;
    while (at < data.size()) {
        REQUIRE(at + 12 <= data.size());
        uint64_t n = little_endian(data, at, 8);
        CHECK(little_endian(data, at + 8, 4) == masked_crc32c(data.data() + at, 8));
        REQUIRE(at + 16 + n <= data.size());
        std::string body = data.substr(at + 12, n);
        CHECK(little_endian(data, at + 12 + n, 4) == masked_crc32c(body.data(), body.size()));
        out.push_back(body);
        at += 16 + n;
    }
    return out;
}

}  // namespace

TEST_CASE("tensorboard: CRC-32C check values and the masked CRC") {
    CHECK(crc32c("123456789", 9) == 0xE3069283u);
    std::string zeros(32, '\0'), ones(32, '\xff'), up, down;
    for (int i = 0; i < 32; ++i) up += char(i), down += char(31 - i);
    CHECK(crc32c(zeros.data(), 32) == 0x8A9136AAu);  // RFC 3720, B.4
    CHECK(crc32c(ones.data(), 32) == 0x62A8AB43u);
    CHECK(crc32c(up.data(), 32) == 0x46DD794Eu);
    CHECK(crc32c(down.data(), 32) == 0x113FDB5Cu);
    CHECK(crc32c("", 0) == 0u);
    CHECK(masked_crc32c("", 0) == 0xA282EAD8u);  // rotate(0) + the mask delta
    uint32_t c = 0xE3069283u;
    CHECK(masked_crc32c("123456789", 9) == uint32_t(((c >> 15) | (c << 17)) + 0xA282EAD8u));
}

TEST_CASE("tensorboard: Event and Summary bytes, worked out from the protobuf wire format") {
    // Event{wall_time: 0.0, file_version: "brain.Event:2"}: key 0x09 (field 1, fixed64), key 0x1a (field 3, bytes)
    std::string version = event_file_version(0.0);
    CHECK(version == bytes({0x09, 0, 0, 0, 0, 0, 0, 0, 0, 0x1a, 13}) + "brain.Event:2");
    // Event{wall_time: 1.5, step: 300, summary: {value: [{tag: "loss", simple_value: 2.0}]}}
    std::string e = event_scalars(1.5, 300, {{"loss", 2.0f}});
    std::string value = bytes({0x0a, 4}) + "loss" + bytes({0x15, 0, 0, 0, 0x40});   // tag (field 1), simple_value (field 2, fixed32)
    std::string summary = bytes({0x0a, int(value.size())}) + value;                  // Summary.value (field 1)
    std::string expected = bytes({0x09, 0, 0, 0, 0, 0, 0, 0xf8, 0x3f,                // 1.5 as a little-endian double
                                  0x10, 0xac, 0x02,                                  // step 300 as a varint
                                  0x2a, int(summary.size())}) + summary;             // Event.summary (field 5)
    CHECK(e == expected);
    // the record: length, masked CRC of the length, data, masked CRC of the data
    std::string r = tfrecord(version);
    REQUIRE(r.size() == 8 + 4 + version.size() + 4);
    CHECK(little_endian(r, 0, 8) == version.size());
    CHECK(little_endian(r, 8, 4) == masked_crc32c(r.data(), 8));
    CHECK(r.substr(12, version.size()) == version);
    CHECK(little_endian(r, 12 + version.size(), 4) == masked_crc32c(version.data(), version.size()));
}

TEST_CASE("tensorboard: a written event file parses back (here, and with the Python reader)") {
    std::string dir = temp_dir("tb") + "/run/deeper";
    std::vector<std::pair<int64_t, double>> loss;
    Rng rng(uint64_t(time(nullptr)));
    {
        TensorBoardWriter w;
        w.open(dir);
        for (int64_t step = 1; step <= 50; ++step) {
            double l = 4.0 * rng.uniform() + 0.5;
            loss.emplace_back(step * 10, l);
            w.scalars(step * 10, {{"train/loss", l}, {"train/learning_rate", 1e-4 * double(step)}, {"skipped", NAN}});
        }
        w.scalars(500, {{"eval/loss", 1.25}});
        w.scalars(510, {{"only_nan", INFINITY}});  // nothing finite: no event at all
        CHECK(w.path().find(dir + "/events.out.tfevents.") == 0);
    }
    DIR* d = opendir(dir.c_str());
    REQUIRE(d);
    std::vector<std::string> files;
    while (dirent* e = readdir(d))
        if (std::string(e->d_name).rfind("events.out.tfevents.", 0) == 0) files.push_back(dir + "/" + e->d_name);
    closedir(d);
    REQUIRE(files.size() == 1);
    std::vector<std::string> records = read_records(files[0]);
    REQUIRE(records.size() == 1 + 50 + 1);
    std::vector<Field> first = parse_fields(records[0]);
    REQUIRE(first.size() == 2);
    CHECK(first[1].number == 3);
    CHECK(first[1].raw == "brain.Event:2");
    for (size_t i = 1; i <= 50; ++i) {
        std::vector<Field> f = parse_fields(records[i]);
        REQUIRE(f.size() == 3);
        CHECK(f[0].number == 1);
        double wall;
        std::memcpy(&wall, f[0].raw.data(), 8);
        CHECK(wall > 1.7e9);  // seconds since 1970, now
        CHECK(f[1].number == 2);
        CHECK(int64_t(f[1].varint) == loss[i - 1].first);
        std::vector<Field> values = parse_fields(f[2].raw);
        REQUIRE(values.size() == 2);  // the NaN was left out
        std::vector<Field> v = parse_fields(values[0].raw);
        REQUIRE(v.size() == 2);
        CHECK(v[0].raw == "train/loss");
        float x;
        std::memcpy(&x, v[1].raw.data(), 4);
        CHECK(x == float(loss[i - 1].second));
    }
    if (std::system("python3 -c 'import struct' > /dev/null 2>&1") != 0) {
        skip_test("python3 not found: the Python reader is not checked");
        return;
    }
    std::string cmd = "python3 test/read_tensorboard.py " + dir + " --expect train/loss,train/learning_rate,eval/loss";
    Shell read = shell(cmd);
    std::string out = read.output;
    CAPTURE(out);
    CHECK(read.status == 0);
    CHECK(out.find("train/loss: 50 points, first step 10") != std::string::npos);
    CHECK(out.find("eval/loss: 1 points, first step 500 = 1.25") != std::string::npos);
    CHECK(out.find("ok: 1 file(s), 101 scalar points") != std::string::npos);
    // a damaged byte is found by the CRC
    std::fstream f(files[0], std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(40);
    f.put('\x7f');
    f.close();
    Shell damaged = shell(cmd);
    CAPTURE(damaged.output);
    CHECK(damaged.status == 1);
    CHECK(damaged.output.find("CRC") != std::string::npos);
}
