// test/test_lora.cpp — LoRA layout, targets, PEFT's init, the PEFT file round trip and its errors,
// merging into the base; AdamW on the CPU and the learning-rate schedules. CPU only (CI).
#include "test.h"

#include <cmath>
#include <cstring>

#include "adamw.h"
#include "data.h"
#include "lora.h"
#include "support/safetensors.h"
#include "distributed/threads.h"

TEST_CASE("lora: targets, layout, scale") {
    LoraConfig l;
    l.rank = 4, l.alpha = 8;
    parse_lora_targets("q_proj,v", l, "--lora-targets");
    CHECK(l.target[kQ]);
    CHECK(l.target[kV]);
    CHECK_FALSE(l.target[kK]);
    CHECK_FALSE(l.target[kDown]);
    CHECK(l.scale() == 2.0f);
    l.use_rslora = true;
    CHECK(l.scale() == doctest::Approx(4.0f));
    CHECK_THROWS_WITH_AS(parse_lora_targets("q,lm_head", l, "--lora-targets"), doctest::Contains("--lora-targets: unknown LoRA target \"lm_head\""), Error);
    LoraConfig all;
    all.rank = 16;
    parse_lora_targets("all", all, "x");
    LlamaConfig c = preset_config("llama-3.2-1b");
    LoraLayout layout = lora_layout(c, all);
    // r (in + out) summed over q, k, v, o, gate, up, down
    int64_t want = 16 * ((2048 + 2048) + (2048 + 512) * 2 + (2048 + 2048) + (2048 + 8192) * 2 + (8192 + 2048));
    CHECK(layout.per_layer == want);
    CHECK(layout.per_layer * 16 == 11272192);  // PEFT's trainable-parameter count for this model
}

TEST_CASE("lora: PEFT init, and the adapter files round trip") {
    LlamaConfig c = preset_config("tiny");
    c.num_hidden_layers = 2;
    LoraConfig l;
    l.rank = 4, l.alpha = 16;
    parse_lora_targets("q_proj,down_proj", l, "x");
    LoraLayout layout = lora_layout(c, l);
    std::vector<std::vector<float>> layers(2, std::vector<float>(size_t(layout.per_layer)));
    uint64_t seed = uint64_t(time(nullptr));
    for (int i = 0; i < 2; ++i) lora_init_layer(l, layout, seed, i, layers[size_t(i)].data());
    float bound = 1.0f / std::sqrt(256.0f);
    double sum_sq = 0;
    for (int64_t k = 0; k < 4 * 256; ++k) {
        float a = layers[0][size_t(layout.a_offset[kQ] + k)];
        CHECK(std::fabs(a) <= bound);
        sum_sq += double(a) * a;
    }
    CHECK(std::sqrt(sum_sq / 1024) == doctest::Approx(bound / std::sqrt(3.0)).epsilon(0.1));  // uniform's std
    for (int64_t k = 0; k < int64_t(layout.out[kQ]) * 4; ++k) CHECK(layers[0][size_t(layout.b_offset[kQ] + k)] == 0.0f);
    Rng rng(seed);
    for (auto& layer : layers)
        for (float& x : layer) x = rng.uniform() - 0.5f;  // non-zero B too, for the round trip
    std::string dir = temp_dir("adapter_rt");
    save_peft_adapter(dir, c, l, layers, "my/base");
    Json cfg = read_json_file(dir + "/adapter_config.json");
    CHECK(cfg.find("r")->integer == 4);
    CHECK(cfg.find("lora_alpha")->number == 16.0);
    CHECK(cfg.find("peft_type")->string == "LORA");
    CHECK(cfg.find("base_model_name_or_path")->string == "my/base");
    SafetensorsReader files(dir + "/adapter_model.safetensors");
    CHECK(files.tensors().size() == 2 * 2 * 2);
    CHECK(files.find("base_model.model.model.layers.1.mlp.down_proj.lora_B.weight")->shape == std::vector<int64_t>{256, 4});
    LoraConfig back;
    std::vector<std::vector<float>> loaded;
    load_peft_adapter(dir, c, back, loaded);
    CHECK(back.rank == 4);
    CHECK(back.target[kDown]);
    CHECK_FALSE(back.target[kUp]);
    CHECK(loaded == layers);
}

TEST_CASE("lora: adapters PEFT makes that this trainer cannot honour are refused") {
    LlamaConfig c = preset_config("tiny");
    c.num_hidden_layers = 1;
    LoraConfig l;
    l.rank = 2, l.alpha = 4;
    parse_lora_targets("q", l, "x");
    LoraLayout layout = lora_layout(c, l);
    std::vector<std::vector<float>> layers(1, std::vector<float>(size_t(layout.per_layer), 0.5f));
    std::string dir = temp_dir("adapter_bad");
    save_peft_adapter(dir, c, l, layers, "base");
    std::string good = read_file(dir + "/adapter_config.json");
    auto with = [&](const std::string& from, const std::string& to) {
        std::string s = good;
        s.replace(s.find(from), from.size(), to);
        temp_file("adapter_bad/adapter_config.json", s);
    };
    LoraConfig out;
    std::vector<std::vector<float>> w;
    with("\"use_dora\": false", "\"use_dora\": true");
    CHECK_THROWS_WITH_AS(load_peft_adapter(dir, c, out, w), doctest::Contains("DoRA adapters are not supported"), Error);
    with("\"bias\": \"none\"", "\"bias\": \"all\"");
    CHECK_THROWS_WITH_AS(load_peft_adapter(dir, c, out, w), doctest::Contains("bias \"all\" is not supported"), Error);
    with("\"r\": 2", "\"r\": 3");  // the tensors are rank 2
    CHECK_THROWS_WITH_AS(load_peft_adapter(dir, c, out, w), doctest::Contains("has shape [2, 256], the config needs [3, 256]"), Error);
    with("\"target_modules\": [\"q_proj\"]", "\"target_modules\": [\"q_proj\", \"k_proj\"]");
    CHECK_THROWS_WITH_AS(load_peft_adapter(dir, c, out, w), doctest::Contains("missing tensor base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight"), Error);
    with("\"peft_type\": \"LORA\"", "\"peft_type\": \"IA3\"");
    CHECK_THROWS_WITH_AS(load_peft_adapter(dir, c, out, w), doctest::Contains("peft_type must be \"LORA\""), Error);
}

TEST_CASE("lora: merging adds s * B A to the adapted weight only, also past a Qwen3 layer's q_norm and k_norm") {
    for (bool qwen3 : {false, true}) {
        CAPTURE(qwen3);
        LlamaConfig c = preset_config("tiny");
        c.hidden_size = 8, c.intermediate_size = 12, c.num_attention_heads = 2, c.num_key_value_heads = 1, c.head_dim = 4;
        c.num_hidden_layers = 1, c.vocab_size = 16, c.qk_norm = qwen3;
        LoraConfig l;
        l.rank = 2, l.alpha = 6;
        parse_lora_targets("v,up", l, "x");
        LoraLayout layout = lora_layout(c, l);
        Rng rng(uint64_t(time(nullptr)));
        std::vector<float> adapters(size_t(layout.per_layer)), w(size_t(unit_layout(c, 1).numel));
        for (float& x : adapters) x = rng.uniform() - 0.5f;
        for (float& x : w) x = rng.uniform() - 0.5f;
        std::vector<float> merged = w;
        merge_lora_layer(c, l, adapters.data(), merged.data());
        // v_proj [4, 8] sits after norm (8), q (8*8), k (4*8); up_proj [12, 8] after o, (q_norm [4] and k_norm [4],
        // each from a multiple of 8,) the post norm and gate.
        int64_t v_at = 8 + 64 + 32, up_at = 8 + 64 + 32 + 32 + 64 + (qwen3 ? 16 : 0) + 8 + 96;
        CHECK(layer_tensor_offset(c, kUpProj) == up_at);
        size_t changed = 0;
        for (size_t i = 0; i < w.size(); ++i) changed += merged[i] != w[i];
        CHECK(changed == 4 * 8 + 12 * 8);
        for (int o = 0; o < 12; ++o)
            for (int i = 0; i < 8; ++i) {
                double d = 0;
                for (int k = 0; k < 2; ++k) d += double(adapters[size_t(layout.b_offset[kUp] + o * 2 + k)]) * adapters[size_t(layout.a_offset[kUp] + k * 8 + i)];
                CHECK(merged[size_t(up_at + o * 8 + i)] == doctest::Approx(w[size_t(up_at + o * 8 + i)] + 3.0 * d).epsilon(1e-5));
            }
        CHECK(merged[size_t(v_at)] != w[size_t(v_at)]);
    }
}

TEST_CASE("adamw: the CPU update by hand, and weight decay") {
    AdamWConfig c;
    ThreadPool one(1), seven(7);
    float p = 1.0f, g = 0.5f, m = 0, v = 0;
    adamw_step_cpu(&p, &g, &m, &v, nullptr, 1, c, 0.1f, 0.0f, 1, 1.0f, one);
    CHECK(p == doctest::Approx(0.9f).epsilon(1e-6));  // first step moves by lr * sign(g)
    CHECK(m == doctest::Approx(0.05f));
    CHECK(v == doctest::Approx(0.00025f));
    float q = 2.0f, zero = 0, m2 = 0, v2 = 0;
    adamw_step_cpu(&q, &zero, &m2, &v2, nullptr, 1, c, 0.1f, 0.5f, 1, 1.0f, one);
    CHECK(q == doctest::Approx(2.0f - 0.1f * 0.5f * 2.0f));  // decoupled decay only
    Rng rng(uint64_t(time(nullptr)));
    std::vector<float> a(1000), ga(1000), ma(1000, 0), va(1000, 0);
    for (size_t i = 0; i < a.size(); ++i) a[i] = rng.uniform(), ga[i] = rng.uniform() - 0.5f;
    std::vector<float> b = a, mb = ma, vb = va;
    adamw_step_cpu(a.data(), ga.data(), ma.data(), va.data(), nullptr, 1000, c, 1e-3f, 0.01f, 1, 0.5f, one);
    adamw_step_cpu(b.data(), ga.data(), mb.data(), vb.data(), nullptr, 1000, c, 1e-3f, 0.01f, 1, 0.5f, seven);
    CHECK(a == b);  // threads split the work, not the result
}

// The CPU optimizer writes its bf16 weights with float_to_bf16 (a few integer operations) instead of CUDA's
// host __float2bfloat16 (5x slower there): the same bits for every float, NaN and infinity included.
TEST_CASE("adamw: the CPU update's bf16 weights are CUDA's conversion, bit for bit") {
    Rng rng(uint64_t(time(nullptr)));  // fresh bit patterns each run
    std::vector<float> x = {0.0f, -0.0f, 1e-45f, -1e-45f, 1.17549435e-38f, 3.4028235e38f, -3.4028235e38f, 3.3961775e38f,
                            INFINITY, -INFINITY, NAN, -NAN, 1.0f + 0x1p-8f, 1.0f + 0x1p-8f + 0x1p-23f, 1.0f + 0x3p-8f};
    for (uint32_t payload : {0x7f800001u, 0xff800001u, 0x7fc00000u, 0x7fffffffu, 0xffbfffffu}) {
        float f;
        std::memcpy(&f, &payload, 4);
        x.push_back(f);  // NaNs, signalling and quiet, of both signs
    }
    for (int i = 0; i < 1 << 20; ++i) {  // fresh bit patterns: every exponent, every rounding case
        uint32_t u = uint32_t(rng.next());
        float f;
        std::memcpy(&f, &u, 4);
        x.push_back(f);
    }
    int64_t differ = 0;
    for (float f : x) {
        __nv_bfloat16 cuda = __float2bfloat16(f);
        uint16_t want;
        std::memcpy(&want, &cuda, 2);
        differ += float_to_bf16(f) != want;
    }
    CHECK(differ == 0);
    // the update itself: p16 is the new p, converted
    AdamWConfig c;
    ThreadPool three(3);
    size_t n = 4099;
    std::vector<float> p(n), g(n), m(n, 0.0f), v(n, 0.0f);
    for (size_t i = 0; i < n; ++i) p[i] = 4 * rng.uniform() - 2, g[i] = rng.uniform() - 0.5f;
    std::vector<__nv_bfloat16> p16(n, __float2bfloat16(12345.0f));  // poisoned
    adamw_step_cpu(p.data(), g.data(), m.data(), v.data(), p16.data(), int64_t(n), c, 1e-2f, 0.01f, 1, 1.0f, three);
    int64_t wrong = 0;
    for (size_t i = 0; i < n; ++i) {
        __nv_bfloat16 cuda = __float2bfloat16(p[i]);
        wrong += std::memcmp(&cuda, &p16[i], 2) != 0;
    }
    CHECK(wrong == 0);
}

TEST_CASE("adamw: learning-rate schedules") {
    Schedule s;
    s.lr = 1.0f, s.warmup_steps = 10, s.total_steps = 110;
    s.kind = "constant";
    CHECK(s.lr_at(0) == 1.0f);
    s.kind = "warmup";
    CHECK(s.lr_at(0) == doctest::Approx(0.1f));
    CHECK(s.lr_at(9) == doctest::Approx(1.0f));
    CHECK(s.lr_at(50) == 1.0f);
    s.kind = "warmup-linear";
    CHECK(s.lr_at(10) == doctest::Approx(1.0f));
    CHECK(s.lr_at(60) == doctest::Approx(0.5f));
    CHECK(s.lr_at(110) == doctest::Approx(0.0f));
    s.kind = "warmup-cosine";
    CHECK(s.lr_at(10) == doctest::Approx(1.0f));
    CHECK(s.lr_at(60) == doctest::Approx(0.5f).epsilon(1e-3));
    CHECK(s.lr_at(110) == doctest::Approx(s.min_ratio));
    s.kind = "cyclic";
    CHECK_THROWS_WITH_AS(check_schedule(s, "--lr-schedule"), doctest::Contains("--lr-schedule: unknown schedule \"cyclic\""), Error);
}
