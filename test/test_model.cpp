// test/test_model.cpp — the whole model against Hugging Face transformers + PEFT (golden files made by
// test/make_golden_model.py): logits, loss, LoRA gradients, and 10-step AdamW loss trajectories for LoRA
// (in the plain and the folded layout, lora.h with_lora_slots) and full fine-tuning, of two Llamas and a
// Qwen3 (qwen3_tied: q/k norms, head_dim apart from hidden / heads). Bounds: logits max-norm relative error
// 2e-2 (bf16 activations through the whole model), loss 1e-2 relative, gradients 5e-2 in the 2-norm, every
// trajectory step 1% (the bound).
#include "gpu.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>

#include "distributed/checkpoint.h"
#include "support/generate.h"
#include "lora.h"
#include "zero3.h"

namespace {

float read_loss(LlamaModel& m) {
    float v = from_device(m.loss_sum(), 1)[0];
    check_cuda(cudaMemset(m.loss_sum(), 0, 4), "reset loss");
    return v;
}

double norm_error(const std::vector<float>& got, const std::vector<float>& want) {
    double num = 0, den = 1e-30;
    for (size_t i = 0; i < got.size(); ++i) num += (double(got[i]) - want[i]) * (double(got[i]) - want[i]), den += double(want[i]) * want[i];
    return std::sqrt(num / den);
}

// Runs `steps` AdamW steps on the golden batch; returns each step's loss (before its update).
std::vector<float> trajectory(LlamaModel& m, ZeroStore& store, const DeviceBatch& batch, int64_t targets, int steps, float lr) {
    AdamWConfig c;
    std::vector<float> losses;
    for (int s = 1; s <= steps; ++s) {
        store.begin_step();
        m.forward_backward(batch, store, float(targets));
        store.step(c, lr, s, 0.0f);
        losses.push_back(read_loss(m) / float(targets));
    }
    return losses;
}

void check_against_hf(const std::string& name) {
    Golden g;
    if (!load_golden(name, g))
        FAIL("missing golden files test/golden/" << name << " (make them with python3 test/make_golden_model.py test/golden " << name
                                                  << " on a GPU machine with transformers and PEFT)");
    LoraConfig lora;
    std::vector<std::vector<float>> adapter;
    load_peft_adapter(g.dir + "/adapter", g.config, lora, adapter);
    REQUIRE(lora.rank == 8);
    SafetensorsReader gold(g.dir + "/golden.safetensors");
    int64_t targets = g.targets;
    DeviceFree keep;
    DeviceBatch batch{g.B, g.T, keep(to_device(g.ids)), keep(to_device(g.labels))};
    cudaStream_t stream = nullptr;
    float lr = float(g.meta.find("lr")->number);
    // LoRA in both layouts: the plain one (the adapters' own products) and the folded one (each adapter's s B
    // in its weight's padded rows, lora.h with_lora_slots); the full fine-tuning run below has no adapters
    for (const LlamaConfig& c : {g.config, with_lora_slots(g.config, lora)}) {
        const bool folded = c.row_pad[kQProj] > 0;
        CAPTURE(folded);
        {
            ZeroStore store(c, lora, ZeroOptions(), test_world(), stream);
            store.load(g.dir);
            store.set_lora(adapter);
            LlamaModel m(c, {lora.rank, lora.scale()}, g.B, g.T, stream);
            float* logits = keep(poisoned<float>(size_t(g.B) * g.T * c.vocab_size));
            m.forward(batch, store, logits);
            std::vector<float> want = gold.read_float("logits", {g.B, g.T, c.vocab_size});
            double err = rel_error(from_device(logits, want.size()), want);
            MESSAGE(name << ": logits max-norm relative error " << err);
            CHECK(err < 2e-2);
            float loss = read_loss(m) / float(targets);
            CHECK(loss == doctest::Approx(g.meta.find("loss")->number).epsilon(1e-2));

            store.begin_step();
            m.forward_backward(batch, store, float(targets));
            read_loss(m);
            check_cuda(cudaDeviceSynchronize(), "sync");
            // gradients: the store's fp32 grads for the adapters, by PEFT name
            LoraLayout layout = lora_layout(c, lora);
            std::vector<float> grads = store.trainable_grads();
            double worst = 0;
            for (int l = 0; l < c.num_hidden_layers; ++l)
                for (int t = 0; t < kTargets; ++t)
                    for (char which : {'A', 'B'}) {
                        std::string key = "grad." + peft_key(l, LoraTarget(t), which);
                        int rows = which == 'A' ? lora.rank : layout.out[t], cols = which == 'A' ? layout.in[t] : lora.rank;
                        std::vector<float> w = gold.read_float(key, {rows, cols});
                        int64_t off = int64_t(l) * layout.per_layer + (which == 'A' ? layout.a_offset[t] : layout.b_offset[t]);
                        std::vector<float> got(grads.begin() + off, grads.begin() + off + int64_t(w.size()));
                        double e = norm_error(got, w);
                        worst = std::max(worst, e);
                        CAPTURE(key);
                        CHECK(e < 5e-2);
                    }
            MESSAGE(name << ": worst LoRA gradient 2-norm relative error " << worst);

            if (const char* out = folded ? std::getenv("LLAMA_EXPORT_DIR") : nullptr) {  // for test/check_export.py (PEFT loading ours)
                std::string dir = std::string(out) + "/" + name;
                mkdir(out, 0755), mkdir(dir.c_str(), 0755);
                save_peft_adapter(dir + "/adapter", c, lora, store.lora_layers(), g.dir);
                save_hf(store, dir + "/merged", c, lora);
                std::vector<float> ours = from_device(logits, want.size());
                write_safetensors(dir + "/our_logits.safetensors", {{"logits", "F32", {g.B, g.T, c.vocab_size}, ours.data()}});
            }
        }
        {  // LoRA: 10 AdamW steps from the same adapter
            ZeroStore store(c, lora, ZeroOptions(), test_world(), stream);
            store.load(g.dir);
            store.set_lora(adapter);
            LlamaModel m(c, {lora.rank, lora.scale()}, g.B, g.T, stream);
            std::vector<float> ours = trajectory(m, store, batch, targets, 10, lr);
            const Json& want = *g.meta.find("lora_losses");
            for (size_t s = 0; s < ours.size(); ++s) {
                CAPTURE(s);
                CHECK(ours[s] == doctest::Approx(want.array[s].number).epsilon(1e-2));
            }
            MESSAGE(name << (folded ? " (folded)" : "") << ": LoRA step 10 loss " << ours.back() << " vs HF " << want.array.back().number);
        }
    }
    {  // full fine-tuning: 10 AdamW steps on every weight
        LoraConfig none;
        ZeroStore store(g.config, none, ZeroOptions(), test_world(), stream);
        store.load(g.dir);
        LlamaModel m(g.config, {}, g.B, g.T, stream);
        std::vector<float> ours = trajectory(m, store, batch, targets, 10, lr);
        const Json& want = *g.meta.find("full_losses");
        for (size_t s = 0; s < ours.size(); ++s) {
            CAPTURE(s);
            CHECK(ours[s] == doctest::Approx(want.array[s].number).epsilon(1e-2));
        }
        MESSAGE(name << ": full step 10 loss " << ours.back() << " vs HF " << want.array.back().number);
    }
}

}  // namespace

TEST_CASE("gpu: tied embeddings, GQA 4, head_dim 64, llama3 RoPE: equals HF + PEFT") {
    if (!need_gpu()) return;
    check_against_hf("llama_tied_gqa4");
}

TEST_CASE("gpu: untied embeddings, no GQA, head_dim 128: equals HF + PEFT") {
    if (!need_gpu()) return;
    check_against_hf("llama_untied_mha");
}

TEST_CASE("gpu: Qwen3: q_norm and k_norm, head_dim 64 with hidden 192 and 4 heads, tied, rope_theta 1e6: equals HF + PEFT") {
    if (!need_gpu()) return;
    check_against_hf("qwen3_tied");
}

TEST_CASE("gpu: generation with the KV cache follows the full forward's argmax") {
    if (!need_gpu()) return;
    Golden g;
    if (!load_golden("llama_tied_gqa4", g)) FAIL("missing golden files");
    const LlamaConfig& c = g.config;
    LoraConfig lora;
    std::vector<std::vector<float>> adapter;
    load_peft_adapter(g.dir + "/adapter", c, lora, adapter);
    cudaStream_t s = nullptr;
    ZeroStore store(c, lora, ZeroOptions(), test_world(), s);
    store.load(g.dir);
    store.set_lora(adapter);
    std::vector<int32_t> prompt(g.ids.begin(), g.ids.begin() + 9);
    Generator gen(c, {lora.rank, lora.scale()}, 3, 64, s);
    Sampling greedy;
    greedy.max_new_tokens = 12;
    std::vector<int32_t> eos(c.eos_token_ids.begin(), c.eos_token_ids.end());
    // Teacher-forced check: the full forward over the generated text must pick each generated token.
    auto check_teacher_forced = [&](const std::vector<int32_t>& out) {
        REQUIRE(out.size() > prompt.size());
        int T = int(out.size());
        LlamaModel m(c, {lora.rank, lora.scale()}, 1, T, s);
        DeviceFree keep;
        std::vector<int32_t> labels(out.size(), -100);
        DeviceBatch batch{1, T, keep(to_device(out)), keep(to_device(labels))};
        float* logits = keep(poisoned<float>(size_t(T) * c.vocab_size));
        m.forward(batch, store, logits);
        std::vector<float> z = from_device(logits, size_t(T) * c.vocab_size);
        int agree = 0, total = 0;
        for (int t = int(prompt.size()) - 1; t < T - 1; ++t, ++total) {
            const float* row = z.data() + size_t(t) * c.vocab_size;
            int best = int(std::max_element(row, row + c.vocab_size) - row);
            float margin = row[best] - row[out[size_t(t + 1)]];
            agree += best == out[size_t(t + 1)] || margin < 1e-2f * std::fabs(row[best]);  // bf16 near-ties may flip
        }
        CHECK(agree == total);
    };
    // the prompt's first 8 positions in one pass (prefill), then a decode step a token
    gen.min_prefill = 2;
    std::vector<int32_t> out = gen.generate(store, {prompt}, greedy, eos)[0];
    check_teacher_forced(out);
    // every position a decode step: three sequences at once, prompts of different lengths, each the same as
    // generated alone (a prefill's length depends on the shortest prompt, so rows are independent only to
    // bf16 rounding with it)
    gen.min_prefill = 1 << 30;
    std::vector<int32_t> shorter(prompt.begin(), prompt.begin() + 5), other(g.ids.begin() + 20, g.ids.begin() + 27);
    std::vector<std::vector<int32_t>> together = gen.generate(store, {prompt, shorter, other}, greedy, eos);
    std::vector<int32_t> stepped = gen.generate(store, {prompt}, greedy, eos)[0];
    CHECK(together[0] == stepped);
    CHECK(together[1] == gen.generate(store, {shorter}, greedy, eos)[0]);
    CHECK(together[2] == gen.generate(store, {other}, greedy, eos)[0]);
    check_teacher_forced(stepped);
    // Sampling: a fixed seed repeats; temperature sampling stays inside the vocabulary.
    Sampling sampled;
    sampled.temperature = 0.8f, sampled.top_p = 0.9f, sampled.top_k = 50, sampled.seed = 42, sampled.max_new_tokens = 8;
    std::vector<int32_t> a = gen.generate(store, {prompt}, sampled, eos)[0], b = gen.generate(store, {prompt}, sampled, eos)[0];
    CHECK(a == b);
    for (int32_t id : a) CHECK((id >= 0 && id < c.vocab_size));
}

TEST_CASE("gpu: rows packed into sequences give the same loss and gradients as the same rows one per sequence (Llama, Qwen3)") {
    if (!need_gpu()) return;
    for (const char* name : {"llama_tied_gqa4", "qwen3_tied"}) {
        CAPTURE(std::string(name));
        Golden g;
        if (!load_golden(name, g)) FAIL("missing golden files test/golden/" << name);
        const LlamaConfig& c = g.config;
        Rng rng(uint64_t(time(nullptr)));
        int T = 96;
        Dataset rows;  // 9 rows of random lengths (one of length 2), prompts masked
        rows.seq_len = T;
        for (int r = 0; r < 9; ++r) {
            Example ex;
            int len = r == 4 ? 2 : 8 + int(rng.below(40)), prompt = int(rng.below(uint64_t(len / 2)));
            for (int t = 0; t < len; ++t) ex.ids.push_back(int32_t(1 + rng.below(uint64_t(c.vocab_size - 1))));
            ex.labels = ex.ids;
            for (int t = 0; t < prompt; ++t) ex.labels[size_t(t)] = kIgnoreIndex;
            rows.stats.tokens += len;
            rows.rows.push_back(ex);
        }
        LoraConfig lora;
        lora.rank = 8, lora.alpha = 16;
        struct Result { double loss; int64_t targets; std::vector<float> grads; };
        auto run = [&](bool pack) {
            Dataset d = rows;
            d.pack = pack;
            pack_sequences(d);
            int B = int(d.sequences.size());
            Loader loader(d, B, T, 0, 1, 1, false, 0);
            Batch b = loader.batch(0, 0);
            ZeroStore store(c, lora, ZeroOptions(), test_world(), nullptr);
            store.load(g.dir);
            store.init_lora(3);
            std::vector<std::vector<float>> adapter = store.lora_layers();
            for (auto& layer : adapter)  // B = 0 after PEFT's init: give every adapter weight a value
                for (float& x : layer) x = x == 0 ? 0.01f : x;
            store.set_lora(adapter);
            LlamaModel m(c, lora.shape(0), B, T, nullptr);
            DeviceFree keep;
            DeviceBatch batch{B, T, keep(to_device(b.ids)), keep(to_device(b.labels)), keep(to_device(b.positions)),
                              keep(to_device(b.doc_start))};
            store.begin_step();
            m.forward_backward(batch, store, float(b.target_tokens));
            return Result{from_device(m.loss_sum(), 1)[0], b.target_tokens, store.trainable_grads()};
        };
        Result packed = run(true), unpacked = run(false);
        CHECK(packed.targets == unpacked.targets);
        double loss_error = std::fabs(packed.loss - unpacked.loss) / unpacked.loss;
        double grad_error = norm_error(packed.grads, unpacked.grads);
        MESSAGE(std::string(name) << ": packed vs unpacked: loss " << loss_error << ", LoRA gradients (2-norm) " << grad_error);
        CHECK(loss_error < 2e-3);  // bf16 activations; the products see the rows in other groupings
        CHECK(grad_error < 2e-2);
    }
}

// Twice per model: with the training store on the legacy default stream (each step's kernels launched one
// by one), and with the inference store (bf16 weights only) on a stream of its own, where every step after
// the first replays one CUDA graph.
TEST_CASE("gpu: greedy generation equals HF generate on the golden models, several prompts at once, launched or replayed") {
    if (!need_gpu()) return;
    cudaStream_t own;
    check_cuda(cudaStreamCreate(&own), "stream");
    struct Case { const char* name; bool replayed; };
    for (Case run : {Case{"llama_tied_gqa4", false}, Case{"llama_tied_gqa4", true}, Case{"llama_untied_mha", false}, Case{"llama_untied_mha", true},
                      Case{"qwen3_tied", false}, Case{"qwen3_tied", true}}) {
        const char* name = run.name;
        bool replayed = run.replayed;
        CAPTURE(std::string(name));
        CAPTURE(replayed);
        std::string dir = std::string("test/golden/") + name;
        if (access((dir + "/generate.json").c_str(), R_OK) != 0)
            FAIL("missing " << dir << "/generate.json (make it with python3 test/make_golden_generate.py test/golden " << name << ")");
        Json want = read_json_file(dir + "/generate.json");
        LlamaConfig c = load_config(dir + "/config.json");
        LoraConfig lora;
        std::vector<std::vector<float>> adapter;
        if (want.find("adapter")->boolean) load_peft_adapter(dir + "/adapter", c, lora, adapter);
        ZeroOptions z;
        z.inference = replayed;
        cudaStream_t stream = replayed ? own : nullptr;
        ZeroStore store(c, lora, z, test_world(), stream);
        store.load(dir);
        CHECK(store.weights_in_place());
        if (replayed) CHECK(store.memory().master + store.memory().grads + store.memory().moments == 0);
        if (lora.rank) store.set_lora(adapter);
        std::vector<std::vector<int32_t>> prompts, expected;
        for (const Json& p : want.find("prompts")->array) {
            prompts.emplace_back();
            for (const Json& x : p.array) prompts.back().push_back(int32_t(x.integer));
        }
        for (const Json& p : want.find("continuations")->array) {
            expected.emplace_back();
            for (const Json& x : p.array) expected.back().push_back(int32_t(x.integer));
        }
        std::vector<int32_t> eos;
        for (const Json& x : want.find("eos")->array) eos.push_back(int32_t(x.integer));
        Sampling greedy;
        greedy.max_new_tokens = int(want.find("max_new_tokens")->integer);
        Generator gen(c, {lora.rank, lora.scale()}, int(prompts.size()), 64, stream);
        gen.min_prefill = 2;  // the shortest prompt's first 4 positions in one pass
        for (int round = 0; round < 2; ++round) {  // the second round replays the graph from its first step
            std::vector<std::vector<int32_t>> got = gen.generate(store, prompts, greedy, eos);
            for (size_t k = 0; k < prompts.size(); ++k) {
                std::vector<int32_t> continuation(got[k].begin() + long(prompts[k].size()), got[k].end());
                CAPTURE(round);
                CAPTURE(k);
                CHECK(continuation == expected[k]);
            }
        }
    }
    check_cuda(cudaStreamDestroy(own), "stream");
}

TEST_CASE("gpu: a Llama-2-family model: our tokenizer, data and model give HF's loss; its adapter and export load in HF") {
    if (!need_gpu()) return;
    std::string dir = "test/golden/llama2_family";
    if (access((dir + "/golden.json").c_str(), R_OK) != 0)
        FAIL("missing " << dir << "/golden.json (make it with python3 test/make_golden_llama2.py data/llama2_tokenizer.json " << dir << ")");
    if (access("data/llama2_tokenizer.json", R_OK) != 0) FAIL("missing data/llama2_tokenizer.json: run bash data/fetch.sh");
    Json want = read_json_file(dir + "/golden.json");
    LlamaConfig c = load_config(dir + "/config.json");
    Tokenizer tok = Tokenizer::load("data/llama2_tokenizer.json");
    CHECK(tok.family() == TokenizerFamily::llama2);
    ModelTokens mt = model_tokens(tok, dir);
    CHECK(mt.bos == 1);
    CHECK(mt.eos == std::vector<int32_t>{2});
    DataOptions dopt;
    dopt.seq_len = 128, dopt.tokens = &mt;
    Dataset data = load_dataset(dir + "/rows.jsonl", &tok, c.vocab_size, dopt);
    // the rows, tokenized and formatted by us, are HF's ids and labels
    const Json& ids = *want.find("ids");
    const Json& labels = *want.find("labels");
    REQUIRE(data.rows.size() == ids.array.size());
    for (size_t r = 0; r < data.rows.size(); ++r) {
        std::vector<int32_t> hf_ids, hf_labels;
        for (const Json& x : ids.array[r].array) hf_ids.push_back(int32_t(x.integer));
        for (const Json& x : labels.array[r].array) hf_labels.push_back(int32_t(x.integer));
        CAPTURE(r);
        CHECK(data.rows[r].ids == hf_ids);
        CHECK(data.rows[r].labels == hf_labels);
    }
    // the mean loss over the rows, packed two or more to a sequence, is HF's (one row at a time)
    ZeroStore store(c, LoraConfig(), ZeroOptions(), test_world(), nullptr);
    store.load(dir);
    int B = int(data.sequences.size());
    Loader loader(data, B, dopt.seq_len, 0, 1, 1, false, mt.pad);
    Batch b = loader.batch(0, 0);
    LlamaModel m(c, {}, B, dopt.seq_len, nullptr);
    DeviceFree keep;
    DeviceBatch batch{B, dopt.seq_len, keep(to_device(b.ids)), keep(to_device(b.labels)), keep(to_device(b.positions)),
                      keep(to_device(b.doc_start))};
    m.forward(batch, store);
    CHECK(b.target_tokens == want.find("targets")->integer);
    double loss = from_device(m.loss_sum(), 1)[0] / double(b.target_tokens);
    MESSAGE("llama2_family: loss " << loss << " vs HF " << want.find("loss")->number);
    CHECK(loss == doctest::Approx(want.find("loss")->number).epsilon(1e-2));

    if (const char* out = std::getenv("LLAMA_EXPORT_DIR")) {  // an adapter trained here, for test/check_export.py
        LoraConfig lora;
        lora.rank = 4, lora.alpha = 8;
        ZeroStore trained(c, lora, ZeroOptions(), test_world(), nullptr);
        trained.load(dir);
        trained.init_lora(5);
        LlamaModel lm(c, lora.shape(0), B, dopt.seq_len, nullptr);
        AdamWConfig adam;
        for (int step = 1; step <= 5; ++step) {
            trained.begin_step();
            lm.forward_backward(batch, trained, float(b.target_tokens));
            trained.step(adam, 1e-2f, step, 1.0f);
        }
        Json rows = read_json_file(dir + "/rows.json");
        std::vector<int32_t> row_ids;
        int rows_b = 0, rows_t = 0;
        for (const Json& r : rows.find("input_ids")->array) {
            for (const Json& x : r.array) row_ids.push_back(int32_t(x.integer));
            rows_t = int(r.array.size()), ++rows_b;
        }
        LlamaModel em(c, lora.shape(0), rows_b, rows_t, nullptr);
        float* logits = keep(poisoned<float>(size_t(rows_b) * rows_t * c.vocab_size));
        std::vector<int32_t> no_labels(row_ids.size(), -100);
        em.forward({rows_b, rows_t, keep(to_device(row_ids)), keep(to_device(no_labels))}, trained, logits);
        std::string d = std::string(out) + "/llama2_family";
        mkdir(out, 0755), mkdir(d.c_str(), 0755);
        save_peft_adapter(d + "/adapter", c, lora, trained.lora_layers(), dir);
        save_hf(trained, d + "/merged", c, lora);
        std::vector<float> ours = from_device(logits, size_t(rows_b) * rows_t * c.vocab_size);
        write_safetensors(d + "/our_logits.safetensors", {{"logits", "F32", {rows_b, rows_t, c.vocab_size}, ours.data()}});
    }
}
