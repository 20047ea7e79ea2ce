// distributed/threads.h — the host threads of the CPU optimizer (ZeRO-Offload), started once and reused every step:
//   ThreadPool     runs task(0) .. task(count-1) spread over its threads (AdamW's element loop, in chunks)
//   InOrderWorker  one background thread that runs task(0), task(1), ... in order, once per round, and
//                  says which task of the round is done (the store's per-unit update, overlapping the GPU)
// Neither hangs its caller when a task throws: ThreadPool::run rethrows the first exception after every
// task has run; InOrderWorker ends the round there, and waiting for a task that will not run, for the
// round or for a new round throws Error with the message.
#pragma once
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

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
