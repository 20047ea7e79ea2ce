// distributed/threads.cpp — ThreadPool and InOrderWorker (threads.h).
#include "distributed/threads.h"

#include <algorithm>

#include "support/common.h"

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

void InOrderWorker::finish() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return finished_ == started_; });
    if (!error_.empty()) fail("the CPU optimizer's worker thread failed: " + error_);
}
