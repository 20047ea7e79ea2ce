// test/test_threads.cpp — the CPU optimizer's host threads (threads.h), without a GPU: the pool runs every
// task exactly once and returns a task's exception after all have run; the in-order worker runs its tasks in
// order each round, wait(k) returns only after task k of the latest round (done(k) and finished() say so
// without waiting), and a task's failure comes back as an Error at the next wait instead of a hang; the pool
// is sized from the process's affinity, and ranks with too few CPUs for offload get one warning.
#include "test.h"

#include <sched.h>

#include <atomic>
#include <chrono>
#include <stdexcept>

#include "distributed/threads.h"

TEST_CASE("threads: the pool runs every task exactly once, and a failing task is rethrown after all have run") {
    for (int threads : {1, 3, 8}) {
        ThreadPool pool(threads);
        for (int count : {0, 1, 2, 7, 64}) {
            std::vector<std::atomic<int>> runs(size_t(count) + 1);
            pool.run(count, [&](int i) { runs[size_t(i)]++; });
            CAPTURE(threads);
            CAPTURE(count);
            for (int i = 0; i < count; ++i) CHECK(runs[size_t(i)] == 1);
        }
        std::vector<std::atomic<int>> runs(16);
        auto failing = [&](int i) {
            runs[size_t(i)]++;
            if (i == 5) throw std::runtime_error("chunk 5 failed");
        };
        CHECK_THROWS_WITH_AS(pool.run(16, failing), "chunk 5 failed", std::runtime_error);
        for (auto& r : runs) CHECK(r == 1);  // the others still ran, once each
        std::atomic<int> after{0};
        pool.run(4, [&](int) { after++; });  // and the pool goes on working
        CHECK(after == 4);
    }
}

TEST_CASE("threads: the in-order worker runs each round in order; wait(k) returns after task k; failures come back") {
    std::mutex lock;
    std::vector<int> order;
    std::atomic<int> fail_at{-1};
    std::atomic<bool> hold_last{false};
    InOrderWorker worker(5, [&](int k) {
        std::this_thread::sleep_for(std::chrono::milliseconds(2));  // the waiter gets there first
        while (k == 4 && hold_last) std::this_thread::sleep_for(std::chrono::milliseconds(1));
        if (k == fail_at) throw Error("unit " + std::to_string(k) + ": copy failed");
        std::lock_guard<std::mutex> hold(lock);
        order.push_back(k);
    });
    worker.wait(3);  // before the first round: nothing to wait for
    worker.finish();
    for (int round = 1; round <= 3; ++round) {
        hold_last = true;
        worker.start();
        worker.wait(2);
        CHECK(worker.done(2));
        CHECK_FALSE(worker.done(4));  // held back
        hold_last = false;
        {
            std::lock_guard<std::mutex> hold(lock);
            CHECK(order.size() >= size_t(5 * (round - 1) + 3));  // tasks 0, 1, 2 of this round have run
        }
        worker.finish();
        std::lock_guard<std::mutex> hold(lock);
        CHECK(order.size() == size_t(5 * round));
    }
    for (size_t i = 0; i < order.size(); ++i) CHECK(order[i] == int(i % 5));
    fail_at = 3;
    worker.start();
    worker.wait(1);  // before the failure
    CHECK_THROWS_WITH_AS(worker.wait(4), doctest::Contains("unit 3: copy failed"), Error);
    CHECK_THROWS_WITH_AS(worker.finish(), doctest::Contains("unit 3: copy failed"), Error);
    CHECK_THROWS_WITH_AS(worker.start(), doctest::Contains("unit 3: copy failed"), Error);  // no new round after a failure
    std::lock_guard<std::mutex> hold(lock);
    CHECK(order.size() == 15 + 3);  // task 4 of the failed round never ran
}

TEST_CASE("threads: a worker destroyed mid-round stops after the task in flight") {
    std::atomic<int> ran{0};
    {
        InOrderWorker worker(1000, [&](int) {
            std::this_thread::sleep_for(std::chrono::milliseconds(1));
            ran++;
        });
        worker.start();
        worker.wait(2);
    }
    CHECK(ran >= 3);
    CHECK(ran < 1000);
}

TEST_CASE("threads: the pool is sized from the CPUs this process may use, and a rank with too few gets one warning") {
    // affinity_cpus counts the affinity mask, not the machine: confined to one CPU, it says 1
    cpu_set_t saved, one;
    REQUIRE(sched_getaffinity(0, sizeof saved, &saved) == 0);
    CHECK(affinity_cpus() == CPU_COUNT(&saved));
    int first = 0;
    while (!CPU_ISSET(first, &saved)) ++first;
    CPU_ZERO(&one);
    CPU_SET(first, &one);
    REQUIRE(sched_setaffinity(0, sizeof one, &one) == 0);
    int confined = affinity_cpus();
    REQUIRE(sched_setaffinity(0, sizeof saved, &saved) == 0);
    CHECK(confined == 1);
    // the pool: all CPUs but the main thread's and the worker's, at least one
    CHECK(offload_pool_threads(1) == 1);
    CHECK(offload_pool_threads(3) == 1);
    CHECK(offload_pool_threads(4) == 2);
    CHECK(offload_pool_threads(16) == 14);
    // no warning when every rank has enough; else one line naming the ranks and the launcher's option
    CHECK(few_cpus_warning({8, 8, 4}, 8, "openmpi") == "");
    std::string w = few_cpus_warning({8, 1, 8, 1}, 16, "openmpi");
    CAPTURE(w);
    CHECK(w.rfind("warning: ranks 1, 3 may use only 1 CPU ", 0) == 0);
    CHECK(w.find("`mpirun --map-by slot:PE=16` (or `--bind-to none`)") != std::string::npos);
    CHECK(w.find('\n') == std::string::npos);
    CHECK(few_cpus_warning({2}, 8, "slurm").find("`srun --cpus-per-task=8`") != std::string::npos);
    CHECK(few_cpus_warning({2}, 8, "slurm").rfind("warning: this run may use only 2 CPUs", 0) == 0);
    CHECK(few_cpus_warning({1}, 8, "mpich").find("`mpiexec -bind-to core:8`") != std::string::npos);
    CHECK(few_cpus_warning({1}, 8, "").find("taskset") != std::string::npos);
    // a node with too few CPUs for its ranks: no option helps but fewer ranks
    CHECK(few_cpus_warning({1, 1}, 1, "openmpi").find("this node has 1 CPU per rank: start fewer ranks per node") != std::string::npos);
}

TEST_CASE("threads: finished() says whether the worker's round is over, without waiting, also after a failure") {
    std::atomic<bool> hold{true};
    std::atomic<int> fail_at{-1};
    InOrderWorker worker(3, [&](int k) {
        while (hold) std::this_thread::sleep_for(std::chrono::milliseconds(1));
        if (k == fail_at) throw Error("task " + std::to_string(k) + " failed");
    });
    CHECK(worker.finished());  // no round yet
    worker.start();
    CHECK_FALSE(worker.finished());
    CHECK_FALSE(worker.done(0));
    hold = false;
    while (!worker.finished()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    CHECK(worker.done(2));
    worker.finish();
    fail_at = 1;
    worker.start();
    while (!worker.finished()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    CHECK(worker.done(0));
    CHECK_FALSE(worker.done(2));  // never ran: a poller sees finished() and then wait(2) throws
    CHECK_THROWS_WITH_AS(worker.wait(2), doctest::Contains("task 1 failed"), Error);
}
