// distributed/watchdog.cu — no wait is unbounded (world.h, "the watchdog"): the watched transport, the
// timeout every wait polls under, the end of the job, and the collective sequence that --check-collectives
// compares across ranks.
//
// The watched transport wraps NCCL's or MPI's (world_start_gpu, distributed/world.cu): each collective is
// counted (Comm), noted in this rank's ring of the latest 4096 (its number, kind, count, dtype, and the unit,
// phase and step ZeRO was at) and marked by an event on its stream. A wait that passes --comm-timeout then
// names what it waited for and the oldest collective whose event the stream has not reached: the one a peer
// never joined. The collective sequence folds (kind, count, dtype) of each into an FNV-1a hash; ranks compare
// hashes (min of h and of ~h over all ranks: equal exactly when every rank's hash is the same) and, when they
// differ, rank 0 names the first collective where each rank departs from its own.
#include "distributed/world.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <thread>
#include <vector>

namespace {

// ------------------------------------------------------------------------------------------ the watched transport

// One collective this rank issued: what it was, for whom, and an event that marks its end on its stream.
struct Issued {
    int64_t number = 0;  // 1, 2, ...: in the order this rank issued them
    const char* kind = "";
    size_t count = 0;
    DType type = DType::f32;
    int unit = -1;  // what ZeRO moved (world_at_unit), and at which step
    const char* phase = "";
    int64_t step = 0;
    cudaEvent_t done = nullptr;  // recorded on the collective's stream right after it (made on first use)
};

constexpr uint64_t kFnvBasis = 1469598103934665603ull;  // FNV-1a's starting value: the hash of nothing

// The watchdog's state: one per process, like MPI's world. Only the main thread issues collectives and waits.
struct Watchdog {
    double timeout_s = 600;
    int64_t step = 0;                                     // world_at_step
    int unit = -1;                                        // world_at_unit
    const char* phase = "";
    std::vector<Issued> ring = std::vector<Issued>(4096);  // the latest collectives, at number % size
    int64_t issued = 0;                                   // collectives issued so far
    bool inside = false;                                  // the latest one is still being issued (MPI: it runs there)
    bool tracking = false;                                // --check-collectives: the sequence since the last check
    uint64_t hash = kFnvBasis;
    std::vector<double> sequence;                         // kind, count, dtype of each
} watch;

const char* const kCollectiveKinds[] = {"all_gather", "reduce_scatter", "all_reduce"};

std::string describe(const Issued& c) {
    std::string where = c.unit >= 0 ? "unit " + std::to_string(c.unit) + ", " + c.phase + "; " : std::string(c.phase) + (*c.phase ? "; " : "");
    return std::string(c.kind) + " #" + std::to_string(c.number) + " of " + thousands(int64_t(c.count)) + " " +
           (c.type == DType::bf16 ? "bf16" : "f32") + " (" + where + "step " + std::to_string(c.step) + ")";
}

// Each collective: counted (Comm), noted (the sequence, the label), handed to the transport uncounted, then marked on its stream.
class WatchedComm : public Comm {
  public:
    WatchedComm(Comm* transport, int ranks) : Comm(ranks), t_(transport) {}
    ~WatchedComm() override {
        delete t_;
        for (Issued& c : watch.ring)
            if (c.done) cudaEventDestroy(c.done), c.done = nullptr;
    }
    const char* name() const override { return t_->name(); }
    void run_all_gather(const void* send, void* recv, size_t count, DType t, cudaStream_t s) override {
        Issued& c = begin(kCollectiveKinds[0], count, t);
        hand_all_gather(t_, send, recv, count, t, s);
        end(c, s);
    }
    void run_reduce_scatter(const float* send, float* recv, size_t count, cudaStream_t s) override {
        Issued& c = begin(kCollectiveKinds[1], count, DType::f32);
        hand_reduce_scatter(t_, send, recv, count, s);
        end(c, s);
    }
    void run_all_reduce(float* buf, size_t count, cudaStream_t s) override {
        Issued& c = begin(kCollectiveKinds[2], count, DType::f32);
        hand_all_reduce(t_, buf, count, s);
        end(c, s);
    }
    void check_peers() override { t_->check_peers(); }
    void abort() override { t_->abort(); }

  private:
    static Issued& begin(const char* kind, size_t count, DType t) {
        world_note_collective(kind, count, t);
        Issued& c = watch.ring[size_t(++watch.issued) % watch.ring.size()];
        cudaEvent_t done = c.done;
        c = Issued{watch.issued, kind, count, t, watch.unit, watch.phase, watch.step, done};
        watch.inside = true;
        return c;
    }
    static void end(Issued& c, cudaStream_t s) {
        watch.inside = false;
        if (!c.done) c.done = sync_event();
        check_cuda(cudaEventRecord(c.done, s), "event");
    }
    Comm* t_;
};

}  // namespace

Comm* watch_transport(Comm* transport, int ranks) { return new WatchedComm(transport, ranks); }

// ================================================================================================ the watchdog

void world_set_timeout(double seconds) { watch.timeout_s = seconds; }
double world_timeout() { return watch.timeout_s; }
void world_at_step(int64_t step) { watch.step = step; }
void world_at_unit(int unit, const char* what) { watch.unit = unit, watch.phase = what; }

namespace {

// The oldest collective this rank issued whose end its stream has not reached (among the latest 4096).
const Issued* oldest_unfinished() {
    int64_t size = int64_t(watch.ring.size());
    for (int64_t n = std::max<int64_t>(1, watch.issued - size + 1); n <= watch.issued; ++n) {
        const Issued& c = watch.ring[size_t(n % size)];
        if (c.done && cudaEventQuery(c.done) == cudaErrorNotReady) return &c;
    }
    return nullptr;
}

[[noreturn]] void expire(const World& w, const std::string& what, double waited) {
    std::string text = "rank " + std::to_string(w.rank) + " waited " + std::to_string(int(waited)) + " s for " + what + " at step " +
                       std::to_string(watch.step);
    if (watch.inside) text += ", inside " + describe(watch.ring[size_t(watch.issued) % watch.ring.size()]);
    else if (const Issued* c = oldest_unfinished()) text += "; the oldest collective it issued that has not completed: " + describe(*c);
    char limit[32];
    std::snprintf(limit, sizeof limit, "%g", watch.timeout_s);
    world_end_job(w, text + ". Another rank has stopped, hung or died (or is this slow: --comm-timeout, now " + limit + " s); ending the job", true);
}

}  // namespace

void world_poll(const World& w, const std::string& what, const std::function<bool()>& ready) {
    if (ready()) return;
    // Ranks give up one after another (half a second apart), so the lowest waiting rank's line ends the job.
    double start = wall_seconds(), give_up = start + watch.timeout_s + 0.5 * std::min(w.rank, 16);
    for (;;) {
        if (ready()) return;
        if (w.comm) w.comm->check_peers();
        double now = wall_seconds();
        if (now > give_up) expire(w, what, now - start);
        std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
}

void world_pace(const World& w, cudaStream_t stream) {
    constexpr int kPaceDepth = 4;  // units of a few hundred kernels at most: far below the launch queue's depth
    static cudaEvent_t marks[kPaceDepth] = {};
    static int64_t calls = 0;
    cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
    check_cuda(cudaStreamIsCapturing(stream, &capture), "capture status");
    if (capture != cudaStreamCaptureStatusNone) return;  // a CUDA graph being recorded: nothing runs until it is launched
    cudaEvent_t& mark = marks[calls++ % kPaceDepth];
    if (mark) world_wait_event(w, mark);
    else mark = sync_event();
    check_cuda(cudaEventRecord(mark, stream), "event");
}

void world_end_job(const World& w, const std::string& message, bool speak) {
    std::fflush(stdout);
    if (speak) std::fprintf(stderr, "error: %s\n", message.c_str());
    std::fflush(stderr);
    if (w.comm) w.comm->abort();
    if (w.mpi && w.size > 1) {
        if (!speak) std::this_thread::sleep_for(std::chrono::seconds(5));  // the rank that speaks ends the job
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    std::_Exit(1);
}

// ================================================================================================ the collective sequence

void world_track_collectives(bool on) { watch.tracking = on; }

void world_note_collective(const char* kind, size_t count, DType type) {
    if (!watch.tracking) return;
    uint64_t code = 3;
    for (uint64_t k = 0; k < 3; ++k)
        if (std::strcmp(kind, kCollectiveKinds[k]) == 0) code = k;
    uint64_t fields[3] = {code, uint64_t(count), uint64_t(type)};
    watch.hash = fnv1a(fields, sizeof fields, watch.hash);
    watch.sequence.insert(watch.sequence.end(), {double(code), double(count), double(type)});
}

namespace {
// "reduce_scatter of 4,096 f32", from a sequence's triple at `i`; "none" past its end.
std::string collective_at(const std::vector<double>& seq, size_t i) {
    if (3 * i + 2 >= seq.size()) return "none (it issued " + std::to_string(seq.size() / 3) + ")";
    size_t code = size_t(seq[3 * i]);
    return std::string(code < 3 ? kCollectiveKinds[code] : "?") + " of " + thousands(int64_t(seq[3 * i + 1])) + " " +
           (DType(int(seq[3 * i + 2])) == DType::bf16 ? "bf16" : "f32");
}
}  // namespace

void world_check_collectives(const World& w, const std::string& when) {
    if (!watch.tracking) return;
    std::vector<double> mine;
    std::swap(mine, watch.sequence);
    uint64_t hash = watch.hash;
    watch.hash = kFnvBasis;
    if (!w.mpi) return;
    uint64_t low[2] = {hash, ~hash};  // the least hash, and the complement of the greatest
    MPI_Request request;
    check_mpi(MPI_Iallreduce(MPI_IN_PLACE, low, 2, MPI_UINT64_T, MPI_MIN, MPI_COMM_WORLD, &request), "MPI_Iallreduce");
    mpi_wait(w, request, "the other ranks (comparing their collectives " + when + ")");
    if (low[0] == ~low[1]) return;
    // Every rank's sequence to rank 0, which names the first collective where each rank departs from its own.
    std::vector<std::vector<double>> all = world_gather(w, mine);
    std::string text = "the ranks issued different collectives " + when + " (--check-collectives)";
    for (size_t r = 1, shown = 0; r < all.size() && shown < 4; ++r) {
        size_t i = 0;
        while (3 * i + 2 < all[0].size() && 3 * i + 2 < all[r].size() && std::equal(all[0].begin() + long(3 * i), all[0].begin() + long(3 * i + 3),
                                                                                    all[r].begin() + long(3 * i)))
            ++i;
        if (all[r] == all[0]) continue;
        text += std::string(shown++ ? ";" : ":") + " rank " + std::to_string(r) + "'s collective " + std::to_string(i + 1) + " is " +
                collective_at(all[r], i) + ", rank 0's " + collective_at(all[0], i);
    }
    world_end_job(w, text, w.rank == 0);
}
