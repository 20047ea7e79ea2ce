// test/test_llama.cpp — model configuration (HF config.json, presets), parameter names and shapes (and the
// profiler's FLOPs that derive from them), and safetensors files: round trips, sharded models, and each
// broken file.
#include "test.h"

#include <cmath>
#include <fstream>

#include "data.h"
#include "llama.h"
#include "support/safetensors.h"

TEST_CASE("llama: presets and config.json round trip") {
    LlamaConfig c = preset_config("llama-3.2-1b");
    CHECK(c.num_parameters() == 1235814400LL);  // Llama-3.2-1B's published count
    LlamaConfig tiny = preset_config("tiny");
    CHECK(tiny.num_parameters() > 20000000LL);
    CHECK(tiny.num_parameters() < 60000000LL);
    LlamaConfig back = load_config(temp_file("config.json", config_json(c)));
    CHECK(back.hidden_size == 2048);
    CHECK(back.intermediate_size == 8192);
    CHECK(back.num_hidden_layers == 16);
    CHECK(back.num_attention_heads == 32);
    CHECK(back.num_key_value_heads == 8);
    CHECK(back.head_dim == 64);
    CHECK(back.vocab_size == 128256);
    CHECK(back.tie_word_embeddings);
    CHECK(back.rope_llama3);
    CHECK(back.rope_factor == 32.0f);
    CHECK(back.rope_theta == 500000.0f);
    CHECK(back.eos_token_ids == std::vector<int>{128001, 128008, 128009});
    CHECK(back.num_parameters() == c.num_parameters());
    CHECK_THROWS_WITH_AS(preset_config("huge"), doctest::Contains("unknown preset \"huge\""), Error);
    // Llama-2's shapes (meta-llama/Llama-2-7b-hf, -13b-hf): their published counts, untied, MHA
    LlamaConfig l7 = preset_config("llama-2-7b"), l13 = preset_config("llama-2-13b");
    CHECK(l7.num_parameters() == 6738415616LL);
    CHECK(l13.num_parameters() == 13015864320LL);
    CHECK_FALSE(l7.tie_word_embeddings);
    CHECK(l13.num_key_value_heads == l13.num_attention_heads);
    CHECK(load_config(temp_file("config.json", config_json(l13))).num_parameters() == l13.num_parameters());
}

TEST_CASE("llama: transformers 5 rope_parameters and defaults") {
    LlamaConfig c = load_config(temp_file("config5.json", R"({"model_type": "llama", "hidden_size": 64,
        "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 300,
        "rope_parameters": {"rope_type": "llama3", "rope_theta": 1000.0, "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 64}, "eos_token_id": 5})"));
    CHECK(c.num_key_value_heads == 4);
    CHECK(c.head_dim == 16);
    CHECK(c.rope_theta == 1000.0f);
    CHECK(c.rope_llama3);
    CHECK(c.rope_original_max_position == 64);
    CHECK(c.eos_token_ids == std::vector<int>{5});
    CHECK(c.bos_token_id == 1);  // absent: HF's LlamaConfig default
    LlamaConfig bare = load_config(temp_file("config5_ids.json", R"({"model_type": "llama", "hidden_size": 64,
        "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 300})"));
    CHECK(bare.bos_token_id == 1);  // a Llama-2-family config without its ids reads as HF reads it
    CHECK(bare.eos_token_ids == std::vector<int>{2});
    CHECK_FALSE(c.tie_word_embeddings);
    std::vector<TensorSpec> specs = parameter_specs(c);
    CHECK(specs.back().name == "lm_head.weight");
    CHECK(specs[2].name == "model.layers.0.self_attn.q_proj.weight");
    CHECK(specs[2].shape == std::vector<int64_t>{64, 64});
}

TEST_CASE("llama: a Qwen3 config.json (transformers 5): q_norm and k_norm in the layer table, head_dim apart from hidden / heads") {
    std::string qwen3 = R"({"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_size": 1024,
        "intermediate_size": 3072, "num_hidden_layers": 28, "num_attention_heads": 16, "num_key_value_heads": 8,
        "head_dim": 128, "vocab_size": 151936, "max_position_embeddings": 40960, "rms_norm_eps": 1e-06,
        "rope_parameters": {"rope_theta": 1000000.0, "rope_type": "default"}, "tie_word_embeddings": true,
        "attention_bias": false, "hidden_act": "silu", "use_sliding_window": false, "sliding_window": null,
        "max_window_layers": 28, "layer_types": ["full_attention", "full_attention"], "bos_token_id": 151643,
        "eos_token_id": 151645, "dtype": "bfloat16"})";
    LlamaConfig c = load_config(temp_file("qwen3_config.json", qwen3));
    CHECK(c.model_type == "qwen3");
    CHECK(c.qk_norm);
    CHECK(c.head_dim == 128);  // 16 heads of 128 over a hidden size of 1024
    CHECK(c.rope_theta == 1000000.0f);
    CHECK_FALSE(c.rope_llama3);
    CHECK(c.rms_norm_eps == 1e-6f);
    CHECK(c.tie_word_embeddings);
    CHECK(c.num_parameters() == 596049920LL);  // Qwen3-0.6B: 0.6B, 0.44B without the embedding
    CHECK(c.num_parameters() == preset_config("qwen3-0.6b").num_parameters());
    // the layer: Llama's nine tensors and the two norms after o_proj, in HF's order
    std::vector<LayerTensor> rows = layer_tensors(c);
    REQUIRE(rows.size() == 11u);
    UnitLayout layer = unit_layout(c, 3);
    CHECK(layer.tensors[5].spec.name == "model.layers.2.self_attn.q_norm.weight");
    CHECK(layer.tensors[6].spec.name == "model.layers.2.self_attn.k_norm.weight");
    CHECK(layer.tensors[5].spec.shape == std::vector<int64_t>{128});
    CHECK(layer.tensors[1].spec.shape == std::vector<int64_t>{2048, 1024});  // q_proj: [heads * head_dim, hidden]
    CHECK(layer.tensors[4].spec.shape == std::vector<int64_t>{1024, 2048});  // o_proj
    for (size_t k = 0; k < rows.size(); ++k) {
        CAPTURE(k);
        CHECK(layer_tensor_offset(c, rows[k]) == layer.tensors[k].offset);
        CHECK(layer.tensors[k].spec.name == "model.layers.2." + std::string(layer_tensor_name(rows[k])));
    }
    // a head_dim left out is Qwen3's 128, not hidden / heads as for Llama
    std::string no_head_dim = qwen3;
    no_head_dim.replace(no_head_dim.find("\"head_dim\": 128,"), 16, "");
    CHECK(load_config(temp_file("qwen3_no_head_dim.json", no_head_dim)).head_dim == 128);
    // a sliding window that no layer uses (all layers below max_window_layers, or layer_types all full) is fine
    std::string unused = R"({"model_type": "qwen3", "hidden_size": 8, "intermediate_size": 8, "num_hidden_layers": 2,
        "num_attention_heads": 2, "vocab_size": 9, "use_sliding_window": true, "sliding_window": 64)";
    CHECK(load_config(temp_file("qwen3_window.json", unused + ", \"max_window_layers\": 2}")).num_hidden_layers == 2);
    CHECK(load_config(temp_file("qwen3_window.json", unused + ", \"layer_types\": [\"full_attention\", \"full_attention\"]}")).qk_norm);
    // the export's config.json: what transformers builds a Qwen3ForCausalLM from; read back the same
    std::string exported = config_json(c);
    CHECK(exported.find("\"architectures\": [\"Qwen3ForCausalLM\"]") != std::string::npos);
    CHECK(exported.find("\"model_type\": \"qwen3\"") != std::string::npos);
    CHECK(exported.find("\"use_sliding_window\": false") != std::string::npos);
    CHECK(exported.find("mlp_bias") == std::string::npos);
    LlamaConfig back = load_config(temp_file("qwen3_back.json", exported));
    CHECK(back.qk_norm);
    CHECK(back.head_dim == 128);
    CHECK(back.rope_theta == 1000000.0f);
    CHECK(back.eos_token_ids == std::vector<int>{151645});
    CHECK(config_json(back) == exported);
    CHECK(config_json(preset_config("tiny")).find("\"architectures\": [\"LlamaForCausalLM\"]") != std::string::npos);
}

TEST_CASE("llama: units list every parameter once, in HF order, each tensor on 16 bytes") {
    for (bool tied : {true, false}) {
        LlamaConfig c = preset_config("tiny");
        c.tie_word_embeddings = tied;
        c.hidden_size = 36, c.intermediate_size = 70, c.num_attention_heads = 3, c.num_key_value_heads = 1, c.head_dim = 6;  // odd sizes
        std::vector<TensorSpec> specs = parameter_specs(c);
        size_t i = 0;
        for (int u = 0; u < num_units(c); ++u) {
            UnitLayout layout = unit_layout(c, u);
            int64_t end = 0;
            for (const UnitTensor& t : layout.tensors) {
                REQUIRE(i < specs.size());
                CHECK(t.spec.name == specs[i].name);
                CHECK(t.offset % kAlign == 0);
                CHECK(t.offset >= end);  // no overlap
                end = t.offset + t.spec.numel();
                ++i;
            }
            CHECK(layout.numel == end);
        }
        CHECK(i == specs.size());
        UnitLayout layer = unit_layout(c, 1);
        REQUIRE(layer.tensors.size() == 9u);  // a Llama layer: no q_norm, k_norm
        CHECK(layer_tensors(c).size() == 9u);
        CHECK(layer.tensors[1].spec.name == "model.layers.0.self_attn.q_proj.weight");
        CHECK(layer.tensors[1].spec.shape == std::vector<int64_t>{18, 36});
        CHECK(layer.tensors[8].spec.shape == std::vector<int64_t>{36, 70});
        CHECK(layer_tensor_offset(c, kKProj) == align_up(36 + 18 * 36));
        CHECK(layer_tensor_offset(c, kQNorm) == -1);
        CHECK(unit_layout(c, c.num_hidden_layers + 1).tensors.size() == (tied ? 1u : 2u));
    }
}

TEST_CASE("llama: llama3 RoPE frequencies keep short, slow long, blend between") {
    LlamaConfig c = preset_config("llama-3.2-1b");
    std::vector<float> inv = rope_inv_freq(c);
    REQUIRE(inv.size() == 32);
    for (int i = 0; i < 32; ++i) {
        float base = 1.0f / std::pow(500000.0f, float(2 * i) / 64.0f);
        float wavelen = 2 * float(M_PI) / base;
        CAPTURE(i);
        if (wavelen < 8192.0f / 4) CHECK(inv[size_t(i)] == base);
        else if (wavelen > 8192.0f) CHECK(inv[size_t(i)] == doctest::Approx(base / 32).epsilon(1e-6));
        else CHECK((inv[size_t(i)] < base && inv[size_t(i)] > base / 32));
    }
    c.rope_llama3 = false;
    CHECK(rope_inv_freq(c)[31] == 1.0f / std::pow(500000.0f, 62.0f / 64.0f));
}

TEST_CASE("llama: the profiler's projection and adapter FLOPs follow the layer table (Llama-3.2-1B)") {
    LlamaConfig c = preset_config("llama-3.2-1b");
    double n = 1000, L = 16;
    double linear = 2 * 2048.0 * 2048 + 2 * 512.0 * 2048 + 3 * 8192.0 * 2048;  // q, o; k, v; gate, up, down: out * in
    double in_out = 7 * 2048.0 + 2 * 2048 + 2 * 512 + 3 * 8192;                 // out + in over the 7 projections
    std::vector<FamilyWork> full = step_work(c, 1000, 100, 0, 7, 0, false), lora = step_work(c, 1000, 100, 16, 7, 0, true);
    CHECK(full[size_t(Family::base_gemm)].flops == L * 2 * n * linear * 3);  // forward, dx, dW
    CHECK(lora[size_t(Family::base_gemm)].flops == L * 2 * n * linear * 3);  // forward twice (recompute), dx
    CHECK(lora[size_t(Family::lora)].flops == L * 2 * n * 16 * in_out * 4);  // 2 forwards, backward twice a forward
}

TEST_CASE("llama: config errors name the file and field") {
    const struct { const char* json; const char* message; } cases[] = {
        {R"({"model_type": "mistral", "hidden_size": 8})", "model_type must be one of \"llama\", \"qwen3\", not \"mistral\""},
        {R"({"hidden_size": 8})", "model_type must be one of \"llama\", \"qwen3\""},
        {R"({"model_type": "llama", "intermediate_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2, "vocab_size": 9})",
         "missing field \"hidden_size\""},
        {R"({"model_type": "llama", "hidden_size": -8, "intermediate_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2, "vocab_size": 9})",
         "field \"hidden_size\" must be a positive whole number"},
        {R"({"model_type": "llama", "hidden_size": 8, "intermediate_size": 8, "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 3, "vocab_size": 9})",
         "must be a multiple of num_key_value_heads"},
        {R"({"model_type": "llama", "hidden_size": 8, "intermediate_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2, "vocab_size": 9, "rope_scaling": {"rope_type": "yarn", "factor": 4}})",
         "rope type \"yarn\" is not supported"},
        {R"({"model_type": "llama", "hidden_size": 8, "intermediate_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2, "vocab_size": 9, "attention_bias": true})",
         "attention_bias is true"},
        {R"({"model_type": "llama", "hidden_size": 8, "intermediate_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2, "vocab_size": 9, "hidden_act": "gelu"})",
         "hidden_act must be \"silu\""},
        {R"({"model_type": "qwen3", "hidden_size": 8, "intermediate_size": 8, "num_hidden_layers": 2, "num_attention_heads": 2, "head_dim": 4, "vocab_size": 9, "attention_bias": true})",
         "attention_bias is true; layers with biases are not supported"},
        {R"({"model_type": "qwen3", "hidden_size": 8, "intermediate_size": 8, "num_hidden_layers": 2, "num_attention_heads": 2, "head_dim": 4, "vocab_size": 9, "use_sliding_window": true, "sliding_window": 64, "max_window_layers": 1})",
         "use_sliding_window is true; sliding-window attention is not supported"},
        {R"({"model_type": "qwen3", "hidden_size": 8, "intermediate_size": 8, "num_hidden_layers": 2, "num_attention_heads": 2, "head_dim": 4, "vocab_size": 9, "layer_types": ["full_attention", "sliding_attention"]})",
         "layer_types must all be \"full_attention\""},
    };
    for (const auto& c : cases) {
        CAPTURE(c.json);
        std::string path = temp_file("bad_config.json", c.json);
        CHECK_THROWS_WITH_AS(load_config(path), doctest::Contains(c.message), Error);
        CHECK_THROWS_WITH_AS(load_config(path), doctest::Contains("bad_config.json"), Error);
    }
    CHECK_THROWS_WITH_AS(load_config("/nonexistent/config.json"), doctest::Contains("cannot read /nonexistent/config.json"), Error);
}

TEST_CASE("safetensors: write and read back bf16 and fp32, one file and shards") {
    Rng rng(uint64_t(time(nullptr)));
    std::vector<float> a(6 * 5), b(7);
    for (float& x : a) x = rng.uniform() * 4 - 2;
    for (float& x : b) x = rng.uniform() * 100 - 50;
    std::vector<uint16_t> a16(a.size());
    for (size_t i = 0; i < a.size(); ++i) a16[i] = float_to_bf16(a[i]);
    std::string dir = temp_dir("model_one");
    write_safetensors(dir + "/model.safetensors", {{"w.a", "BF16", {6, 5}, a16.data()}, {"w.b", "F32", {7}, b.data()}},
                      {{"format", "pt"}});
    SafetensorsReader r(dir);
    CHECK(r.tensors().size() == 2);
    std::vector<float> ra = r.read_float("w.a", {6, 5}), rb = r.read_float("w.b", {7});
    for (size_t i = 0; i < a.size(); ++i) CHECK(ra[i] == bf16_to_float(a16[i]));
    CHECK(rb == b);
    CHECK_THROWS_WITH_AS(r.read_float("w.a", {5, 6}), doctest::Contains("tensor w.a has shape [6, 5], the config needs [5, 6]"), Error);
    CHECK_THROWS_WITH_AS(r.read_float("w.c", {1}), doctest::Contains("missing tensor w.c"), Error);

    // fp16 on disk: IEEE half, subnormals included
    std::vector<uint16_t> h16 = {0x3C00, 0xC000, 0x0001, 0x7BFF, 0x0000, 0x3555};  // 1, -2, 2^-24, 65504, 0, ~1/3
    write_safetensors(dir + "/half.safetensors", {{"h", "F16", {6}, h16.data()}});
    std::vector<float> halves = SafetensorsReader(dir + "/half.safetensors").read_float("h", {6});
    CHECK(halves[0] == 1.0f);
    CHECK(halves[1] == -2.0f);
    CHECK(halves[2] == std::ldexp(1.0f, -24));
    CHECK(halves[3] == 65504.0f);
    CHECK(halves[4] == 0.0f);
    CHECK(halves[5] == doctest::Approx(1.0 / 3).epsilon(1e-3));

    std::string shards = temp_dir("model_sharded");
    write_safetensors(shards + "/part-1.safetensors", {{"w.a", "BF16", {6, 5}, a16.data()}});
    write_safetensors(shards + "/part-2.safetensors", {{"w.b", "F32", {7}, b.data()}});
    temp_file("model_sharded/model.safetensors.index.json",
              R"({"metadata": {}, "weight_map": {"w.a": "part-1.safetensors", "w.b": "part-2.safetensors"}})");
    SafetensorsReader s(shards);
    CHECK(s.read_float("w.b", {7}) == b);
    CHECK(s.find("w.a")->file == shards + "/part-1.safetensors");
}

TEST_CASE("safetensors: broken files are refused with the file and tensor named") {
    std::vector<float> x(16, 1.0f);
    std::string dir = temp_dir("model_broken");
    std::string good = dir + "/good.safetensors";
    write_safetensors(good, {{"t", "F32", {16}, x.data()}});
    std::string bytes = read_file(good);
    temp_file("model_broken/truncated.safetensors", bytes.substr(0, bytes.size() - 4));
    CHECK_THROWS_WITH_AS(SafetensorsReader(dir + "/truncated.safetensors"), doctest::Contains("ends at byte 64 of the tensor data, beyond the file's 60 bytes"), Error);
    temp_file("model_broken/short.safetensors", "abc");
    CHECK_THROWS_WITH_AS(SafetensorsReader(dir + "/short.safetensors"), doctest::Contains("not a safetensors file"), Error);
    std::string garbage = bytes;
    garbage[8] = '[';
    temp_file("model_broken/garbage.safetensors", garbage);
    CHECK_THROWS_WITH_AS(SafetensorsReader(dir + "/garbage.safetensors"), doctest::Contains("garbage.safetensors (header)"), Error);
    std::string empty = temp_dir("model_empty");
    CHECK_THROWS_WITH_AS(SafetensorsReader{empty}, doctest::Contains("no model.safetensors or model.safetensors.index.json in"), Error);
    std::string idx = temp_dir("model_bad_index");
    temp_file("model_bad_index/model.safetensors.index.json", R"({"weight_map": {"t": "missing.safetensors"}})");
    CHECK_THROWS_WITH_AS(SafetensorsReader{idx}, doctest::Contains("missing.safetensors"), Error);
}
