// distributed/threads.h — the host threads of the CPU optimizer (ZeRO-Offload), started once and reused every step:
//   ThreadPool     runs task(0) .. task(count-1) spread over its threads (AdamW's element loop, in chunks)
//   InOrderWorker  one background thread that runs task(0), task(1), ... in order, once per round, and
//                  says which task of the round is done (the store's per-unit update, overlapping the GPU)
// Neither hangs its caller when a task throws: ThreadPool::run rethrows the first exception after every
// task has run; InOrderWorker ends the round there, and waiting for a task that will not run, for the
// round or for a new round throws Error with the message. A caller that must not wait unbounded (the
// watchdog, distributed/world.h) polls done(k) || finished() (or finished()) and calls wait(k) (or finish()) once that holds.
//
// How many threads: the CPUs this process may run on (its affinity mask, which mpirun's --bind-to, SLURM's
// --cpus-per-task, taskset and numactl set), not the machine's hardware threads. Open MPI binds each rank
// to one core when it starts 2 ranks or fewer, so a pool sized from the machine would put ~14 AdamW threads
// on one core with the worker, the main thread and NCCL's proxy thread.
#pragma once
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

// The CPUs this process may run on: CPU_COUNT of its affinity mask (sched_getaffinity), at least 1.
int affinity_cpus();
// The CPU optimizer's pool for a rank that may use `cpus` CPUs: all but two (the main thread, which queues
// the GPU's work, and the in-order worker), at least one.
int offload_pool_threads(int cpus);
// Offload keeps pace with the GPU only with this many CPUs per rank: the main thread, the worker, NCCL's
// proxy thread and at least one AdamW thread.
constexpr int kOffloadMinCpus = 4;
// The one warning for ranks bound to fewer than kOffloadMinCpus CPUs with offload, "" when none is:
// `cpus[r]` = the CPUs rank r may use (its share); `node_cpus` = this node's CPUs over its ranks (what
// each would get unbound); `launcher` = "openmpi", "slurm", "mpich" or "" (none), which picks the option
// the warning names.
std::string few_cpus_warning(const std::vector<int>& cpus, int node_cpus, const std::string& launcher);

class ThreadPool {
  public:
    explicit ThreadPool(int threads);  // at least one
    ~ThreadPool();
    ThreadPool(const ThreadPool&) = delete;
    ThreadPool& operator=(const ThreadPool&) = delete;
    int size() const { return int(threads_.size()); }
    // Returns when every task has run exactly once. One caller at a time.
    void run(int count, const std::function<void(int)>& task);

  private:
    void loop();
    std::vector<std::thread> threads_;
    std::mutex mu_;
    std::condition_variable work_, done_;
    const std::function<void(int)>* task_ = nullptr;  // the caller's, while run() waits
    int count_ = 0, next_ = 0, finished_ = 0;         // tasks of this run: in all, handed out, finished
    std::exception_ptr error_;                        // the first task that threw
    bool stop_ = false;
};

class InOrderWorker {
  public:
    InOrderWorker(int count, std::function<void(int)> task);
    ~InOrderWorker();  // the task in flight completes, the rest of its round is dropped; never throws
    InOrderWorker(const InOrderWorker&) = delete;
    InOrderWorker& operator=(const InOrderWorker&) = delete;
    void start();      // a new round, after the previous one has finished (waits for it)
    void wait(int k);  // until task k of the latest round has run (at once before the first round)
    bool done(int k);  // whether it has, without waiting
    void finish();     // until the latest round has run
    bool finished();   // whether the latest round has ended (every task run, or one failed), without waiting

  private:
    void loop();

    int count_;
    std::function<void(int)> task_;
    std::mutex mu_;
    std::condition_variable cv_;  // both ways: a round started, a task done
    int64_t started_ = 0, finished_ = 0;  // rounds
    std::vector<int64_t> done_;           // [count] the last round in which each task ran
    std::string error_;                   // a task's failure: every later wait throws it
    bool stop_ = false;
    std::thread thread_;  // declared last: starts once the members above exist
};
