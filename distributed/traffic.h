// distributed/traffic.h — what a rank's collectives move, and a step's time at N GPUs on paper. CUDA-free.
//
// Counting. The transport (world.h: Comm) counts every collective it runs, on the host, by its buffer:
//   all_gather      `count` elements from each rank    buffer N*count  (every rank ends with all of it)
//   reduce_scatter  `count` elements to each rank      buffer N*count  (every rank starts with all of it)
//   all_reduce      `count` elements                   buffer count
// Two figures follow from a buffer of B bytes:
//   the paper's volume (ZeRO, Rajbhandari et al. 2020, section 7): all-gather B, reduce-scatter B, and
//       all-reduce 2B, since an all-reduce is a reduce-scatter followed by an all-gather;
//   the ring's wire bytes, what each rank sends (and receives as much) when the N ranks pass pieces of
//       B/N round a ring: all-gather and reduce-scatter (N-1)/N B (N-1 steps of one piece), all-reduce
//       2(N-1)/N B; nothing on one rank.
// In elements, per step: data parallelism all-reduces Psi gradients, 2 Psi; ZeRO-3 all-gathers Psi weights for
// the forward and again for the backward and reduce-scatters Psi gradients, 3 Psi. Here gradients are fp32 and
// weights bf16, so a gathered weight costs half the bytes of a reduced gradient (ZeroStore::traffic, zero3.h,
// counts a step of each stage from the plan).
//
// The time on paper, per step and rank:
//   compute        = FLOPs / sustained FLOP/s  (measured on one GPU, or kAssumedMfu of the GPU's bf16 peak)
//   communication  = wire bytes / bus bandwidth
// "Bus bandwidth" is NCCL's name for the speed of a ring's slowest link as the collective sees it (nccl-tests
// report it). A ring inside one node runs over NVLink (kNvlinkGBps); a ring over several nodes sends every
// byte across the network too, so it runs at the network's speed per GPU (kNetworkGBps: one 200 Gb/s NIC
// per GPU; 400 Gb/s NICs give 50). The step takes at least max(compute, communication), when the
// collectives hide behind compute, and at most their sum. Left out: latency (microseconds per ring step,
// which matters only for small buffers) and the MPI transport's host staging (it is for learning, not speed).
#pragma once
#include <cstdint>
#include <string>

enum class Collective { all_gather, reduce_scatter, all_reduce };
constexpr int kCollectives = 3;
const char* collective_name(Collective k);  // "all-gather", "reduce-scatter", "all-reduce"

// What one rank's collectives moved (or will move), by kind.
struct Traffic {
    int ranks = 1;                         // N, the ranks each collective ran over
    int64_t calls[kCollectives] = {};
    int64_t elements[kCollectives] = {};   // buffer elements, summed over the calls
    int64_t bytes[kCollectives] = {};      // buffer bytes, summed over the calls
    void add(Collective k, int64_t buffer_elements, int64_t element_bytes, int64_t times = 1);

    double volume_bytes(Collective k) const;     // the paper's volume: the buffer, twice for an all-reduce
    double volume_elements(Collective k) const;
    double volume_bytes() const;                 // every kind together
    double volume_elements() const;
    double wire_bytes(Collective k) const;       // what the ring has each rank send
    double wire_bytes() const;
};
Traffic operator-(const Traffic& a, const Traffic& b);  // a later count less an earlier one
bool operator==(const Traffic& a, const Traffic& b);
inline bool operator!=(const Traffic& a, const Traffic& b) { return !(a == b); }

// "all-gather 5.51 GB, reduce-scatter 45.1 MB, all-reduce 8 B: 2.24 Psi (5.56 GB); the ring sends 4.86 GB
// from each rank" (psi: the model's parameters).
std::string traffic_text(const Traffic& t, double psi);

// ------------------------------------------------------------------------------------------ the time model
constexpr double kNvlinkGBps = 360;      // bus bandwidth of a ring over NVLink in one node (H100 SXM)
constexpr double kNetworkGBps = 25;      // per GPU between nodes: one 200 Gb/s InfiniBand NIC per GPU
constexpr double kAssumedMfu = 0.45;     // sustained share of the bf16 peak (this trainer: MFU 46-49%, README)
constexpr double kH100PeakFlops = 989e12;  // bf16 dense, H100 SXM

// Where the ranks run: `nodes` nodes of ranks/nodes each (one rank per GPU).
struct Cluster {
    int ranks = 1, nodes = 1;
    double interconnect_GBps = 0;  // the bus bandwidth to assume; 0: kNvlinkGBps on one node, kNetworkGBps across nodes
    double bus_GBps() const;
    std::string link() const;      // "NVLink in one node, 360 GB/s", "2 nodes of 4 GPUs, the ring crosses the network, 25 GB/s"
};
// Fails naming `flag` unless 1 <= nodes <= ranks and nodes divides ranks, and the bandwidth is positive.
void check_cluster(const Cluster& c, const std::string& flag);

struct StepTime {
    double compute_s = 0;
    double comm_s[kCollectives] = {};
    double comm() const { return comm_s[0] + comm_s[1] + comm_s[2]; }
    double fastest() const { return compute_s > comm() ? compute_s : comm(); }  // the collectives hidden behind compute
    double slowest() const { return compute_s + comm(); }                         // none hidden
    bool communication_bound() const { return comm() > compute_s; }
};
// `flops`: the model FLOPs of one rank's step; `flops_per_s`: what one GPU sustains.
StepTime step_time(const Traffic& t, const Cluster& c, double flops, double flops_per_s);

// "compute 99.6 ms (4.43e+13 FLOPs at 445 TFLOP/s, <how>), communication 13.5 ms (all-gather 13.4,
// reduce-scatter 0.11, all-reduce <0.01) over NVLink in one node, 360 GB/s: the step takes 99.6-113 ms,
// compute-bound (communication 14% of compute)"
std::string step_time_text(const StepTime& s, const Cluster& c, double flops, double flops_per_s, const std::string& how);
