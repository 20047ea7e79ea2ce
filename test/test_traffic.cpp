// test/test_traffic.cpp — what the collectives move, on the CPU: the transport's counting (a stand-in
// transport behind the real base class), the paper's volume and the ring's bytes from the buffers, the
// formula of a step per ZeRO stage on a model small enough to count by hand (padding, buckets, persistent
// units, keep_gathered, accumulation, LoRA, tied and untied heads, one rank in place), the same formula in
// Psi on Llama-3.2-1B's shape, and the time model. (Measured against the formula: test_multirank.cpp.)
#include "test.h"

#include <ctime>

#include "data.h"
#include "distributed/traffic.h"
#include "distributed/world.h"
#include "zero3.h"

namespace {

// A transport that records each call it is handed: the counting is the base class's alone.
class Recorder : public Comm {
  public:
    explicit Recorder(int ranks) : Comm(ranks) {}
    const char* name() const override { return "recorder"; }
    void check_peers() override {}
    std::vector<std::string> calls;

  protected:
    void run_all_gather(const void*, void*, size_t count, DType t, cudaStream_t) override {
        calls.push_back("all-gather " + std::to_string(count) + (t == DType::bf16 ? " bf16" : " f32"));
    }
    void run_reduce_scatter(const float*, float*, size_t count, cudaStream_t) override { calls.push_back("reduce-scatter " + std::to_string(count)); }
    void run_all_reduce(float*, size_t count, cudaStream_t) override { calls.push_back("all-reduce " + std::to_string(count)); }
};

// A Llama small enough to count by hand: D = 8, F = 16, 2 heads and 1 KV head of 4, 2 layers, vocabulary 10.
// A layer: norms 8 + 8, q 8x8, k 4x8, v 4x8, o 8x8, gate, up 16x8, down 8x16 = 592 elements (every tensor a
// multiple of 8: no alignment gaps); the embedding 80; the final norm 8 (+ lm_head 80 when untied).
LlamaConfig small_llama(bool tied) {
    LlamaConfig c;
    c.hidden_size = 8, c.intermediate_size = 16, c.num_hidden_layers = 2;
    c.num_attention_heads = 2, c.num_key_value_heads = 1, c.head_dim = 4;
    c.vocab_size = 10, c.max_position_embeddings = 64, c.tie_word_embeddings = tied;
    return c;
}

struct Kind {
    int64_t calls = 0, elements = 0, bytes = 0;  // summed over the calls
};

Traffic expected(int ranks, Kind ag, Kind rs, Kind ar) {
    Traffic t;
    t.ranks = ranks;
    const Kind kinds[kCollectives] = {ag, rs, ar};
    for (int k = 0; k < kCollectives; ++k) t.calls[k] = kinds[k].calls, t.elements[k] = kinds[k].elements, t.bytes[k] = kinds[k].bytes;
    return t;
}

std::string shown(const Traffic& t) {  // for CAPTURE
    std::string s = "N=" + std::to_string(t.ranks);
    for (int k = 0; k < kCollectives; ++k)
        s += std::string(" | ") + collective_name(Collective(k)) + ": " + std::to_string(t.calls[k]) + " calls, " + std::to_string(t.elements[k]) +
             " elements, " + std::to_string(t.bytes[k]) + " bytes";
    return s;
}

void check_equal(const Traffic& got, const Traffic& want, const std::string& what) {
    CAPTURE(what);
    CAPTURE(shown(got));
    CAPTURE(shown(want));
    CHECK(got == want);
}

}  // namespace

TEST_CASE("traffic: the transport counts each collective by its buffer, in the base class, and hands it on") {
    Rng rng(uint64_t(time(nullptr)));
    for (int trial = 0; trial < 20; ++trial) {
        int N = 1 + int(rng.below(8));
        Recorder comm(N);
        Traffic want;
        want.ranks = N;
        std::vector<std::string> calls;
        for (int i = 0; i < 30; ++i) {
            size_t count = 1 + rng.below(5000);
            switch (rng.below(4)) {
                case 0:
                    comm.all_gather(nullptr, nullptr, count, DType::bf16, nullptr);
                    want.add(Collective::all_gather, int64_t(count) * N, 2), calls.push_back("all-gather " + std::to_string(count) + " bf16");
                    break;
                case 1:
                    comm.all_gather(nullptr, nullptr, count, DType::f32, nullptr);
                    want.add(Collective::all_gather, int64_t(count) * N, 4), calls.push_back("all-gather " + std::to_string(count) + " f32");
                    break;
                case 2:
                    comm.reduce_scatter(nullptr, nullptr, count, nullptr);
                    want.add(Collective::reduce_scatter, int64_t(count) * N, 4), calls.push_back("reduce-scatter " + std::to_string(count));
                    break;
                default:
                    comm.all_reduce(nullptr, count, nullptr);
                    want.add(Collective::all_reduce, int64_t(count), 4), calls.push_back("all-reduce " + std::to_string(count));
            }
        }
        CHECK(comm.calls == calls);  // every call reached the transport, in order, unchanged
        check_equal(comm.counted(), want, "30 random calls");
        Traffic before = comm.counted();
        comm.all_reduce(nullptr, 7, nullptr);
        Traffic step = comm.counted() - before;  // a step is a difference of two counts
        check_equal(step, expected(N, {}, {}, {1, 7, 28}), "one all-reduce after the others");
    }
}

TEST_CASE("traffic: the paper's volume counts an all-reduce twice; the ring sends (N-1)/N of it") {
    Rng rng(uint64_t(time(nullptr)) + 1);
    for (int trial = 0; trial < 20; ++trial) {
        int N = 1 + int(rng.below(16));
        int64_t ag = int64_t(rng.below(1000)) * N, rs = int64_t(rng.below(1000)) * N, ar = int64_t(rng.below(1000));
        Traffic t = expected(N, {1, ag, 2 * ag}, {1, rs, 4 * rs}, {1, ar, 4 * ar});
        CAPTURE(N);
        CHECK(t.volume_bytes(Collective::all_gather) == double(2 * ag));
        CHECK(t.volume_bytes(Collective::reduce_scatter) == double(4 * rs));
        CHECK(t.volume_bytes(Collective::all_reduce) == double(2 * 4 * ar));  // a reduce-scatter and an all-gather
        CHECK(t.volume_elements() == double(ag + rs + 2 * ar));
        CHECK(t.wire_bytes(Collective::all_gather) == doctest::Approx(2.0 * ag * (N - 1) / N));
        CHECK(t.wire_bytes(Collective::all_reduce) == doctest::Approx(8.0 * ar * (N - 1) / N));
        CHECK(t.wire_bytes() == doctest::Approx((2.0 * ag + 4.0 * rs + 8.0 * ar) * (N - 1) / N));
    }
    Traffic one = expected(1, {3, 300, 600}, {}, {1, 100, 400});
    CHECK(one.wire_bytes() == 0);  // one rank sends nothing
    CHECK(one.volume_bytes() == 600 + 800);
    Traffic a = expected(4, {1, 8, 16}, {}, {}), b = a;
    b.ranks = 2;
    CHECK(a != b);  // counts over another world are another traffic
}

TEST_CASE("traffic: the formula per stage on a model counted by hand") {
    LlamaConfig c = small_llama(true);
    REQUIRE(c.num_parameters() == 80 + 2 * 592 + 8);
    REQUIRE(unit_layout(c, 1).numel == 592);
    LoraConfig full;  // every weight trains
    ZeroOptions z;
    // 3 ranks: units padded to 81, 594, 594, 9 elements (1278 in all); 2 micro-batches a step
    z.stage = 0;
    check_equal(ZeroStore::traffic(c, full, z, 3, 2), expected(3, {}, {}, {5, 1278 + 1, 4 * 1279}),
                "stage 0: the padded gradient all-reduced once a step, unit by unit, then the norm");
    z.reduce_bucket_size = 100;  // a layer's 594 in buckets of 100, 100, 100, 100, 100, 94
    check_equal(ZeroStore::traffic(c, full, z, 3, 2), expected(3, {}, {}, {1 + 6 + 6 + 1 + 1, 1279, 4 * 1279}), "stage 0, buckets of 100");
    z.reduce_bucket_size = 500000000, z.stage = 1;
    check_equal(ZeroStore::traffic(c, full, z, 3, 2), expected(3, {4, 1278, 2 * 1278}, {}, {5, 1279, 4 * 1279}),
                "stage 1: the all-reduce, then the new bf16 weights all-gathered");
    z.stage = 2;
    check_equal(ZeroStore::traffic(c, full, z, 3, 2), expected(3, {4, 1278, 2 * 1278}, {8, 2 * 1278, 4 * 2 * 1278}, {1, 1, 4}),
                "stage 2: a reduce-scatter per unit and micro-batch");
    z.stage = 3, z.persistence_threshold = 50;  // the final norm (8) stays replicated, the rest is sharded
    // per micro-batch: the embedding 3 times (forward, the tied lm_head, backward), each layer twice; per
    // step: the final norm's new weights (replicated, trainable)
    int64_t gathered = 2 * (3 * 81 + 2 * 2 * 594) + 9;
    check_equal(ZeroStore::traffic(c, full, z, 3, 2), expected(3, {2 * (3 + 4) + 1, gathered, 2 * gathered}, {8, 2 * 1278, 4 * 2 * 1278}, {1, 1, 4}),
                "stage 3: the base gathered for forward and backward");
    z.keep_gathered = true;  // the layers once; the embedding twice (the head's backward releases it)
    gathered = 2 * (2 * 81 + 2 * 594) + 9;
    check_equal(ZeroStore::traffic(c, full, z, 3, 2), expected(3, {2 * (2 + 2) + 1, gathered, 2 * gathered}, {8, 2 * 1278, 4 * 2 * 1278}, {1, 1, 4}),
                "stage 3, keep_gathered");
    z.keep_gathered = false, z.persistence_threshold = 100;  // the embedding (80) replicated too: its new weights gathered
    gathered = 2 * 2 * 594 + 81 + 9;
    check_equal(ZeroStore::traffic(c, full, z, 3, 1), expected(3, {4 + 2, gathered, 2 * gathered}, {4, 1278, 4 * 1278}, {1, 1, 4}),
                "stage 3, threshold 100: only the layers sharded");
    z.persistence_threshold = 0;  // every unit sharded; the final norm gathered once, by the head
    gathered = 3 * 81 + 2 * 2 * 594 + 9;
    check_equal(ZeroStore::traffic(c, full, z, 3, 1), expected(3, {3 + 4 + 1, gathered, 2 * gathered}, {4, 1278, 4 * 1278}, {1, 1, 4}),
                "stage 3, threshold 0");

    // untied: the last unit is the final norm and lm_head (88), gathered once; the embedding twice
    LlamaConfig u = small_llama(false);
    REQUIRE(u.num_parameters() == 80 + 2 * 592 + 88);
    z.persistence_threshold = 50;
    gathered = 2 * 80 + 2 * 2 * 592 + 88;
    check_equal(ZeroStore::traffic(u, full, z, 2, 1), expected(2, {2 + 4 + 1, gathered, 2 * gathered}, {4, 1352, 4 * 1352}, {1, 1, 4}),
                "stage 3 untied on 2 ranks (nothing to pad)");

    // LoRA r=2 on all seven projections: 256 adapter elements a layer (A: 6 x 16 + 32, B: 16+8+8+16+32+32+16),
    // padded to 258 on 3 ranks. Only they are reduced; stage 3 still gathers the frozen base (and them) twice.
    LoraConfig lora;
    lora.rank = 2;
    REQUIRE(lora_layout(c, lora).per_layer == 256);
    z.stage = 0;
    check_equal(ZeroStore::traffic(c, lora, z, 3, 1), expected(3, {}, {}, {3, 2 * 258 + 1, 4 * 517}), "LoRA stage 0");
    z.stage = 2;
    check_equal(ZeroStore::traffic(c, lora, z, 3, 1), expected(3, {2, 516, 2 * 516}, {2, 516, 4 * 516}, {1, 1, 4}), "LoRA stage 2");
    z.stage = 3;
    gathered = 3 * 81 + 2 * 2 * (594 + 258);
    check_equal(ZeroStore::traffic(c, lora, z, 3, 1), expected(3, {3 + 2 * 2 * 2, gathered, 2 * gathered}, {2, 516, 4 * 516}, {1, 1, 4}),
                "LoRA stage 3: base and adapters gathered per unit");
    z.persistence_threshold = 900;  // every unit replicated (a layer with its adapters is 848): the new adapters are gathered
    check_equal(ZeroStore::traffic(c, lora, z, 3, 1), expected(3, {2, 516, 2 * 516}, {2, 516, 4 * 516}, {1, 1, 4}), "LoRA stage 3, units kept");

    // one rank: stage 3 reads its shards in place (no gathers) unless --copy-gathers
    z.persistence_threshold = 50;
    check_equal(ZeroStore::traffic(c, full, z, 1, 1), expected(1, {1, 8, 16}, {4, 1272, 4 * 1272}, {1, 1, 4}), "stage 3 on one rank");
    z.copy_gathers = true;
    gathered = 3 * 80 + 2 * 2 * 592 + 8;
    check_equal(ZeroStore::traffic(c, full, z, 1, 1), expected(1, {3 + 4 + 1, gathered, 2 * gathered}, {4, 1272, 4 * 1272}, {1, 1, 4}),
                "stage 3 on one rank, --copy-gathers");
}

TEST_CASE("traffic: padding shards to a multiple of N is the whole difference from the unpadded count") {
    LlamaConfig c = small_llama(true);
    LoraConfig full;
    ZeroOptions z;
    z.stage = 2;
    // 3 ranks: 80 -> 81, 592 -> 594 (twice), 8 -> 9: 6 elements more, reduced in fp32 and gathered in bf16
    Traffic padded = ZeroStore::traffic(c, full, z, 3, 1), plain = ZeroStore::traffic(c, full, z, 3, 1, false);
    CHECK(padded.volume_bytes() - plain.volume_bytes() == 6 * 4 + 6 * 2);
    CHECK(plain.elements[int(Collective::reduce_scatter)] == c.num_parameters());
    for (int N : {1, 2, 4, 8}) {  // 80, 592 and 8 are multiples of 1, 2, 4 and 8: nothing to pad
        CAPTURE(N);
        CHECK(ZeroStore::traffic(c, full, z, N, 1) == ZeroStore::traffic(c, full, z, N, 1, false));
    }
    z.stage = 3, z.persistence_threshold = 0;  // 5 ranks: 80, 592 -> 595, 8 -> 10: gathered 3 + 2 + 2 + 1 times
    Traffic p5 = ZeroStore::traffic(c, full, z, 5, 1), u5 = ZeroStore::traffic(c, full, z, 5, 1, false);
    CHECK(p5.volume_elements(Collective::all_gather) - u5.volume_elements(Collective::all_gather) == 4 * 3 + 2);
    CHECK(p5.volume_elements(Collective::reduce_scatter) - u5.volume_elements(Collective::reduce_scatter) == 2 * 3 + 2);
}

TEST_CASE("traffic: in Psi, stage 0 moves 2, stage 1 3, stage 2 2, stage 3 3 plus the tied embedding's third gather") {
    LlamaConfig c = preset_config("llama-3.2-1b");
    double psi = double(c.num_parameters()), E = double(c.vocab_size) * c.hidden_size;
    LoraConfig full;
    for (int N : {2, 8, 64}) {
        for (int A : {1, 4}) {
            ZeroOptions z;
            // per step; stage 2 reduce-scatters every micro-batch and all-gathers the new weights once; stage 3 does
            // all its work every micro-batch
            double want[4] = {2, 3, A + 1.0, A * (3 + E / psi)};
            for (int stage = 0; stage <= 3; ++stage) {
                z.stage = stage;
                Traffic t = ZeroStore::traffic(c, full, z, N, A);
                CAPTURE(N);
                CAPTURE(A);
                CAPTURE(stage);
                CHECK(t.volume_elements() / psi == doctest::Approx(want[stage]).epsilon(1e-4));
            }
            z.keep_gathered = true;  // stage 3: one gather per layer and micro-batch
            CHECK(ZeroStore::traffic(c, full, z, N, A).volume_elements() / psi == doctest::Approx(2 * A + E / psi * A).epsilon(1e-4));
        }
    }
    // in bytes: fp32 gradients, bf16 weights: stage 0 = 8 Psi bytes, stage 3 about 2 + 2 + 4 = 8 Psi bytes too
    ZeroOptions z0, z3;
    z3.stage = 3;
    CHECK(ZeroStore::traffic(c, full, z0, 8, 1).volume_bytes() / psi == doctest::Approx(8).epsilon(1e-4));
    CHECK(ZeroStore::traffic(c, full, z3, 8, 1).volume_bytes() / psi == doctest::Approx(8 + 2 * E / psi).epsilon(1e-4));
    // LoRA: only the adapters are reduced, while stage 3 still gathers the whole frozen base
    LoraConfig lora;
    lora.rank = 16;
    double phi = double(lora_layout(c, lora).per_layer) * c.num_hidden_layers;
    CHECK(ZeroStore::traffic(c, lora, z0, 8, 1).volume_elements() == doctest::Approx(2 * phi).epsilon(1e-4));
    CHECK(ZeroStore::traffic(c, lora, z3, 8, 1).volume_elements() == doctest::Approx(2 * (psi + phi) + E + phi).epsilon(1e-4));
}

TEST_CASE("traffic: the time model: wire bytes over the ring's bus bandwidth beside FLOPs over the sustained rate") {
    Traffic t = expected(8, {1, 4000000000, 8000000000}, {}, {1, 250000000, 1000000000});  // all-gather 8 GB, all-reduce 1 GB (volume 2 GB)
    Cluster one{8, 1, 0};
    CHECK(one.bus_GBps() == kNvlinkGBps);
    StepTime s = step_time(t, one, 1e15, 5e14);
    CHECK(s.compute_s == doctest::Approx(2.0));
    CHECK(s.comm_s[int(Collective::all_gather)] == doctest::Approx(7e9 / (kNvlinkGBps * 1e9)));
    CHECK(s.comm_s[int(Collective::reduce_scatter)] == 0);
    CHECK(s.comm_s[int(Collective::all_reduce)] == doctest::Approx(1.75e9 / (kNvlinkGBps * 1e9)));
    CHECK(s.fastest() == doctest::Approx(2.0));
    CHECK(s.slowest() == doctest::Approx(2.0 + 8.75e9 / (kNvlinkGBps * 1e9)));
    CHECK_FALSE(s.communication_bound());
    std::string text = step_time_text(s, one, 1e15, 5e14, "given");
    CAPTURE(text);
    CHECK(text.find("compute 2000 ms (1e+15 FLOPs at 500 TFLOP/s, given)") == 0);
    CHECK(text.find("compute-bound") != std::string::npos);
    CHECK(text.find("NVLink in one node, 360 GB/s") != std::string::npos);
    Cluster two{8, 2, 0};  // the ring crosses the network: every byte at its speed
    CHECK(two.bus_GBps() == kNetworkGBps);
    StepTime n = step_time(t, two, 1e15, 5e14);
    CHECK(n.comm() == doctest::Approx(8.75e9 / (kNetworkGBps * 1e9)));
    CHECK(n.communication_bound() == (8.75e9 / (kNetworkGBps * 1e9) > 2.0));
    CHECK(two.link().find("2 nodes of 4 GPUs") == 0);
    Cluster given{8, 2, 100};
    CHECK(given.bus_GBps() == 100);
    CHECK(given.link().find("100 GB/s (given)") != std::string::npos);
    StepTime slow = step_time(t, Cluster{8, 1, 1}, 1e12, 5e14);
    CHECK(slow.communication_bound());
    CHECK(step_time_text(slow, Cluster{8, 1, 1}, 1e12, 5e14, "x").find("communication-bound") != std::string::npos);
    CHECK(step_time(t, Cluster{1, 1, 0}, 1e15, 5e14).comm() == doctest::Approx(8.75e9 / (kNvlinkGBps * 1e9)));  // t says N = 8
    check_cluster(Cluster{8, 4, 0}, "--nodes");
    CHECK_THROWS_WITH_AS(check_cluster(Cluster{8, 3, 0}, "--nodes"), doctest::Contains("--nodes 3: the nodes must divide the 8 ranks evenly"), Error);
    CHECK_THROWS_WITH_AS(check_cluster(Cluster{2, 4, 0}, "--nodes"), doctest::Contains("--nodes 4:"), Error);
    std::string shown_traffic = traffic_text(t, 1e9);
    CAPTURE(shown_traffic);
    CHECK(shown_traffic.find("all-gather 8 GB, reduce-scatter 0 B, all-reduce 2 GB: 4.5 Psi (10 GB); the ring sends 8.75 GB from each rank") == 0);
}
