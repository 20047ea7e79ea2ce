// test/test_world.cpp — the world's host side under mpirun, without a GPU: the watchdog ends a job whose rank
// stopped (SIGSTOP) inside a collective, within the timeout, with one line naming what it waited for and the
// step; the collective-sequence check (--check-collectives) passes equal sequences and ends the job on the
// first collective where a rank departs, naming it; world_check_same names the ranks that differ and what
// each saw. Each case starts `mpirun ... build/run_tests --no-skip -tc='world child: ...'`: the child cases
// below are skipped unless asked for by name, and run their part on every rank.
#include "test.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>

#include "distributed/world.h"

namespace {

bool have_mpirun() { return std::system("command -v mpirun > /dev/null 2>&1") == 0; }

struct Run {
    int status;
    std::string output;
    double seconds;
};

// This test binary's child case `name` on `ranks` ranks.
Run run_child(int ranks, const std::string& name) {
    char self[4096];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    REQUIRE(n > 0);
    double start = wall_seconds();
    Shell r = shell("timeout 120 mpirun --allow-run-as-root --oversubscribe --bind-to none -np " + std::to_string(ranks) + " " +
                    std::string(self, size_t(n)) + " --no-skip -tc='" + name + "'");
    return {r.status, r.output, wall_seconds() - start};
}

int count(const std::string& text, const std::string& what) {
    int n = 0;
    for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
    return n;
}

World child_world() {
    World w = world_init(nullptr, nullptr);
    REQUIRE(w.mpi);
    return w;
}

}  // namespace

// ---------------------------------------------------------------------------------------------- the children

TEST_CASE("world child: rank 1 stops inside a sum" * doctest::skip()) {
    World w = child_world();
    world_set_timeout(2);
    world_at_step(7);
    if (w.rank == 1) raise(SIGSTOP);  // never arrives; mpirun must end it with the job
    world_sum(w, 1.0);
    std::printf("rank %d: the sum returned\n", w.rank);  // must not happen
    world_finalize(w);
}

TEST_CASE("world child: rank 2 departs from the collective sequence" * doctest::skip()) {
    World w = child_world();
    world_track_collectives(true);
    auto step = [&](size_t last_count) {
        world_note_collective("all_gather", 1152, DType::bf16);
        world_note_collective("reduce_scatter", 96, DType::f32);
        world_note_collective("all_reduce", last_count, DType::f32);
    };
    step(1);
    world_check_collectives(w, "at step 1");
    if (w.rank == 0) std::printf("step 1: the sequences agree\n");
    step(w.rank == 2 ? 2 : 1);
    if (w.rank == 2) world_note_collective("all_gather", 64, DType::bf16);  // and one more
    world_check_collectives(w, "at step 2");
    std::printf("rank %d: step 2 passed the check\n", w.rank);  // must not happen
    world_finalize(w);
}

TEST_CASE("world child: ranks 1 and 3 hold other files" * doctest::skip()) {
    World w = child_world();
    bool odd = w.rank % 2 == 1;
    try {
        world_check_same(w, "the same text", "the greetings");
        world_check_same(w, odd ? "pears" : "apples", "the fruit baskets", odd ? "2 pears" : "3 apples");
    } catch (const CollectiveError& e) {
        if (w.rank == e.speaker) std::printf("error: %s\n", e.what());
    }
    world_finalize(w);
}

// ---------------------------------------------------------------------------------------------- the checks

TEST_CASE("world: a rank stopped inside a host collective ends the job within the timeout, naming what it waited for") {
    if (!have_mpirun()) return skip_test("no mpirun");
    Run r = run_child(3, "world child: rank 1 stops inside a sum");
    MESSAGE("a stopped rank ended the job in " << r.seconds << " s (timeout 2 s)");
    CAPTURE(r.output);
    CHECK(r.status != 0);
    CHECK(r.status != 124);  // ended by the watchdog, not by the test's timeout
    CHECK(r.seconds < 30);
    CHECK(count(r.output, "error: ") == 1);
    CHECK(r.output.find("error: rank 0 waited 2 s for the other ranks (MPI_Iallreduce: a sum over ranks) at step 7") != std::string::npos);
    CHECK(r.output.find("--comm-timeout, now 2 s); ending the job") != std::string::npos);
    CHECK(r.output.find("the sum returned") == std::string::npos);
    FILE* left = popen("pgrep -f '[w]orld child: rank 1 stops' | wc -l", "r");  // the stopped rank was ended too
    char buf[64] = {};
    if (left && fgets(buf, sizeof buf, left)) CHECK(std::atoi(buf) == 0);
    if (left) pclose(left);
}

TEST_CASE("world: --check-collectives passes equal sequences and names the first collective where a rank departs") {
    if (!have_mpirun()) return skip_test("no mpirun");
    Run r = run_child(3, "world child: rank 2 departs from the collective sequence");
    CAPTURE(r.output);
    CHECK(r.status != 0);
    CHECK(r.status != 124);
    CHECK(r.output.find("step 1: the sequences agree") != std::string::npos);
    CHECK(count(r.output, "error: ") == 1);
    CHECK(r.output.find("error: the ranks issued different collectives at step 2 (--check-collectives): rank 2's collective 3 is "
                        "all_reduce of 2 f32, rank 0's all_reduce of 1 f32") != std::string::npos);
    CHECK(r.output.find("passed the check") == std::string::npos);
}

TEST_CASE("world: world_check_same names the ranks that differ and what each holds") {
    if (!have_mpirun()) return skip_test("no mpirun");
    Run r = run_child(4, "world child: ranks 1 and 3 hold other files");
    CAPTURE(r.output);
    CHECK(count(r.output, "error: ") == 1);
    CHECK(r.output.find("error: the fruit baskets differ between ranks: ranks 1, 3 of 4 differ from rank 0; rank 0: 3 apples; rank 1: 2 pears; "
                        "rank 3: 2 pears (start every rank with the same command line and files)") != std::string::npos);
    CHECK(r.output.find("greetings") == std::string::npos);
}
