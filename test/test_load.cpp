// test/test_load.cpp — loading weights (distributed/load.h). CPU: the reads a rank plans are the bytes of
// its shard, every tensor's bytes read once over all ranks, cut where the destinations change, and read on
// the host they give read_float's values in the unit's places; the host conversions from BF16 and F16 by
// hand; missing, misshapen and unsupported tensors refused naming file and tensor. GPU: the conversion
// kernel equals the host's on every bf16 and f16 bit pattern and on random floats; load_weights over chunks
// gives the host reference's bf16 and fp32 bits on the GPU and in host memory; the store loads a directory
// of mixed dtypes across two files to the same bits at every stage, with offload and for inference.
#include "gpu.h"

#include <cstdio>
#include <ctime>
#include <map>

#include "distributed/load.h"
#include "lora.h"
#include "kernels/ops.h"
#include "support/json.h"

namespace {

uint64_t fresh_seed() { return uint64_t(time(nullptr)) * 2654435761ull; }

// A small Llama with odd sizes: units of a few thousand elements, shards that cut through tensors.
LlamaConfig small_config() {
    LlamaConfig c;
    c.name = "small";
    c.hidden_size = 24, c.intermediate_size = 40, c.num_hidden_layers = 2;
    c.num_attention_heads = 3, c.num_key_value_heads = 1, c.head_dim = 8;
    c.vocab_size = 37, c.max_position_embeddings = 64, c.tie_word_embeddings = false;
    return c;
}

// small_config in LoRA training's layout: r = 3 on q, v and gate (8 columns each: q, v's rows carry 16, gate's 8).
LlamaConfig padded_config() {
    LoraConfig lora;
    lora.rank = 3;
    parse_lora_targets("q,v,gate", lora, "test");
    LlamaConfig c = with_lora_slots(small_config(), lora);
    REQUIRE(c.row_pad[kQProj] == 16);
    REQUIRE(c.row_pad[kKProj] == 0);
    REQUIRE(c.row_pad[kGateProj] == 8);
    REQUIRE(c.row_pad[kOProj] == 0);
    REQUIRE(unit_layout(c, 1).numel > unit_layout(small_config(), 1).numel);
    return c;
}

// Finite f16 bits: normal numbers of moderate size and some subnormals, either sign.
uint16_t random_half(Rng& rng) {
    uint16_t sign = rng.uniform() < 0.5f ? 0x8000 : 0, mant = uint16_t(rng.next() & 0x3FF);
    uint16_t exp = rng.uniform() < 0.1f ? 0 : uint16_t(5 + rng.next() % 20);
    return uint16_t(sign | exp << 10 | mant);
}

// Raw bytes of a tensor of n elements stored as `dtype`, random.
std::vector<char> random_bytes(const std::string& dtype, size_t n, Rng& rng) {
    std::vector<char> raw(n * element_bytes(dtype));
    for (size_t i = 0; i < n; ++i) {
        float f = (2 * rng.uniform() - 1) * 0.5f;
        if (dtype == "F32") std::memcpy(raw.data() + 4 * i, &f, 4);
        else {
            uint16_t h = dtype == "BF16" ? float_to_bf16(f) : random_half(rng);
            std::memcpy(raw.data() + 2 * i, &h, 2);
        }
    }
    return raw;
}

// A model directory: every parameter of `c`, its dtype cycling BF16, F16, F32 tensor by tensor, the
// tensors alternating between two files listed in model.safetensors.index.json. `drop`: a tensor left out;
// `odd`: a tensor written with dtype I32.
std::string write_model(const std::string& name, const LlamaConfig& c, Rng& rng, const std::string& drop = "", const std::string& odd = "") {
    std::string dir = temp_dir(name);
    const char* dtypes[3] = {"BF16", "F16", "F32"};
    std::vector<TensorSpec> specs = parameter_specs(c);
    std::vector<std::vector<char>> data(specs.size());
    std::vector<TensorToWrite> files[2];
    std::string map;
    for (size_t i = 0; i < specs.size(); ++i) {
        if (specs[i].name == drop) continue;
        std::string dtype = specs[i].name == odd ? "I32" : dtypes[i % 3];
        data[i] = specs[i].name == odd ? std::vector<char>(size_t(specs[i].numel()) * 4, 0) : random_bytes(dtype, size_t(specs[i].numel()), rng);
        files[i % 2].push_back({specs[i].name, dtype, specs[i].shape, data[i].data()});
        map += std::string(map.empty() ? "" : ", ") + json_quote(specs[i].name) + ": \"part-" + std::to_string(i % 2) + ".safetensors\"";
    }
    for (int f = 0; f < 2; ++f) write_safetensors(dir + "/part-" + std::to_string(f) + ".safetensors", files[f]);
    write_atomically(dir + "/model.safetensors.index.json", "{\"metadata\": {}, \"weight_map\": {" + map + "}}\n");
    return dir;
}

}  // namespace

TEST_CASE("load: each rank reads the bytes of its shard; all ranks read every tensor once, in its own dtype") {
    uint64_t seed = fresh_seed();
    CAPTURE(seed);
    Rng rng(seed);
    std::string dir = write_model("load_plan", small_config(), rng);
    SafetensorsReader files(dir);
    for (int N = 1; N <= 5; ++N)
    for (bool padded : {false, true}) {  // padded: LoRA training's layout (rows of q, v, gate with room for s B)
        LlamaConfig c = padded ? padded_config() : small_config();
        CAPTURE(N);
        CAPTURE(padded);
        for (int u = 0; u < num_units(c); ++u) {
            CAPTURE(u);
            UnitLayout layout = unit_layout(c, u);
            Shard shard = make_shard(layout.numel, N);
            std::map<std::string, std::vector<int>> reads_of;  // how often each element of each tensor is read
            for (const UnitTensor& t : layout.tensors) reads_of[t.spec.name].assign(size_t(t.spec.numel()), 0);
            double total = 0;
            for (int r = 0; r < N; ++r) {
                int64_t lo = shard.begin(r), hi = lo + shard.owned(r);
                for (const FileRead& read : plan_unit_reads(c, files, u, lo, hi)) {
                    const SafeTensor& t = *read.tensor;
                    const UnitTensor* owner = nullptr;
                    for (const UnitTensor& ut : layout.tensors)
                        if (ut.spec.name == t.name) owner = &ut;
                    REQUIRE(owner);
                    CHECK(read.count > 0);
                    for (int64_t k : {int64_t(0), read.count / 2, read.count - 1}) {
                        CHECK(read.at + read.place(k) == owner->at(read.first + k));  // the element of the unit it fills
                        CHECK(read.at + read.place(k) >= lo);                          // inside this rank's shard
                        CHECK(read.at + read.place(k) < hi);
                    }
                    CHECK(read.pad == owner->pad);
                    CHECK(read.offset() == t.offset + uint64_t(read.first) * element_bytes(t.dtype));  // its own dtype's bytes
                    CHECK(read.bytes() == uint64_t(read.count) * element_bytes(t.dtype));
                    CHECK(read.offset() + read.bytes() <= t.offset + t.bytes);
                    for (int64_t i = read.first; i < read.first + read.count; ++i) reads_of[t.name][size_t(i)]++;
                    total += double(read.bytes());
                }
            }
            double bytes = 0;
            for (const UnitTensor& t : layout.tensors) {
                const std::vector<int>& n = reads_of[t.spec.name];
                CHECK(std::all_of(n.begin(), n.end(), [](int k) { return k == 1; }));
                bytes += double(files.find(t.spec.name)->bytes);
            }
            CHECK(total == bytes);  // the ranks together read each byte once
        }
    }
}

TEST_CASE("load: a rank's reads, run on the host, put read_float's values in their places; cuts split reads") {
    uint64_t seed = fresh_seed();
    CAPTURE(seed);
    Rng rng(seed);
    SafetensorsReader files(write_model("load_host", small_config(), rng));
    for (bool padded : {false, true})
    for (int u = 0; u < num_units(small_config()); ++u) {
        LlamaConfig c = padded ? padded_config() : small_config();
        CAPTURE(padded);
        UnitLayout layout = unit_layout(c, u);
        Shard shard = make_shard(layout.numel, 3);
        int64_t lo = shard.begin(1), hi = lo + shard.owned(1);
        std::vector<int64_t> cuts = {lo + 5, hi - 3};
        std::vector<float> part(size_t(hi - lo), NAN);  // the gaps between tensors stay NaN
        for (const FileRead& read : plan_unit_reads(c, files, u, lo, hi, cuts)) {
            for (int64_t x : cuts) CHECK_FALSE((read.at < x && x <= read.at + read.place(read.count - 1)));  // never across a cut
            std::vector<char> raw(read.bytes());
            read_tensor_bytes(*read.tensor, uint64_t(read.first) * element_bytes(read.tensor->dtype), read.bytes(), raw.data());
            std::vector<float> values(size_t(read.count));
            to_float(raw.data(), read.tensor->dtype, values.data(), values.size());
            for (int64_t k = 0; k < read.count; ++k) part[size_t(read.at - lo + read.place(k))] = values[size_t(k)];
        }
        for (int64_t i = lo; i < hi; ++i) {
            const UnitTensor* owner = nullptr;  // the tensor whose element sits at i (none in gaps and row pads)
            for (const UnitTensor& t : layout.tensors)
                if (i >= t.offset && i < t.offset + t.span() && (i - t.offset) % (t.cols() + t.pad) < t.cols()) owner = &t;
            float got = part[size_t(i - lo)];
            if (!owner) {
                CHECK(std::isnan(got));
                continue;
            }
            int64_t e = (i - owner->offset) / (owner->cols() + owner->pad) * owner->cols() + (i - owner->offset) % (owner->cols() + owner->pad);
            CHECK(owner->at(e) == i);
            float want = files.read_float(owner->spec.name, owner->spec.shape)[size_t(e)];
            CHECK(std::memcmp(&got, &want, 4) == 0);
        }
    }
}

TEST_CASE("load: stored values to fp32 and bf16 on the host, by hand") {
    // f16: one, the smallest subnormal, the largest subnormal, the largest finite, -inf, -0
    uint16_t halves[6] = {0x3C00, 0x0001, 0x03FF, 0x7BFF, 0xFC00, 0x8000};
    float want[6] = {1.0f, std::ldexp(1.0f, -24), 1023 * std::ldexp(1.0f, -24), 65504.0f, -INFINITY, -0.0f};
    float got[6];
    to_float(halves, "F16", got, 6);
    for (int i = 0; i < 6; ++i) CHECK(std::memcmp(&got[i], &want[i], 4) == 0);
    // f16 to bf16 rounds to nearest, ties to even: 1 + 2^-8 -> 1, 1 + 3 2^-8 -> 1 + 2^-6, 1 + 2^-10 -> 1
    uint16_t ties[3] = {0x3C04, 0x3C0C, 0x3C01};
    uint16_t rounded[3] = {0x3F80, 0x3F82, 0x3F80};
    to_float(ties, "F16", got, 3);
    for (int i = 0; i < 3; ++i) CHECK(float_to_bf16(got[i]) == rounded[i]);
    uint16_t bf[2] = {0x3F80, 0xC2F7};
    to_float(bf, "BF16", got, 2);
    CHECK(got[0] == 1.0f);
    CHECK(got[1] == -123.5f);
    float f32[2] = {0.1f, -3e38f};
    to_float(f32, "F32", got, 2);
    CHECK(std::memcmp(got, f32, 8) == 0);
}

TEST_CASE("load: a missing tensor, another shape or an unsupported dtype is refused naming file and tensor") {
    Rng rng(fresh_seed());
    LlamaConfig c = small_config();
    std::string missing = write_model("load_missing", c, rng, "model.layers.1.mlp.up_proj.weight");
    CHECK_THROWS_WITH_AS(plan_unit_reads(c, SafetensorsReader(missing), 2, 0, unit_layout(c, 2).numel),
                         doctest::Contains("missing tensor model.layers.1.mlp.up_proj.weight"), Error);
    std::string odd = write_model("load_odd", c, rng, "", "model.layers.0.self_attn.k_proj.weight");
    CHECK_THROWS_WITH_AS(plan_unit_reads(c, SafetensorsReader(odd), 1, 0, unit_layout(c, 1).numel),
                         doctest::Contains("tensor model.layers.0.self_attn.k_proj.weight has dtype I32 (supported: BF16, F16, F32)"), Error);
    LlamaConfig wider = c;
    wider.intermediate_size = 48;
    CHECK_THROWS_WITH_AS(plan_unit_reads(wider, SafetensorsReader(missing), 1, 0, unit_layout(wider, 1).numel),
                         doctest::Contains("has shape [40, 24], the config needs [48, 24]"), Error);
    // a range inside one tensor needs only that tensor
    CHECK(plan_unit_reads(c, SafetensorsReader(missing), 1, 30, 40).size() == 1);
}

// ------------------------------------------------------------------------------------------------ GPU

TEST_CASE("gpu: the conversion kernel gives the host's bits for every bf16 and f16 value and for random floats") {
    if (!need_gpu()) return;
    std::vector<uint16_t> all(65536);
    for (size_t i = 0; i < all.size(); ++i) all[i] = uint16_t(i);
    Rng rng(fresh_seed());
    std::vector<float> floats(100000);
    for (float& f : floats) {
        uint32_t bits = uint32_t(rng.next());
        std::memcpy(&f, &bits, 4);
        if (std::isnan(f)) f = 1.0f;
    }
    for (int i = 0; i < 1000; ++i) floats[size_t(i)] = 1.0f + float(i) * std::ldexp(1.0f, -8);  // ties at bf16 precision
    DeviceFree keep;
    struct Case { const char* dtype; WeightType type; const void* host; size_t n; };
    for (Case k : {Case{"BF16", WeightType::bf16, all.data(), all.size()}, Case{"F16", WeightType::f16, all.data(), all.size()},
                   Case{"F32", WeightType::f32, floats.data(), floats.size()}}) {
        CAPTURE(k.dtype);
        size_t es = element_bytes(k.dtype);
        void* x = keep(device_alloc<char>(k.n * es, "test"));
        check_cuda(cudaMemcpy(x, k.host, k.n * es, cudaMemcpyHostToDevice), "to device");
        bf16* y16 = keep(poisoned<bf16>(k.n));
        float* y32 = keep(poisoned<float>(k.n));
        convert_weights(x, k.type, y16, y32, int64_t(k.n), nullptr);
        std::vector<float> want(k.n);
        to_float(k.host, k.dtype, want.data(), k.n);
        std::vector<float> got32 = from_device(y32, k.n);
        std::vector<uint16_t> got16(k.n);
        check_cuda(cudaMemcpy(got16.data(), y16, k.n * 2, cudaMemcpyDeviceToHost), "from device");
        size_t bad32 = 0, bad16 = 0;
        for (size_t i = 0; i < k.n; ++i) {
            if (std::isnan(want[i])) continue;  // NaN stays NaN; its payload is not kept
            bad32 += std::memcmp(&got32[i], &want[i], 4) != 0;
            bad16 += got16[i] != float_to_bf16(want[i]);
        }
        CHECK(bad32 == 0);
        CHECK(bad16 == 0);
    }
}

TEST_CASE("gpu: load_weights over several chunks and threads gives the host's bits, on the GPU and in host memory") {
    if (!need_gpu()) return;
    uint64_t seed = fresh_seed();
    CAPTURE(seed);
    Rng rng(seed);
    std::string dir = temp_dir("load_chunks");
    const int64_t n16 = 9000001, n32 = 5000003;  // 18 MB of bf16 and f16, 20 MB of f32: several 16 MiB chunks
    std::vector<char> a = random_bytes("BF16", size_t(n16), rng), b = random_bytes("F16", size_t(n16), rng), f = random_bytes("F32", size_t(n32), rng);
    write_safetensors(dir + "/model.safetensors", {{"a", "BF16", {n16}, a.data()}, {"b", "F16", {n16}, b.data()}, {"f", "F32", {n32}, f.data()}});
    SafetensorsReader files(dir);
    DeviceFree keep;
    std::vector<WeightCopy> copies;
    std::vector<std::vector<float>> host32;
    host32.reserve(3);  // the copies point into these
    for (const char* name : {"a", "b", "f"}) {
        const SafeTensor* t = files.find(name);
        int64_t n = t->shape[0], first = 3, count = n - 7;  // a window not aligned to anything
        for (bool host : {false, true}) {
            WeightCopy w{{t, first, count, 0}};
            w.to16 = keep(poisoned<bf16>(size_t(count)));
            if (host) host32.emplace_back(size_t(count), NAN), w.to32 = host32.back().data(), w.to32_host = true;
            else w.to32 = keep(poisoned<float>(size_t(count)));
            copies.push_back(w);
        }
    }
    LoadReport r = load_weights(copies, test_world().gpu, 4);
    double want_bytes = 0;
    for (const WeightCopy& w : copies) want_bytes += double(w.read.bytes());
    CHECK(r.bytes == want_bytes);
    for (const WeightCopy& w : copies) {
        CAPTURE(w.read.tensor->name);
        CAPTURE(w.to32_host);
        size_t n = size_t(w.read.count);
        std::vector<float> all = files.read_float(w.read.tensor->name, w.read.tensor->shape);
        std::vector<float> want(all.begin() + w.read.first, all.begin() + w.read.first + w.read.count);
        std::vector<float> got32 = w.to32_host ? std::vector<float>(w.to32, w.to32 + n) : from_device(w.to32, n);
        std::vector<uint16_t> got16(n);
        check_cuda(cudaMemcpy(got16.data(), w.to16, n * 2, cudaMemcpyDeviceToHost), "from device");
        size_t bad = 0;
        for (size_t i = 0; i < n; ++i) bad += std::memcmp(&got32[i], &want[i], 4) != 0 || got16[i] != float_to_bf16(want[i]);
        CHECK(bad == 0);
    }
}

TEST_CASE("gpu: the store loads mixed dtypes across files to the host reference's bits at every stage, with offload, for inference") {
    if (!need_gpu()) return;
    uint64_t seed = fresh_seed();
    CAPTURE(seed);
    Rng rng(seed);
    LlamaConfig c = small_config();
    std::string dir = write_model("load_store", c, rng);
    SafetensorsReader files(dir);
    struct Variant { int stage; bool offload, inference; int lora; };
    // LoRA training (lora > 0, not inference) loads into the padded layout (lora.h with_lora_slots); generation's
    // adapters (inference) leave the rows as they are
    for (Variant v : {Variant{0, false, false, 0}, Variant{1, true, false, 0}, Variant{2, false, false, 0}, Variant{3, false, false, 0},
                      Variant{3, true, false, 0}, Variant{3, false, false, 4}, Variant{1, false, false, 3}, Variant{0, false, true, 0},
                      Variant{0, false, true, 4}}) {
        CAPTURE(v.stage);
        CAPTURE(v.offload);
        CAPTURE(v.inference);
        CAPTURE(v.lora);
        ZeroOptions z;
        z.stage = v.stage, z.offload = v.offload, z.inference = v.inference, z.persistence_threshold = 0;
        LoraConfig lora;
        lora.rank = v.lora;
        const LlamaConfig c = v.lora && !v.inference ? with_lora_slots(small_config(), lora) : small_config();
        ZeroStore store(c, lora, z, test_world(), nullptr);
        LoadReport r = store.load(dir);
        CHECK(r.bytes > 0);
        if (v.inference) CHECK(store.memory().master == 0);
        if (v.inference) CHECK(store.trainable_numel() == 0);
        for (int u = 0; u < num_units(c); ++u) {
            CAPTURE(u);
            std::vector<uint16_t> w16 = store.unit_weights16(u);
            std::vector<float> w32 = v.lora || v.inference ? std::vector<float>() : store.unit_weights(u);  // the fp32 masters
            size_t bad16 = 0, bad32 = 0, pads = 0;
            std::vector<bool> owned(w16.size());
            for (const UnitTensor& t : unit_layout(c, u).tensors) {
                std::vector<float> want = files.read_float(t.spec.name, t.spec.shape);
                pads += t.pad > 0;
                for (size_t i = 0; i < want.size(); ++i) {
                    size_t at = size_t(t.at(int64_t(i)));
                    owned[at] = true;
                    bad16 += w16[at] != float_to_bf16(want[i]);
                    if (!w32.empty()) bad32 += std::memcmp(&w32[at], &want[i], 4) != 0;
                }
            }
            size_t nonzero_gaps = 0;  // the gaps and row pads are zeros, not weights
            for (size_t i = 0; i < w16.size(); ++i) nonzero_gaps += !owned[i] && w16[i] != 0;
            CHECK(bad16 == 0);
            CHECK(bad32 == 0);
            CHECK(nonzero_gaps == 0);
            CHECK((pads > 0) == (v.lora && !v.inference && u >= 1 && u <= c.num_hidden_layers));
        }
    }
}

TEST_CASE("gpu: a random init in LoRA training's padded layout draws the same weights as in the plain layout, at stages 0 and 3") {
    if (!need_gpu()) return;
    uint64_t seed = fresh_seed();
    CAPTURE(seed);
    LoraConfig lora;
    lora.rank = 3;
    parse_lora_targets("q,v,gate,up", lora, "test");
    for (int stage : {0, 3}) {
        CAPTURE(stage);
        ZeroOptions z;
        z.stage = stage, z.persistence_threshold = 0;
        LlamaConfig plain = small_config(), padded = with_lora_slots(plain, lora);
        ZeroStore a(plain, lora, z, test_world(), nullptr), b(padded, lora, z, test_world(), nullptr);
        a.init_random(seed), b.init_random(seed);
        for (int u = 0; u < num_units(plain); ++u) {
            CAPTURE(u);
            std::vector<uint16_t> wa = a.unit_weights16(u), wb = b.unit_weights16(u);
            std::vector<UnitTensor> ta = unit_layout(plain, u).tensors, tb = unit_layout(padded, u).tensors;
            REQUIRE(ta.size() == tb.size());
            size_t bad = 0, drawn = 0;
            for (size_t k = 0; k < ta.size(); ++k)
                for (int64_t e = 0; e < ta[k].spec.numel(); ++e) {
                    bad += wa[size_t(ta[k].at(e))] != wb[size_t(tb[k].at(e))];
                    drawn += wb[size_t(tb[k].at(e))] != 0;
                }
            CHECK(bad == 0);
            CHECK(drawn > 0);
        }
    }
}
