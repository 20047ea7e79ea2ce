// distributed/traffic.cpp — the counts' two figures (the paper's volume, the ring's wire bytes) and the step's
// time on paper (traffic.h has the model).
#include "distributed/traffic.h"

#include <algorithm>
#include <cstdio>

#include "support/common.h"

namespace {

std::string text(const char* fmt, double a) {
    char buf[64];
    std::snprintf(buf, sizeof buf, fmt, a);
    return buf;
}
// 8 B, 3.1 kB, 157 MB, 5.47 GB
std::string bytes_text(double bytes) {
    if (bytes < 1e3) return text("%.0f B", bytes);
    if (bytes < 1e6) return text("%.3g kB", bytes / 1e3);
    if (bytes < 1e9) return text("%.3g MB", bytes / 1e6);
    return text("%.3g GB", bytes / 1e9);
}
// 144, 25.3, 0.11, <0.01 (milliseconds)
std::string ms(double seconds) {
    double v = seconds * 1e3;
    if (v > 0 && v < 0.01) return "<0.01";
    return text(v >= 100 ? "%.0f" : "%.3g", v);
}

int index(Collective k) { return int(k); }

}  // namespace

const char* collective_name(Collective k) {
    static const char* names[kCollectives] = {"all-gather", "reduce-scatter", "all-reduce"};
    return names[index(k)];
}

void Traffic::add(Collective k, int64_t buffer_elements, int64_t element_bytes, int64_t times) {
    calls[index(k)] += times;
    elements[index(k)] += buffer_elements * times;
    bytes[index(k)] += buffer_elements * element_bytes * times;
}

double Traffic::volume_bytes(Collective k) const { return double(bytes[index(k)]) * (k == Collective::all_reduce ? 2 : 1); }
double Traffic::volume_elements(Collective k) const { return double(elements[index(k)]) * (k == Collective::all_reduce ? 2 : 1); }

double Traffic::volume_bytes() const {
    double sum = 0;
    for (int k = 0; k < kCollectives; ++k) sum += volume_bytes(Collective(k));
    return sum;
}

double Traffic::volume_elements() const {
    double sum = 0;
    for (int k = 0; k < kCollectives; ++k) sum += volume_elements(Collective(k));
    return sum;
}

// A ring of N ranks: the buffer in N pieces; each of N-1 steps sends one piece to the next rank
// (an all-reduce: N-1 steps reduce-scattering, N-1 all-gathering).
double Traffic::wire_bytes(Collective k) const { return volume_bytes(k) * double(ranks - 1) / double(ranks); }

double Traffic::wire_bytes() const { return volume_bytes() * double(ranks - 1) / double(ranks); }

Traffic operator-(const Traffic& a, const Traffic& b) {
    Traffic d = a;
    for (int k = 0; k < kCollectives; ++k)
        d.calls[k] -= b.calls[k], d.elements[k] -= b.elements[k], d.bytes[k] -= b.bytes[k];
    return d;
}

bool operator==(const Traffic& a, const Traffic& b) {
    if (a.ranks != b.ranks) return false;
    for (int k = 0; k < kCollectives; ++k)
        if (a.calls[k] != b.calls[k] || a.elements[k] != b.elements[k] || a.bytes[k] != b.bytes[k]) return false;
    return true;
}

std::string traffic_text(const Traffic& t, double psi) {
    std::string s;
    for (int k = 0; k < kCollectives; ++k)
        s += std::string(k ? ", " : "") + collective_name(Collective(k)) + " " + bytes_text(t.volume_bytes(Collective(k)));
    s += ": " + text("%.3g Psi", t.volume_elements() / psi) + " (" + bytes_text(t.volume_bytes()) + ")";
    s += t.ranks > 1 ? "; the ring sends " + bytes_text(t.wire_bytes()) + " from each rank" : "; nothing leaves a single rank";
    return s;
}

// ------------------------------------------------------------------------------------------ the time model

double Cluster::bus_GBps() const { return interconnect_GBps > 0 ? interconnect_GBps : nodes > 1 ? kNetworkGBps : kNvlinkGBps; }

std::string Cluster::link() const {
    std::string where = nodes > 1 ? std::to_string(nodes) + " nodes of " + std::to_string(ranks / nodes) + " GPUs, the ring crosses the network"
                                  : "NVLink in one node";
    return where + text(", %g GB/s", bus_GBps()) + (interconnect_GBps > 0 ? " (given)" : "");
}

void check_cluster(const Cluster& c, const std::string& flag) {
    if (c.nodes < 1 || c.nodes > c.ranks || c.ranks % c.nodes != 0)
        fail(flag + " " + std::to_string(c.nodes) + ": the nodes must divide the " + std::to_string(c.ranks) +
             " ranks evenly (ranks per node = ranks / nodes)");
    if (!(c.interconnect_GBps >= 0)) fail("--interconnect must be a positive bandwidth in GB/s");
}

StepTime step_time(const Traffic& t, const Cluster& c, double flops, double flops_per_s) {
    StepTime s;
    s.compute_s = flops_per_s > 0 ? flops / flops_per_s : 0;
    for (int k = 0; k < kCollectives; ++k) s.comm_s[k] = t.wire_bytes(Collective(k)) / (c.bus_GBps() * 1e9);
    return s;
}

std::string step_time_text(const StepTime& s, const Cluster& c, double flops, double flops_per_s, const std::string& how) {
    std::string out = "compute " + ms(s.compute_s) + " ms (" + text("%.3g FLOPs", flops) + " at " + text("%.0f TFLOP/s", flops_per_s / 1e12) + ", " +
                      how + "), communication " + ms(s.comm()) + " ms (";
    for (int k = 0; k < kCollectives; ++k) out += std::string(k ? ", " : "") + collective_name(Collective(k)) + " " + ms(s.comm_s[k]);
    out += ") over " + c.link() + ": the step takes " + ms(s.fastest()) + "-" + ms(s.slowest()) + " ms, ";
    if (s.compute_s <= 0) return out + "no compute estimate";
    out += s.communication_bound() ? "communication-bound (communication " + text("%.3g", s.comm() / s.compute_s) + "x compute)"
                                   : "compute-bound (communication " + text("%.2g%%", 100 * s.comm() / s.compute_s) + " of compute)";
    return out;
}
