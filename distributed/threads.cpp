// distributed/threads.cpp — ThreadPool and InOrderWorker (threads.h).
#include "distributed/threads.h"

#include <sched.h>

#include <algorithm>

#include "support/common.h"

// ================================================================================================ how many

int affinity_cpus() {
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof set, &set) != 0) return std::max(1, int(std::thread::hardware_concurrency()));
    return std::max(1, CPU_COUNT(&set));
}

int offload_pool_threads(int cpus) { return std::max(1, cpus - 2); }

std::string few_cpus_warning(const std::vector<int>& cpus, int node_cpus, const std::string& launcher) {
    std::string ranks;
    int fewest = 1 << 30, count = 0;
    for (size_t r = 0; r < cpus.size(); ++r)
        if (cpus[r] < kOffloadMinCpus) {
            if (++count <= 8) ranks += (ranks.empty() ? "" : ", ") + std::to_string(r);
            fewest = std::min(fewest, cpus[r]);
        }
    if (count == 0) return "";
    if (count > 8) ranks += ", ...";
    std::string who = cpus.size() == 1 ? "this run" : (count == 1 ? "rank " : "ranks ") + ranks;
    std::string text = "warning: " + who + " may use only " + std::to_string(fewest) + " CPU" + (fewest == 1 ? "" : "s") +
                       " (the affinity the launcher gave it), too few for CPU offload: the AdamW threads, the worker, the main thread "
                       "and NCCL's proxy thread share them, and the update falls behind the GPU (" +
                       std::to_string(kOffloadMinCpus) + " or more per rank keep pace)";
    if (node_cpus < kOffloadMinCpus)
        return text + "; this node has " + std::to_string(node_cpus) + " CPU" + (node_cpus == 1 ? "" : "s") + " per rank: start fewer ranks per node";
    std::string n = std::to_string(node_cpus);
    if (launcher == "openmpi") return text + ": give each rank its share of the node, `mpirun --map-by slot:PE=" + n + "` (or `--bind-to none`)";
    if (launcher == "slurm") return text + ": give each task more, `srun --cpus-per-task=" + n + "` (and #SBATCH --cpus-per-task=" + n + ")";
    if (launcher == "mpich") return text + ": give each rank its share of the node, `mpiexec -bind-to core:" + n + "` (or `-bind-to none`)";
    return text + ": run it on more CPUs (taskset -c, numactl --physcpubind; launchers: `mpirun --bind-to none`, `--map-by slot:PE=N`, "
                  "`srun --cpus-per-task=N`)";
}

// ================================================================================================ ThreadPool

ThreadPool::ThreadPool(int threads) {
    for (int t = 0; t < std::max(1, threads); ++t) threads_.emplace_back([this] { loop(); });
}

ThreadPool::~ThreadPool() {
    {
        std::lock_guard<std::mutex> lock(mu_);
        stop_ = true;
    }
    work_.notify_all();
    for (std::thread& t : threads_) t.join();
}

// Each thread takes the next task index until none is left; the last one to finish wakes the caller.
void ThreadPool::loop() {
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
        work_.wait(lock, [&] { return stop_ || next_ < count_; });
        if (stop_) return;
        int i = next_++;
        lock.unlock();
        std::exception_ptr failed;
        try {
            (*task_)(i);
        } catch (...) {
            failed = std::current_exception();
        }
        lock.lock();
        if (failed && !error_) error_ = failed;
        if (++finished_ == count_) done_.notify_all();
    }
}

void ThreadPool::run(int count, const std::function<void(int)>& task) {
    if (count <= 0) return;
    if (count == 1) return task(0);  // not worth waking a thread
    std::unique_lock<std::mutex> lock(mu_);
    task_ = &task, count_ = count, next_ = 0, finished_ = 0, error_ = nullptr;
    work_.notify_all();
    done_.wait(lock, [&] { return finished_ == count_; });
    std::exception_ptr failed = error_;
    task_ = nullptr, count_ = 0, next_ = 0, error_ = nullptr;
    lock.unlock();
    if (failed) std::rethrow_exception(failed);
}

// ================================================================================================ InOrderWorker

InOrderWorker::InOrderWorker(int count, std::function<void(int)> task)
    : count_(count), task_(std::move(task)), done_(size_t(std::max(0, count)), 0), thread_([this] { loop(); }) {}

InOrderWorker::~InOrderWorker() {
    {
        std::lock_guard<std::mutex> lock(mu_);
        stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
}

void InOrderWorker::loop() {
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
        cv_.wait(lock, [&] { return stop_ || finished_ < started_; });
        if (stop_) return;
        int64_t round = started_;
        for (int k = 0; k < count_ && !stop_ && error_.empty(); ++k) {
            lock.unlock();
            bool ok = false;
            std::string failure;
            try {
                task_(k);
                ok = true;
            } catch (const std::exception& e) {
                failure = e.what();
            } catch (...) {
            }
            lock.lock();
            if (ok) done_[size_t(k)] = round;
            else error_ = failure.empty() ? "unknown exception" : failure;  // never empty: empty means no failure
            cv_.notify_all();
        }
        finished_ = round;
        cv_.notify_all();
    }
}

void InOrderWorker::start() {
    finish();
    {
        std::lock_guard<std::mutex> lock(mu_);
        ++started_;
    }
    cv_.notify_all();
}

// A task that has run counts even when a later one failed; one that never will throws.
void InOrderWorker::wait(int k) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return done_[size_t(k)] >= started_ || !error_.empty(); });
    if (done_[size_t(k)] < started_) fail("the CPU optimizer's worker thread failed: " + error_);
}

bool InOrderWorker::done(int k) {
    std::lock_guard<std::mutex> lock(mu_);
    return done_[size_t(k)] >= started_;
}

bool InOrderWorker::finished() {
    std::lock_guard<std::mutex> lock(mu_);
    return finished_ == started_;
}

void InOrderWorker::finish() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return finished_ == started_; });
    if (!error_.empty()) fail("the CPU optimizer's worker thread failed: " + error_);
}
