// test/test_zero_gpu.cpp — the ZeRO protocol on the GPU with this process as the only rank: every stage,
// with and without CPU offload, activation checkpointing and keeping stage-3 units gathered, gives the
// same training as stage 0 (bitwise; see the one exception below), for a Llama and for a Qwen3 (whose
// layers carry q_norm and k_norm); the CPU update overlapping the next forward gives the GPU optimizer's
// weights bitwise, also when they are read between steps, and so does the GPU update on a stream of its own;
// 20 steps equal 10 steps + checkpoint + resume + 10 steps, bitwise (both models). Runs on more ranks are
// the multi-GPU benchmark's (bench/zero.sh).
#include "gpu.h"

#include "lora.h"
#include "distributed/checkpoint.h"
#include "zero3.h"

namespace {

struct Trace {
    std::vector<float> losses, params;
    std::vector<float> peeks;  // the parameters read after steps 2 and 4 (with peek)
};

Golden golden_setup(const std::string& name = "llama_tied_gqa4") {
    Golden g;
    if (!load_golden(name, g))
        FAIL("missing golden files test/golden/" << name << " (python3 test/make_golden_model.py test/golden " << name << ")");
    return g;
}

// Every trainable parameter, in full: the adapters (LoRA) or every unit's weights.
std::vector<float> read_params(ZeroStore& store, const Golden& s, const LoraConfig& lora) {
    std::vector<float> out;
    if (lora.rank)
        for (auto& l : store.lora_layers()) out.insert(out.end(), l.begin(), l.end());
    else
        for (int u = 0; u < num_units(s.config); ++u) {
            std::vector<float> w = store.unit_weights(u);
            out.insert(out.end(), w.begin(), w.end());
        }
    return out;
}

// Runs steps [first, last] with two micro-batches per step (the same rows twice), optionally from/to a
// checkpoint; with peek, reads the parameters right after steps 2 and 4 (while an offloaded update runs).
Trace run(const Golden& s, const LoraConfig& lora, const ZeroOptions& z, bool recompute, int first, int last,
          const std::string& load_from = "", const std::string& save_to = "", bool peek = false) {
    cudaStream_t stream = nullptr;
    ZeroStore store(s.config, lora, z, test_world(), stream);
    store.load(s.dir);
    if (lora.rank) store.init_lora(7);
    if (!load_from.empty()) load_checkpoint(store, load_from, s.config, lora);
    LlamaModel m(s.config, {lora.rank, lora.scale()}, s.B, s.T, stream, recompute);
    DeviceFree keep;
    DeviceBatch batch{s.B, s.T, keep(to_device(s.ids)), keep(to_device(s.labels))};
    AdamWConfig adam;
    adam.weight_decay = 0.01f;
    Trace tr;
    for (int step = first; step <= last; ++step) {
        store.begin_step();
        for (int micro = 0; micro < 2; ++micro) {
            store.begin_micro_batch(micro == 1);
            m.forward_backward(batch, store, float(2 * s.targets));
        }
        store.step(adam, 2e-3f, step, 1.0f);
        if (peek && (step == 2 || step == 4)) {
            std::vector<float> p = read_params(store, s, lora);
            tr.peeks.insert(tr.peeks.end(), p.begin(), p.end());
        }
        tr.losses.push_back(from_device(m.loss_sum(), 1)[0]);
        check_cuda(cudaMemset(m.loss_sum(), 0, 4), "reset");
    }
    if (!save_to.empty()) {
        TrainerState state;
        state.step = last, state.total_steps = 20, state.global_batch = 2;
        std::string root = save_to.substr(0, save_to.rfind('/')), name = save_to.substr(save_to.rfind('/') + 1);
        save_checkpoint(store, root, name, s.config, lora, state);
    }
    tr.params = read_params(store, s, lora);
    return tr;
}

}  // namespace

TEST_CASE("gpu: ZeRO stages 0-3, offload, activation checkpointing and kept units train identically on one rank (Llama, Qwen3)") {
    if (!need_gpu()) return;
    for (const char* name : {"llama_tied_gqa4", "qwen3_tied"}) {
        Golden s = golden_setup(name);
        CAPTURE(std::string(name));
        for (int rank : {8, 0}) {
            LoraConfig lora;
            lora.rank = rank, lora.alpha = 16;
            ZeroOptions z0;
            z0.persistence_threshold = 0;  // stage 3 shards every unit
            Trace ref = run(s, lora, z0, false, 1, 6);
            // copies: stage 3 gathers each unit into a buffer as N ranks do; else one rank reads its shard in place
            struct Variant { int stage; bool offload, recompute, keep, copies; };
            for (Variant v : {Variant{1, false, false, false, false}, Variant{2, false, false, false, false},
                              Variant{3, false, false, false, false}, Variant{3, false, false, false, true},
                              Variant{3, false, true, false, false}, Variant{3, false, true, false, true},
                              Variant{3, false, false, true, true},
                              Variant{0, false, true, false, false}, Variant{1, true, false, false, false},
                              Variant{3, true, false, false, false}, Variant{3, true, false, false, true}}) {
                ZeroOptions z = z0;
                z.stage = v.stage, z.offload = v.offload, z.keep_gathered = v.keep, z.copy_gathers = v.copies;
                Trace t = run(s, lora, z, v.recompute, 1, 6);
                CAPTURE(rank);
                CAPTURE(v.stage);
                CAPTURE(v.offload);
                CAPTURE(v.recompute);
                CAPTURE(v.keep);
                CAPTURE(v.copies);
                // Bitwise, except full fine-tuning at stages 2, 3: there the micro-batches' gradients are summed
                // after each reduce-scatter instead of inside the products (another rounding order).
                if (rank == 0 && v.stage >= 2) {
                    CHECK(rel_error(t.losses, ref.losses) < 1e-4);
                    CHECK(rel_error(t.params, ref.params) < 1e-2);
                } else {
                    CHECK(t.losses == ref.losses);
                    CHECK(t.params == ref.params);
                }
            }
            CHECK(ref.losses.back() < ref.losses.front());  // it trains
        }
    }
}

TEST_CASE("gpu: offload overlapping the next forward gives the GPU optimizer's weights bitwise, read mid-run or not") {
    if (!need_gpu()) return;
    Golden s = golden_setup();
    for (int rank : {8, 0}) {
        LoraConfig lora;
        lora.rank = rank, lora.alpha = 16;
        struct Variant { int stage; int64_t persistence; };
        // stage 3 with every unit sharded, stage 3 with small units replicated, stage 2; two micro-batches a step
        for (Variant v : {Variant{3, 0}, Variant{3, 100000}, Variant{2, 0}}) {
            ZeroOptions z;
            z.stage = v.stage, z.persistence_threshold = v.persistence;
            Trace gpu = run(s, lora, z, false, 1, 6, "", "", true);
            z.offload = true;
            Trace peeked = run(s, lora, z, false, 1, 6, "", "", true);
            Trace overlapped = run(s, lora, z, false, 1, 6);  // nothing waits for the update but the gathers
            CAPTURE(rank);
            CAPTURE(v.stage);
            CAPTURE(v.persistence);
            CHECK(peeked.losses == gpu.losses);
            CHECK(peeked.peeks == gpu.peeks);
            CHECK(peeked.params == gpu.params);
            CHECK(overlapped.losses == gpu.losses);
            CHECK(overlapped.params == gpu.params);
            CHECK(gpu.losses.back() < gpu.losses.front());
        }
    }
}

TEST_CASE("gpu: the GPU update beside the next forward gives the serial update's bits, read mid-run or not") {
    if (!need_gpu()) return;
    Golden s = golden_setup();
    for (int rank : {8, 0}) {
        LoraConfig lora;
        lora.rank = rank, lora.alpha = 16;
        // stage 0; stage 3 with every unit sharded (read in place, or gathered by copies on the comm stream)
        struct Variant { int stage; bool copies; };
        for (Variant v : {Variant{0, false}, Variant{3, false}, Variant{3, true}}) {
            ZeroOptions z;
            z.stage = v.stage, z.copy_gathers = v.copies, z.persistence_threshold = 0;
            z.overlap_update = false;
            Trace serial = run(s, lora, z, false, 1, 6, "", "", true);
            z.overlap_update = true;
            Trace peeked = run(s, lora, z, false, 1, 6, "", "", true);
            Trace overlapped = run(s, lora, z, false, 1, 6);
            CAPTURE(rank);
            CAPTURE(v.stage);
            CAPTURE(v.copies);
            CHECK(peeked.losses == serial.losses);
            CHECK(peeked.peeks == serial.peeks);
            CHECK(overlapped.losses == serial.losses);
            CHECK(overlapped.params == serial.params);
            CHECK(serial.losses.back() < serial.losses.front());
        }
    }
}

TEST_CASE("gpu: 20 steps equal 10 steps, a checkpoint, a resume and 10 more, bitwise (Llama, Qwen3)") {
    if (!need_gpu()) return;
    for (const char* name : {"llama_tied_gqa4", "qwen3_tied"}) {
        Golden s = golden_setup(name);
        CAPTURE(std::string(name));
        for (int rank : {8, 0}) {
            for (int stage : {0, 3}) {
                LoraConfig lora;
                lora.rank = rank, lora.alpha = 16;
                ZeroOptions z;
                z.stage = stage;
                std::string dir = temp_dir(std::string("resume_") + name + "_" + std::to_string(rank) + "_" + std::to_string(stage));
                Trace whole = run(s, lora, z, false, 1, 20);
                Trace first = run(s, lora, z, false, 1, 10, "", dir);
                ZeroOptions other = z;
                if (rank) other.stage = 3 - stage;  // LoRA resumes under another stage: the checkpoint is by name
                Trace second = run(s, lora, other, false, 11, 20, dir);
                std::vector<float> joined = first.losses;
                joined.insert(joined.end(), second.losses.begin(), second.losses.end());
                CAPTURE(rank);
                CAPTURE(stage);
                CHECK(joined == whole.losses);
                CHECK(second.params == whole.params);
            }
        }
    }
}

TEST_CASE("gpu: the memory the store allocates is the ZeRO estimate") {
    if (!need_gpu()) return;
    Golden s = golden_setup();
    for (int rank : {8, 0})
        for (int stage = 0; stage <= 3; ++stage) {
            LoraConfig lora;
            lora.rank = rank, lora.alpha = 16;
            ZeroOptions z;
            z.stage = stage, z.persistence_threshold = 0;
            ZeroStore store(s.config, lora, z, test_world(), nullptr);
            MemoryReport got = store.memory(), want = ZeroStore::estimate(s.config, lora, z, 1);
            CAPTURE(rank);
            CAPTURE(stage);
            CHECK(got.base == doctest::Approx(want.base).epsilon(0.05));
            CHECK(got.master == doctest::Approx(want.master).epsilon(0.05));
            CHECK(got.moments == doctest::Approx(want.moments).epsilon(0.05));
            CHECK(got.grads == doctest::Approx(want.grads).epsilon(0.05));
            if (stage == 0) continue;
            z.offload = true;  // master, m, v and the pinned transit buffers in host memory
            ZeroStore offloaded(s.config, lora, z, test_world(), nullptr);
            MemoryReport host = offloaded.memory(), want_host = ZeroStore::estimate(s.config, lora, z, 1);
            CHECK(host.master == 0);
            CHECK(host.host == doctest::Approx(want_host.host).epsilon(0.05));
        }
}

// One rank gathers as N ranks do when asked (--copy-gathers); by default it hands out its shards in place.
TEST_CASE("gpu: stage 3 prefetches, gradient buffers alternate, and the buffers made during a step are the estimate's") {
    if (!need_gpu()) return;
    Golden s = golden_setup();
    struct Case { int rank; bool copies, keep; };  // keep: every unit's slot held from its forward to its backward
    for (Case k : {Case{8, true, false}, Case{0, true, false}, Case{8, false, false}, Case{8, true, true}}) {
        const int rank = k.rank;
        const bool copies = k.copies;
        LoraConfig lora;
        lora.rank = rank, lora.alpha = 16;
        ZeroOptions z;
        z.stage = 3, z.persistence_threshold = 0, z.copy_gathers = copies, z.keep_gathered = k.keep;
        z.prefetch_bucket_size = 1;  // smaller than any unit: a unit is still prefetched whole
        Trace t = run(s, lora, z, false, 1, 2);
        ZeroStore store(s.config, lora, z, test_world(), nullptr);
        store.load(s.dir);
        if (rank) store.init_lora(7);
        LlamaModel m(s.config, lora.shape(0), s.B, s.T, nullptr);
        DeviceFree keep;
        DeviceBatch batch{s.B, s.T, keep(to_device(s.ids)), keep(to_device(s.labels))};
        AdamWConfig adam;
        store.begin_step();
        store.begin_micro_batch(true);
        m.forward_backward(batch, store, float(s.targets));
        store.step(adam, 1e-3f, 1, 1.0f);
        MemoryReport got = store.memory(), want = ZeroStore::estimate(s.config, lora, z, 1);
        CAPTURE(rank);
        CAPTURE(copies);
        CAPTURE(k.keep);
        if (copies) {
            CHECK(store.prefetched_units() > 0);                                     // before: a unit over the bucket never was
            CHECK(got.gathered > 0);
        } else {
            CHECK(store.prefetched_units() == 0);  // nothing to fetch: the shard is the unit
            CHECK(got.gathered == 0);
        }
        CHECK(got.gathered == doctest::Approx(want.gathered).epsilon(1e-6));          // kGatherSlots slots, or none
        CHECK(got.grad_buffers == doctest::Approx(want.grad_buffers).epsilon(1e-6));  // before: one buffer, reused at once
        CHECK(t.losses.back() < t.losses.front());
    }
}
