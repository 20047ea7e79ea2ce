// test/test_zero.cpp — the ZeRO partitioner's CPU parts: partition math for odd sizes and 1..8 ranks,
// checkpoint resharding by name from N writers to M readers, the memory estimate's formulas, and the
// option checks. (GPU runs of stages 0-3 are in test_model.cpp and test_zero_gpu.cpp.)
#include "test.h"

#include <cstdio>
#include <numeric>

#include "data.h"
#include "distributed/checkpoint.h"
#include "distributed/offload.h"
#include "support/safetensors.h"
#include "zero3.h"

TEST_CASE("zero: every element is owned exactly once; shards round-trip to the full tensor") {
    Rng rng(uint64_t(time(nullptr)));
    for (int64_t numel : {1, 2, 7, 100, 1001, 4099, 65537}) {
        std::vector<float> full(static_cast<size_t>(numel));
        for (float& x : full) x = rng.uniform();
        for (int N = 1; N <= 8; ++N) {
            Shard s = make_shard(numel, N);
            CAPTURE(numel);
            CAPTURE(N);
            CHECK(s.padded % N == 0);
            CHECK(s.padded >= numel);
            CHECK(s.padded - numel < N);
            std::vector<int> owners(static_cast<size_t>(numel), 0);
            std::vector<float> joined;
            for (int r = 0; r < N; ++r) {
                CHECK(s.owned(r) >= 0);
                CHECK(s.owned(r) <= s.size);
                for (int64_t i = 0; i < s.owned(r); ++i) owners[size_t(s.begin(r) + i)]++;
                std::vector<float> shard(full.begin() + std::min(numel, s.begin(r)), full.begin() + std::min(numel, s.begin(r) + s.owned(r)));
                shard.resize(size_t(s.size), 0.0f);  // padding
                joined.insert(joined.end(), shard.begin(), shard.end());
            }
            CHECK(std::all_of(owners.begin(), owners.end(), [](int c) { return c == 1; }));
            joined.resize(size_t(numel));
            CHECK(joined == full);
        }
    }
}

TEST_CASE("zero: checkpoints written by N ranks are read back by M ranks, by name") {
    Rng rng(uint64_t(time(nullptr)));
    // One trainable segment of two tensors, as a unit lays them out.
    std::vector<std::pair<std::string, int64_t>> tensors = {{"model.layers.0.self_attn.q_proj.weight", 37}, {"model.layers.0.mlp.up_proj.weight", 53}};
    int64_t numel = 90;
    std::vector<float> master(static_cast<size_t>(numel));
    for (float& x : master) x = rng.uniform() - 0.5f;
    for (int N = 1; N <= 8; ++N) {
        std::string dir = temp_dir("ckpt_" + std::to_string(N));
        Shard s = make_shard(numel, N);
        for (int r = 0; r < N; ++r) {
            std::vector<TensorToWrite> entries;
            std::vector<std::vector<float>> data;
            data.reserve(8);
            int64_t lo = s.begin(r), hi = lo + s.owned(r), off = 0;
            for (const auto& [name, n] : tensors) {  // the slices of each tensor this rank owns
                int64_t a = std::max(lo, off), b = std::min(hi, off + n);
                if (a < b) {
                    data.emplace_back(master.begin() + a, master.begin() + b);
                    entries.push_back({checkpoint_key("master", name, a - off), "F32", {b - a}, nullptr});
                }
                off += n;
            }
            for (size_t i = 0; i < entries.size(); ++i) entries[i].data = data[i].data();
            write_safetensors(checkpoint_rank_file(dir, r, N), entries);
        }
        CheckpointIndex index(dir, N);
        for (int M = 1; M <= 8; ++M) {
            Shard t = make_shard(numel, M);
            std::vector<float> rebuilt;
            for (int r = 0; r < M; ++r) {
                int64_t lo = t.begin(r), hi = lo + t.owned(r), off = 0;
                for (const auto& [name, n] : tensors) {
                    int64_t a = std::max(lo, off), b = std::min(hi, off + n);
                    if (a < b) {
                        std::vector<float> part = index.read("master", name, a - off, b - a);
                        rebuilt.insert(rebuilt.end(), part.begin(), part.end());
                    }
                    off += n;
                }
            }
            CAPTURE(N);
            CAPTURE(M);
            CHECK(rebuilt == master);
        }
        CHECK_THROWS_WITH_AS(index.read("m", tensors[0].first, 0, 5), doctest::Contains("is incomplete: m of"), Error);
        if (N > 1) {
            std::remove(checkpoint_rank_file(dir, N - 1, N).c_str());
            CHECK_THROWS_WITH_AS(CheckpointIndex(dir, N), doctest::Contains("cannot read"), Error);
        }
    }
}

TEST_CASE("zero: the memory estimate follows the paper's 2 + 2 + K split by stage") {
    LlamaConfig c = preset_config("llama-3.2-1b");
    LoraConfig full;  // rank 0: every weight trains
    double psi = double(c.num_parameters());
    for (int N : {1, 2, 4, 8}) {
        ZeroOptions z;
        for (int stage = 0; stage <= 3; ++stage) {
            z.stage = stage;
            MemoryReport m = ZeroStore::estimate(c, full, z, N);
            double shard = stage == 0 ? 1.0 : 1.0 / N;
            CAPTURE(N);
            CAPTURE(stage);
            CHECK(m.base == doctest::Approx(2 * psi * (stage == 3 ? 1.0 / N : 1.0)).epsilon(0.01));
            CHECK(m.master == doctest::Approx(4 * psi * shard).epsilon(0.01));
            CHECK(m.moments == doctest::Approx(8 * psi * shard).epsilon(0.01));
            CHECK(m.grads == doctest::Approx(4 * psi * (stage >= 2 ? 1.0 / N : 1.0)).epsilon(0.01));
        }
        z.stage = 2, z.offload = true;
        MemoryReport off = ZeroStore::estimate(c, full, z, N);
        CHECK(off.master == 0);
        // master, m, v (12 bytes) of the shards, and the transit ring: two buffers of the largest shard (the
        // embedding's), 6 bytes per element each
        double embedding = double(make_shard(int64_t(c.vocab_size) * c.hidden_size, N).size);
        CHECK(off.host == doctest::Approx(12 * psi / N + kTransitSlots * 6 * embedding).epsilon(0.01));
    }
    LoraConfig lora;
    lora.rank = 16;
    ZeroOptions z3;
    z3.stage = 3;
    MemoryReport m = ZeroStore::estimate(c, lora, z3, 4);
    CHECK(m.gathered > 0);                                   // N ranks gather into buffers
    CHECK(ZeroStore::estimate(c, lora, z3, 1).gathered == 0);  // one rank reads its shards in place
    z3.copy_gathers = true;
    CHECK(ZeroStore::estimate(c, lora, z3, 1).gathered == doctest::Approx(m.gathered).epsilon(0.01));  // a buffer holds a whole unit at any N
    // --keep-gathered: every sharded unit's slot held from its forward to its backward (all but the final norm's
    // unit, 2,048 elements with the head tied: under the persistence threshold)
    z3.copy_gathers = false, z3.keep_gathered = true;
    CHECK(ZeroStore::estimate(c, lora, z3, 4).gathered == doctest::Approx(m.gathered * (num_units(c) - 1) / kGatherSlots).epsilon(0.001));
    z3.keep_gathered = false;
    CHECK(m.master == doctest::Approx(4.0 * 11272192 / 4).epsilon(0.01));  // only the adapters train
    CHECK(m.base == doctest::Approx((2 * psi + 2.0 * 11272192) / 4).epsilon(0.01));
}

TEST_CASE("zero: option checks") {
    ZeroOptions copies;
    copies.stage = 2, copies.copy_gathers = true;
    CHECK_THROWS_WITH_AS(check_zero_options(copies, "--zero-stage"), doctest::Contains("--copy-gathers applies to ZeRO stage 3 only"), Error);
    ZeroOptions z;
    z.stage = 4;
    CHECK_THROWS_WITH_AS(check_zero_options(z, "ds.json"), doctest::Contains("ds.json: ZeRO stage must be 0, 1, 2 or 3"), Error);
    z.stage = 0, z.offload = true;
    CHECK_THROWS_WITH_AS(check_zero_options(z, "--zero-stage"), doctest::Contains("optimizer offload needs ZeRO stage 1, 2 or 3"), Error);
    z.offload = false, z.reduce_bucket_size = 0;
    CHECK_THROWS_WITH_AS(check_zero_options(z, "ds.json"), doctest::Contains("reduce_bucket_size must be positive"), Error);
    z.reduce_bucket_size = 1, z.allgather_bucket_size = -5;
    CHECK_THROWS_WITH_AS(check_zero_options(z, "ds.json"), doctest::Contains("allgather_bucket_size must be positive"), Error);
}

TEST_CASE("zero: a checkpoint's position converts to another rank count, or is refused") {
    TrainerState s;  // written by 4 ranks x micro-batch 3, 1 accumulation step: 12 sequences a step
    s.step = 10, s.total_steps = 40, s.epoch = 1, s.sequences_into_epoch = 36, s.global_batch = 12;
    int64_t per_epoch = 9;  // ceil(100 sequences / 12)
    CHECK(resume_micro_batch(s, 3, 1, 4, per_epoch, "x") == 1 * 9 + 3);   // the same world
    CHECK(resume_micro_batch(s, 6, 1, 2, per_epoch, "x") == 1 * 9 + 3);   // 2 ranks x 6: the same rows per step
    CHECK(resume_micro_batch(s, 4, 1, 3, per_epoch, "x") == 1 * 9 + 3);   // 3 ranks x 4
    CHECK(resume_micro_batch(s, 12, 1, 1, per_epoch, "x") == 1 * 9 + 3);  // one rank
    CHECK(resume_micro_batch(s, 3, 2, 2, 17, "x") == 1 * 17 + 6);         // 2 ranks x 3 x 2 accumulation
    CHECK_THROWS_WITH_AS(resume_micro_batch(s, 3, 1, 3, per_epoch, "--resume D"),
                         doctest::Contains("--resume D: the checkpoint takes 12 sequences per step, this run 9"), Error);
    s.sequences_into_epoch = 30;  // not a multiple of 4 x 3... but of 2 x 3
    CHECK_THROWS_WITH_AS(resume_micro_batch(s, 3, 1, 4, per_epoch, "--resume D"), doctest::Contains("no whole number"), Error);
    CHECK(resume_micro_batch(s, 3, 2, 2, 17, "x") == 1 * 17 + 5);
}

TEST_CASE("zero: stage 3 prefetches a unit whatever its size; bucket 0 turns it off") {
    ZeroOptions z;
    z.stage = 3;
    LlamaConfig c = preset_config("llama-3.2-1b");
    CHECK(unit_layout(c, 1).numel > z.prefetch_bucket_size);  // a 1B layer exceeds DeepSpeed's default bucket
    CHECK(prefetches(z));
    z.prefetch_bucket_size = 0;
    CHECK_FALSE(prefetches(z));
    z.prefetch_bucket_size = 1, z.stage = 2;
    CHECK_FALSE(prefetches(z));  // nothing to gather below stage 3
}

TEST_CASE("offload: host memory is 12 bytes per optimized element and a ring of transit buffers of the largest shard") {
    CHECK(offload_host_bytes({10, 30, 20}) == 12.0 * 60 + kTransitSlots * 6.0 * 30);
    CHECK(offload_host_bytes({0, 0}) == 12.0 * 2 + kTransitSlots * 6.0);  // an empty shard still takes one element
    CHECK(kTransitSlots >= 2);  // a gradient comes down while the shard before it is updated
    // Full fine-tuning of a 7B (Llama-2) on one GPU: DeepSpeed's 12 bytes per parameter, and the ring (two
    // layers' worth) on top: about 12.4 bytes, where a pinned gradient and bf16 copy per element made 18.
    LlamaConfig c = preset_config("llama-2-7b");
    double psi = double(c.num_parameters());
    CHECK(psi == doctest::Approx(6.738e9).epsilon(0.001));
    ZeroOptions z;
    z.stage = 3, z.offload = true;
    LoraConfig full;
    MemoryReport m = ZeroStore::estimate(c, full, z, 1);
    double layer = double(unit_layout(c, 1).numel);
    CHECK(m.host == doctest::Approx(12 * psi + kTransitSlots * 6 * layer).epsilon(0.001));
    CHECK(m.host / psi < 12.5);
    CHECK(m.master == 0);
    CHECK(m.moments == 0);
    CHECK(m.base == doctest::Approx(2 * psi).epsilon(0.001));   // on the GPU: bf16 weights, fp32 gradients
    CHECK(m.grads == doctest::Approx(4 * psi).epsilon(0.001));
    CHECK(m.model_states() / double(1ull << 30) < 42);          // fits an 80 GB GPU beside the activations
    // 8 ranks share the state
    CHECK(ZeroStore::estimate(c, full, z, 8).host == doctest::Approx(12 * psi / 8 + kTransitSlots * 6 * layer / 8).epsilon(0.001));
}

TEST_CASE("zero: inference holds bf16 weights only; the 13B shape's estimate") {
    LlamaConfig c = preset_config("llama-2-13b");
    double psi = double(c.num_parameters());
    CHECK(psi == doctest::Approx(13.016e9).epsilon(0.001));
    ZeroOptions z;
    z.inference = true;
    LoraConfig full, lora;
    lora.rank = 16;
    MemoryReport m = ZeroStore::estimate(c, full, z, 1);
    CHECK(m.base == doctest::Approx(2 * psi).epsilon(1e-6));
    CHECK(m.master + m.grads + m.moments + m.host + m.grad_buffers + m.gathered == 0);
    MemoryReport a = ZeroStore::estimate(c, lora, z, 1);  // the adapter's bf16 weights beside the base
    CHECK(a.base > m.base);
    CHECK(a.master + a.grads + a.moments == 0);
    CHECK(m.base / double(1ull << 30) < 25);  // a 13B generates on one 80 GB GPU
}
