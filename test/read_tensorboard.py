#!/usr/bin/env python3
"""Reads TensorBoard event files back, with nothing but the standard library: the TFRecord framing (both
CRC-32C checks), then each record's tensorflow.Event protobuf (wall_time, step, file_version, and the
summary's (tag, simple_value) pairs). Prints one line per tag: its number of points, first and last
(step, value). When the `tensorboard` package is importable, the files are read by its own
EventAccumulator too and the two readings must agree.

    python3 test/read_tensorboard.py OUT/tensorboard [--expect train/loss,eval/loss,...]

Exit status 1 with a message when a file is malformed or an expected tag is missing.
"""
import glob
import os
import struct
import sys


def crc32c(data):
    table = crc32c.table
    if table is None:
        table = crc32c.table = []
        for i in range(256):
            c = i
            for _ in range(8):
                c = (c >> 1) ^ (0x82F63B78 if c & 1 else 0)
            table.append(c)
    c = 0xFFFFFFFF
    for b in data:
        c = table[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


crc32c.table = None


def masked(data):
    c = crc32c(data)
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def records(path):
    with open(path, "rb") as f:
        data = f.read()
    at = 0
    while at < len(data):
        if at + 12 > len(data):
            raise ValueError(f"{path}: a record header is cut off at byte {at}")
        header = data[at:at + 8]
        (length,) = struct.unpack("<Q", header)
        (header_crc,) = struct.unpack("<I", data[at + 8:at + 12])
        if header_crc != masked(header):
            raise ValueError(f"{path}: the length's CRC at byte {at} does not match")
        body = data[at + 12:at + 12 + length]
        (body_crc,) = struct.unpack("<I", data[at + 12 + length:at + 16 + length])
        if len(body) != length or body_crc != masked(body):
            raise ValueError(f"{path}: the data CRC of the record at byte {at} does not match")
        yield body
        at += 16 + length


def fields(buf):
    """(field number, wire type, value) of one protobuf message: ints for varints, bytes otherwise."""
    at = 0
    while at < len(buf):
        key, at = varint(buf, at)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, at = varint(buf, at)
        elif wire == 1:
            value, at = buf[at:at + 8], at + 8
        elif wire == 2:
            n, at = varint(buf, at)
            value, at = buf[at:at + n], at + n
        elif wire == 5:
            value, at = buf[at:at + 4], at + 4
        else:
            raise ValueError(f"wire type {wire} is not used by Event")
        yield field, wire, value


def varint(buf, at):
    value = shift = 0
    while True:
        b = buf[at]
        at += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, at


def events(path):
    """Every Event of a file as a dict: wall_time, step, file_version, values [(tag, value)]."""
    for body in records(path):
        e = {"wall_time": None, "step": 0, "file_version": None, "values": []}
        for field, wire, value in fields(body):
            if field == 1 and wire == 1:
                e["wall_time"] = struct.unpack("<d", value)[0]
            elif field == 2 and wire == 0:
                e["step"] = value
            elif field == 3 and wire == 2:
                e["file_version"] = value.decode()
            elif field == 5 and wire == 2:
                for f, w, v in fields(value):  # Summary.value
                    if f != 1 or w != 2:
                        continue
                    tag, simple = None, None
                    for vf, vw, vv in fields(v):
                        if vf == 1 and vw == 2:
                            tag = vv.decode()
                        elif vf == 2 and vw == 5:
                            simple = struct.unpack("<f", vv)[0]
                    e["values"].append((tag, simple))
        yield e


def scalars(paths):
    """{tag: [(step, value), ...]} over the files, checking each file opens with file_version brain.Event:2."""
    out = {}
    for path in paths:
        evs = list(events(path))
        if not evs or evs[0]["file_version"] != "brain.Event:2":
            raise ValueError(f"{path}: the first record is not Event{{file_version: \"brain.Event:2\"}}")
        for e in evs[1:]:
            if e["wall_time"] is None:
                raise ValueError(f"{path}: an Event without wall_time")
            for tag, value in e["values"]:
                out.setdefault(tag, []).append((e["step"], value))
    return out


def with_tensorboard(directory):
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError:
        return None
    acc = EventAccumulator(directory, size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(s.step, s.value) for s in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def main():
    args = sys.argv[1:]
    expect = []
    if "--expect" in args:
        i = args.index("--expect")
        expect = [t for t in args[i + 1].split(",") if t]
        del args[i:i + 2]
    if len(args) != 1:
        sys.exit(__doc__)
    target = args[0]
    paths = [target] if os.path.isfile(target) else sorted(glob.glob(os.path.join(target, "events.out.tfevents.*")))
    if not paths:
        sys.exit(f"error: no events.out.tfevents.* files in {target}")
    try:
        got = scalars(paths)
    except (ValueError, IndexError, struct.error) as e:
        sys.exit(f"error: {e}")
    for tag in sorted(got):
        points = got[tag]
        print(f"{tag}: {len(points)} points, first step {points[0][0]} = {points[0][1]:.6g}, last step {points[-1][0]} = {points[-1][1]:.6g}")
    missing = [t for t in expect if t not in got]
    if missing:
        sys.exit(f"error: tags missing from {target}: {', '.join(missing)}")
    if os.path.isdir(target):
        theirs = with_tensorboard(target)
        if theirs is None:
            print("tensorboard package not importable: read with this file's reader only")
        elif theirs != got:
            sys.exit("error: tensorboard's EventAccumulator reads different scalars: " + repr(sorted(theirs))[:300])
        else:
            print(f"tensorboard's EventAccumulator reads the same {len(theirs)} tags")
    print(f"ok: {len(paths)} file(s), {sum(len(v) for v in got.values())} scalar points")


if __name__ == "__main__":
    main()
