// support/generate.cu — generation with a KV cache (generate.h). First the positions every prompt has but its
// last are read in one pass (LlamaModel::prefill: training's attention, the keys and values into the cache).
// Then all sequences advance together, one position per step; at step p each sequence reads its prompt's
// token p while it has one, and its last generated token after that:
//   logits = model.decode(tokens, p)     every layer: k, v of position p into the cache, attention over 0..p
//   next   = argmax(logits)              (on the GPU) or a draw from softmax(logits / temperature) within
//                                        top-k and top-p, for each sequence whose prompt is read
// The tokens and positions go up before each step; the step itself (decode and argmax) reads only device
// memory, so it is one CUDA graph replayed each step where the store allows (decode_step).
#include "support/generate.h"

#include <algorithm>
#include <cmath>

#include "support/cuda_calls.h"
#include "kernels/cuda_common.cuh"
#include "lora.h"
#include "support/options.h"
#include "support/tokenizer.h"
#include "distributed/world.h"
#include "zero3.h"

#include <cstdio>
#include <iostream>

namespace {

// ids[r] = argmax_j logits[r, j]  (the first of equal maxima; one block per row)
__global__ void argmax_kernel(const float* logits, int V, int32_t* ids) {
    const float* z = logits + int64_t(blockIdx.x) * V;
    float best = -INFINITY;
    int at = V;
    for (int j = threadIdx.x; j < V; j += blockDim.x)
        if (z[j] > best) best = z[j], at = j;
    __shared__ float values[1024];
    __shared__ int index[1024];
    values[threadIdx.x] = best, index[threadIdx.x] = at;
    __syncthreads();
    for (int half = blockDim.x / 2; half > 0; half /= 2) {
        if (threadIdx.x < half) {
            float v = values[threadIdx.x + half];
            int i = index[threadIdx.x + half];
            if (v > values[threadIdx.x] || (v == values[threadIdx.x] && i < index[threadIdx.x])) values[threadIdx.x] = v, index[threadIdx.x] = i;
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) ids[blockIdx.x] = index[0];
}

}  // namespace

int32_t sample_token(const float* logits, int vocab, const Sampling& s, Rng& rng) {
    int32_t best = int32_t(std::max_element(logits, logits + vocab) - logits);
    if (s.temperature <= 0) return best;
    std::vector<std::pair<float, int32_t>> p;  // (unnormalised probability, id), most likely first
    for (int32_t i = 0; i < vocab; ++i) {
        float e = std::exp((logits[i] - logits[best]) / s.temperature);
        if (e > 0) p.push_back({e, i});
    }
    std::sort(p.begin(), p.end(), [](const auto& a, const auto& b) { return a.first > b.first || (a.first == b.first && a.second < b.second); });
    if (s.top_k > 0 && p.size() > size_t(s.top_k)) p.resize(size_t(s.top_k));
    double total = 0;
    for (const auto& x : p) total += x.first;
    double keep = 0, cut = double(s.top_p) * total;
    size_t n = 0;
    while (n < p.size() && (n == 0 || keep < cut)) keep += p[n++].first;
    double r = double(rng.uniform()) * keep;
    for (size_t i = 0; i < n; ++i)
        if ((r -= p[i].first) < 0) return p[i].second;
    return p[n - 1].second;
}

Generator::Generator(const LlamaConfig& c, LoraShape lora, int rows, int max_len, cudaStream_t stream)
    : c_(c), lora_(lora), rows_(rows), stream_(stream), model_(c, lora, rows, 1, stream, true, max_len) {
    int64_t kv = int64_t(c.num_hidden_layers) * rows * max_len * c.num_key_value_heads * c.head_dim;
    cache_.k = device_alloc<bf16>(size_t(kv), "KV cache");
    cache_.v = device_alloc<bf16>(size_t(kv), "KV cache");
    cache_.scores = device_alloc<float>(size_t(rows) * c.num_attention_heads * size_t(max_len), "decode attention scores");
    cache_.max_len = max_len;
    logits_ = device_alloc<float>(size_t(rows) * c.vocab_size, "logits");
    argmax_ = device_alloc<int32_t>(size_t(rows), "next tokens");
    check_cuda(cudaMallocHost(&next_, size_t(rows) * sizeof(int32_t)), "cudaMallocHost");
}

Generator::~Generator() {
    if (graph_) cudaGraphExecDestroy(graph_);
    cudaFreeHost(next_);
    device_free(cache_.k), device_free(cache_.v), device_free(cache_.scores), device_free(logits_), device_free(argmax_);
    if (prefill_ids_) device_free(prefill_ids_);
}

// Positions 0..P-1 of every row in one pass (rows without a prompt read padding). The model for P tokens a
// row (one layer's activations, with recompute, but every layer's input and the gradient scratch too) is made
// when P differs from the last call's.
void Generator::prefill(UnitStore& store, const std::vector<std::vector<int32_t>>& prompts, int P) {
    if (!prefill_model_ || prefill_tokens_ != P) {
        prefill_model_.reset();
        if (prefill_ids_) device_free(prefill_ids_);
        prefill_model_ = std::make_unique<LlamaModel>(c_, lora_, rows_, P, stream_, true, cache_.max_len);
        prefill_ids_ = device_alloc<int32_t>(size_t(rows_) * size_t(P), "prefill ids");
        prefill_tokens_ = P;
    }
    std::vector<int32_t> ids(size_t(rows_) * size_t(P), 0);
    for (size_t r = 0; r < prompts.size(); ++r)
        if (int(prompts[r].size()) > P) std::copy(prompts[r].begin(), prompts[r].begin() + P, ids.begin() + long(r) * P);
    // pageable source: copied before the call returns
    check_cuda(cudaMemcpyAsync(prefill_ids_, ids.data(), ids.size() * 4, cudaMemcpyHostToDevice, stream_), "copy prefill ids");
    prefill_model_->prefill(store, cache_, prefill_ids_);
}

// One decode step and its argmax. Captured once per store, on the second step (the first runs directly, so
// every kernel and cuBLASLt plan is loaded before a capture), where the store hands out weights that stay in
// place and the stream is the caller's own (the legacy default stream cannot be captured).
void Generator::decode_step(UnitStore& store) {
    bool replayable = store.weights_in_place() && stream_ != nullptr && stream_ != cudaStreamLegacy && stream_ != cudaStreamPerThread;
    if (graph_ && graph_store_ != &store) cudaGraphExecDestroy(graph_), graph_ = nullptr;
    if (replayable && !graph_ && warmed_ == &store) {
        cudaGraph_t g;
        check_cuda(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal), "cudaStreamBeginCapture");
        model_.decode(store, cache_, logits_);
        argmax_kernel<<<unsigned(rows_), 1024, 0, stream_>>>(logits_, c_.vocab_size, argmax_);
        check_launch("argmax_kernel");
        check_cuda(cudaStreamEndCapture(stream_, &g), "cudaStreamEndCapture");
        check_cuda(cudaGraphInstantiate(&graph_, g, 0), "cudaGraphInstantiate");
        check_cuda(cudaGraphDestroy(g), "cudaGraphDestroy");
        graph_store_ = &store;
    }
    if (graph_) {
        check_cuda(cudaGraphLaunch(graph_, stream_), "cudaGraphLaunch");
        return;
    }
    model_.decode(store, cache_, logits_);
    argmax_kernel<<<unsigned(rows_), 1024, 0, stream_>>>(logits_, c_.vocab_size, argmax_);
    check_launch("argmax_kernel");
    warmed_ = &store;
}

std::vector<std::vector<int32_t>> Generator::generate(UnitStore& store, const std::vector<std::vector<int32_t>>& prompts,
                                                      const Sampling& s, const std::vector<int32_t>& eos,
                                                      const std::function<void(int, int32_t)>& on_token) {
    int n = int(prompts.size()), V = c_.vocab_size;
    if (n > rows_) exit_with_error("Generator: more prompts than rows");
    std::vector<std::vector<int32_t>> out = prompts;
    std::vector<bool> done(size_t(n), false);
    std::vector<Rng> rng;
    for (int r = 0; r < n; ++r) {
        rng.emplace_back(s.seed ^ (kGoldenGamma * uint64_t(r)));
        if (prompts[size_t(r)].empty() || int(prompts[size_t(r)].size()) >= cache_.max_len) done[size_t(r)] = true;
    }
    std::vector<int32_t> tokens(size_t(rows_), 0), positions(size_t(rows_), 0), next(size_t(rows_), 0);
    std::vector<float> logits;
    double start = wall_seconds();
    first_token_s_ = 0, first_tokens_ = 0;
    // Every position before the shortest prompt's last token at once; that token's step gives its first.
    int shortest = cache_.max_len;
    for (int r = 0; r < n; ++r)
        if (!done[size_t(r)]) shortest = std::min(shortest, int(prompts[size_t(r)].size()));
    const int P = std::min(shortest - 1, kMaxPrefillTokens / rows_), first_step = shortest < cache_.max_len && P >= min_prefill ? P : 0;
    if (first_step > 0) prefill(store, prompts, P);
    for (int p = first_step; p < cache_.max_len; ++p) {
        bool active = false;
        for (int r = 0; r < n; ++r) {
            const std::vector<int32_t>& seq = out[size_t(r)];
            active |= !done[size_t(r)];
            tokens[size_t(r)] = p < int(seq.size()) ? seq[size_t(p)] : 0;  // finished rows read padding
            positions[size_t(r)] = p;
        }
        if (!active) break;
        model_.set_decode_inputs(tokens, positions, cache_.max_len);
        decode_step(store);
        bool wanted = false;  // does any sequence take its next token at this position?
        for (int r = 0; r < n; ++r) wanted |= !done[size_t(r)] && p == int(out[size_t(r)].size()) - 1;
        if (!wanted) continue;
        if (s.temperature <= 0) {
            check_cuda(cudaMemcpyAsync(next_, argmax_, size_t(rows_) * 4, cudaMemcpyDeviceToHost, stream_), "copy tokens");
        } else {
            logits.resize(size_t(rows_) * V);
            check_cuda(cudaMemcpyAsync(logits.data(), logits_, logits.size() * 4, cudaMemcpyDeviceToHost, stream_), "copy logits");
        }
        // The stream first (its gathers wait for the other ranks: `wait` bounds that), then the copy to
        // pageable memory, which would otherwise block the host until the stream reached it.
        if (wait) wait(stream_);
        else check_cuda(cudaStreamSynchronize(stream_), "generate");
        for (int r = 0; r < n; ++r)
            next[size_t(r)] = s.temperature > 0 ? sample_token(logits.data() + int64_t(r) * V, V, s, rng[size_t(r)]) : next_[r];
        if (agree) agree(next);
        bool first = first_tokens_ == 0;  // the first step that gives tokens: the prompts read so far are its cost
        if (first) first_token_s_ = wall_seconds() - start;
        for (int r = 0; r < n; ++r) {
            std::vector<int32_t>& seq = out[size_t(r)];
            if (done[size_t(r)] || p != int(seq.size()) - 1) continue;
            seq.push_back(next[size_t(r)]);
            first_tokens_ += first;
            if (on_token) on_token(r, next[size_t(r)]);
            bool stop = std::find(eos.begin(), eos.end(), next[size_t(r)]) != eos.end();
            stop |= int(seq.size() - prompts[size_t(r)].size()) >= s.max_new_tokens || int(seq.size()) >= cache_.max_len;
            if (stop) done[size_t(r)] = true;
        }
    }
    return out;
}

// ================================================================================================ the command

namespace {

const char* kGenerateUsage = R"(usage: ./train generate --model DIR [--adapter DIR] [OPTIONS] [PROMPT ...]

Answers each PROMPT (or each line of stdin when none is given), streaming the answer as it comes, then
prints the tokens and tokens/s. Stops at the model's end tokens (generation_config.json, config.json).
  --model DIR            HF model directory (config.json, safetensors, tokenizer.json); e.g. OUT/model
  --adapter DIR          a PEFT LoRA adapter on that base, e.g. OUT/adapter
  --tokenizer PATH       tokenizer.json when the model directory has none
  --chat-template        wrap each prompt in the model family's chat template (Instruct models)
  --max-new-tokens N     (default 128)
  --temperature T        0 = greedy (default); > 0 samples from softmax(logits / T)
  --top-k K              sample among the K most likely tokens (default 0: all)
  --top-p P              sample within the nucleus of probability P (default 1)
  --seed N               sampling seed (default 1234)
  --batch N              generate N prompts together (default 1: one at a time, each streamed as it comes)
)";

struct GenerateOptions {
    std::string model, adapter, tokenizer;
    bool chat = false;
    int batch = 1;
    Sampling sampling;
    std::vector<std::string> prompts;
};

GenerateOptions parse_generate(const std::vector<std::string>& args) {
    GenerateOptions g;
    g.sampling.max_new_tokens = 128, g.sampling.seed = 1234;
    for (size_t i = 0; i < args.size(); ++i) {
        const std::string& a = args[i];
        auto value = [&]() -> const std::string& {
            if (i + 1 >= args.size()) fail(a + " needs a value");
            return args[++i];
        };
        if (a == "--model") g.model = value();
        else if (a == "--adapter") g.adapter = value();
        else if (a == "--tokenizer") g.tokenizer = value();
        else if (a == "--chat-template") g.chat = true;
        else if (a == "--max-new-tokens") g.sampling.max_new_tokens = int(parse_int(a, value(), 1, 1 << 20));
        else if (a == "--temperature") g.sampling.temperature = float(parse_real(a, value()));
        else if (a == "--top-k") g.sampling.top_k = int(parse_int(a, value(), 0, 1 << 30));
        else if (a == "--top-p") g.sampling.top_p = float(parse_real(a, value()));
        else if (a == "--seed") g.sampling.seed = uint64_t(parse_int(a, value(), 0, 1LL << 62));
        else if (a == "--batch") g.batch = int(parse_int(a, value(), 1, 4096));
        else if (a.rfind("--", 0) == 0) fail("unknown option " + a + " for generate (see ./train generate --help)");
        else g.prompts.push_back(a);
    }
    if (g.model.empty()) fail("generate needs --model DIR (see ./train generate --help)");
    if (!exists(g.model + "/config.json")) fail("--model " + g.model + ": no config.json there");
    if (!g.adapter.empty() && !exists(g.adapter + "/adapter_config.json")) fail("--adapter " + g.adapter + ": no adapter_config.json there");
    if (g.sampling.temperature < 0) fail("--temperature must be >= 0");
    if (!(g.sampling.top_p > 0 && g.sampling.top_p <= 1)) fail("--top-p must be in (0, 1]");
    if (g.tokenizer.empty()) {
        g.tokenizer = g.model + "/tokenizer.json";
        if (!exists(g.tokenizer)) fail("--model " + g.model + " has no tokenizer.json: pass --tokenizer PATH");
    }
    if (g.prompts.empty()) {
        for (std::string line; std::getline(std::cin, line);)
            if (line.find_first_not_of(" \t\r") != std::string::npos) g.prompts.push_back(line);
        if (g.prompts.empty()) fail("generate: no prompt (give prompts as arguments or one per line on stdin)");
    }
    return g;
}

// Streams a sequence's text as its ids come: prints what decoding added, holding back an unfinished
// UTF-8 character (decoded as U+FFFD until its last byte arrives).
struct TextStream {
    const Tokenizer& tok;
    std::vector<int32_t> ids;
    size_t printed = 0;
    void add(int32_t id) {
        ids.push_back(id);
        std::string text = tok.decode(ids);
        if (text.size() >= 3 && text.compare(text.size() - 3, 3, "\xEF\xBF\xBD") == 0) return;
        if (text.size() > printed) std::fwrite(text.data() + printed, 1, text.size() - printed, stdout), std::fflush(stdout);
        printed = std::max(printed, text.size());
    }
};

}  // namespace

int run_generate(const std::vector<std::string>& args) {
    for (const std::string& a : args)
        if (a == "-h" || a == "--help") { std::fputs(kGenerateUsage, stdout); return 0; }
    GenerateOptions g = parse_generate(args);
    LlamaConfig c = load_config(g.model + "/config.json");
    Tokenizer tok = Tokenizer::load(g.tokenizer);
    check_vocab(tok, c.vocab_size, g.tokenizer, g.model + "/config.json");
    ModelTokens mt = model_tokens(tok, g.model);
    LoraConfig lora;
    std::vector<std::vector<float>> adapter;
    if (!g.adapter.empty()) load_peft_adapter(g.adapter, c, lora, adapter);  // fails naming a tensor whose shape differs
    std::vector<std::vector<int32_t>> prompts;
    int longest = 0;
    for (size_t k = 0; k < g.prompts.size(); ++k) {
        prompts.push_back(prompt_ids(tok, mt, g.prompts[k], g.chat));
        int n = int(prompts.back().size());
        if (n >= c.max_position_embeddings)
            fail("prompt " + std::to_string(k + 1) + " has " + std::to_string(n) + " tokens; the model's context is " +
                 std::to_string(c.max_position_embeddings) + " (max_position_embeddings)");
        longest = std::max(longest, n);
    }
    World w;  // one process, one GPU
    world_start_gpu(w, Transport::automatic);
    cudaStream_t stream;
    check_cuda(cudaStreamCreate(&stream), "cudaStreamCreate");
    int64_t generated = 0;
    double seconds = 0;
    {
        // What inference needs: the bf16 weights (and the adapter's), the KV cache for `rows` sequences of the
        // longest prompt + --max-new-tokens, one step's activations and logits.
        ZeroOptions inference;
        inference.inference = true;
        ZeroStore store(c, lora, inference, w, stream);
        LoadReport loaded = store.load(g.model);
        if (lora.rank > 0) store.set_lora(adapter);
        int rows = std::min(g.batch, int(prompts.size()));
        int max_len = std::min(c.max_position_embeddings, longest + g.sampling.max_new_tokens);
        double weights = store.memory().base;
        Generator gen(c, {lora.rank, lora.scale()}, rows, max_len, stream);
        std::printf("model: %s, %s parameters; load %.1f s (%.2f GB at %.1f GB/s); GPU memory: weights %.2f GiB, KV cache and "
                    "activations for %d x %d tokens %.2f GiB\n", g.model.c_str(), thousands(c.num_parameters()).c_str(), loaded.seconds,
                    loaded.bytes / 1e9, loaded.bytes / 1e9 / std::max(1e-9, loaded.seconds), weights / double(1 << 30), rows, max_len,
                    (double(tracked_device_bytes()) - weights) / double(1 << 30));
        for (size_t first = 0; first < prompts.size(); first += size_t(rows)) {
            size_t last = std::min(prompts.size(), first + size_t(rows));
            std::vector<std::vector<int32_t>> batch(prompts.begin() + long(first), prompts.begin() + long(last));
            bool streamed = batch.size() == 1;  // one sequence: its text as it comes
            if (streamed && prompts.size() > 1) std::printf("%s[%zu] %s\n", first ? "\n" : "", first + 1, g.prompts[first].c_str());
            TextStream out{tok, {}, 0};
            double start = wall_seconds();
            std::vector<std::vector<int32_t>> ids = gen.generate(store, batch, g.sampling, mt.eos, [&](int, int32_t id) {
                if (streamed && std::find(mt.eos.begin(), mt.eos.end(), id) == mt.eos.end()) out.add(id);
            });
            double s = wall_seconds() - start;
            int64_t n = 0;
            for (size_t k = 0; k < batch.size(); ++k) {
                int64_t made = int64_t(ids[k].size() - batch[k].size());
                n += made;
                if (!streamed) {
                    std::vector<int32_t> answer(ids[k].begin() + long(batch[k].size()), ids[k].end());
                    while (!answer.empty() && std::find(mt.eos.begin(), mt.eos.end(), answer.back()) != mt.eos.end()) answer.pop_back();
                    std::printf("%s[%zu] %s\n%s\n", first + k ? "\n" : "", first + k + 1, g.prompts[first + k].c_str(), tok.decode(answer).c_str());
                }
                if (int(ids[k].size()) >= max_len && made < g.sampling.max_new_tokens) std::printf(" [stopped: the model's context is full]");
            }
            generated += n, seconds += s;
            // the rate after the first token: the prefill and the prompts' remaining steps are the first token's latency
            char after[96] = "";
            double t1 = gen.first_token_seconds();
            if (n > gen.first_tokens() && s > t1)
                std::snprintf(after, sizeof after, "; the first after %.0f ms, then %.1f tokens/s", 1e3 * t1, double(n - gen.first_tokens()) / (s - t1));
            if (streamed) std::printf("\n(%lld tokens, %.1f tokens/s%s)\n", (long long)n, double(n) / s, after);
            else std::printf("(%zu sequences together: %lld tokens, %.1f tokens/s%s)\n", batch.size(), (long long)n, double(n) / s, after);
        }
    }
    if (prompts.size() > 1) std::printf("\n%lld tokens in %.1f s, %.1f tokens/s\n", (long long)generated, seconds, double(generated) / seconds);
    cudaStreamDestroy(stream);
    world_finalize(w);
    return 0;
}
