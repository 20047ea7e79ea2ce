// generate.cu — generation with a KV cache (generate.h). For each new token:
//   logits = model.decode(token, pos)     every layer: k, v of `pos` into the cache, attention over 0..pos
//   next   = argmax(logits)               or a draw from softmax(logits / temperature) within top-k, top-p
// The prompt goes through the same path one token at a time (its logits are ignored but the last).
#include "generate.h"

#include <algorithm>
#include <cmath>

#include "common.h"

int32_t sample_token(const std::vector<float>& logits, const Sampling& s, Rng& rng) {
    int32_t best = int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin());
    if (s.temperature <= 0) return best;
    std::vector<std::pair<float, int32_t>> p;  // (unnormalised probability, id), most likely first
    float m = logits[size_t(best)];
    for (int32_t i = 0; i < int32_t(logits.size()); ++i) {
        float e = std::exp((logits[size_t(i)] - m) / s.temperature);
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

Generator::Generator(const LlamaConfig& c, LoraShape lora, int max_len, cudaStream_t stream)
    : c_(c), stream_(stream), model_(c, lora, 1, 1, stream, true, max_len) {
    int64_t kv = int64_t(c.num_hidden_layers) * max_len * c.num_key_value_heads * c.head_dim;
    cache_.k = device_alloc<bf16>(size_t(kv), "KV cache");
    cache_.v = device_alloc<bf16>(size_t(kv), "KV cache");
    cache_.scores = device_alloc<float>(size_t(c.num_attention_heads) * size_t(max_len), "decode attention scores");
    cache_.max_len = max_len;
    logits_ = device_alloc<float>(size_t(c.vocab_size), "logits");
}

Generator::~Generator() {
    device_free(cache_.k), device_free(cache_.v), device_free(cache_.scores), device_free(logits_);
}

std::vector<int32_t> Generator::generate(UnitStore& store, const std::vector<int32_t>& prompt, const Sampling& s,
                                         const std::vector<int32_t>& eos, const std::function<void(int32_t)>& on_token) {
    std::vector<int32_t> out = prompt;
    if (prompt.empty()) return out;
    Rng rng(s.seed);
    std::vector<float> logits(size_t(c_.vocab_size));
    for (int pos = 0; pos < int(out.size()) && pos < cache_.max_len; ++pos) {
        model_.decode(out[size_t(pos)], pos, store, cache_, logits_);
        if (pos + 1 < int(out.size())) continue;  // still reading the prompt
        if (int(out.size() - prompt.size()) >= s.max_new_tokens || int(out.size()) >= cache_.max_len) break;
        check_cuda(cudaMemcpyAsync(logits.data(), logits_, logits.size() * 4, cudaMemcpyDeviceToHost, stream_), "copy logits");
        check_cuda(cudaStreamSynchronize(stream_), "generate");
        int32_t next = sample_token(logits, s, rng);
        if (agree) agree(next);
        out.push_back(next);
        if (on_token) on_token(next);
        if (std::find(eos.begin(), eos.end(), next) != eos.end()) break;
    }
    return out;
}
