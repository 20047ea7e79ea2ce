// generate.cu — generation with a KV cache (generate.h). All sequences advance together, one position per
// step; at step p each sequence reads its prompt's token p while it has one, and its last generated token
// after that:
//   logits = model.decode(tokens, p)     every layer: k, v of position p into the cache, attention over 0..p
//   next   = argmax(logits)              (on the GPU) or a draw from softmax(logits / temperature) within
//                                        top-k and top-p, for each sequence whose prompt is read
#include "generate.h"

#include <algorithm>
#include <cmath>

#include "common.h"
#include "cuda_common.cuh"

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
    : c_(c), rows_(rows), stream_(stream), model_(c, lora, rows, 1, stream, true, max_len) {
    int64_t kv = int64_t(c.num_hidden_layers) * rows * max_len * c.num_key_value_heads * c.head_dim;
    cache_.k = device_alloc<bf16>(size_t(kv), "KV cache");
    cache_.v = device_alloc<bf16>(size_t(kv), "KV cache");
    cache_.scores = device_alloc<float>(size_t(rows) * c.num_attention_heads * size_t(max_len), "decode attention scores");
    cache_.max_len = max_len;
    logits_ = device_alloc<float>(size_t(rows) * c.vocab_size, "logits");
    argmax_ = device_alloc<int32_t>(size_t(rows), "next tokens");
}

Generator::~Generator() {
    device_free(cache_.k), device_free(cache_.v), device_free(cache_.scores), device_free(logits_), device_free(argmax_);
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
        rng.emplace_back(s.seed ^ (0x9E3779B97F4A7C15ull * uint64_t(r)));
        if (prompts[size_t(r)].empty() || int(prompts[size_t(r)].size()) >= cache_.max_len) done[size_t(r)] = true;
    }
    std::vector<int32_t> tokens(size_t(rows_), 0), positions(size_t(rows_), 0), next(size_t(rows_), 0);
    std::vector<float> logits;
    for (int p = 0; p < cache_.max_len; ++p) {
        bool active = false;
        for (int r = 0; r < n; ++r) {
            const std::vector<int32_t>& seq = out[size_t(r)];
            active |= !done[size_t(r)];
            tokens[size_t(r)] = p < int(seq.size()) ? seq[size_t(p)] : 0;  // finished rows read padding
            positions[size_t(r)] = p;
        }
        if (!active) break;
        model_.decode(tokens, positions, store, cache_, logits_);
        bool wanted = false;  // does any sequence take its next token at this position?
        for (int r = 0; r < n; ++r) wanted |= !done[size_t(r)] && p == int(out[size_t(r)].size()) - 1;
        if (!wanted) continue;
        if (s.temperature <= 0) {
            argmax_kernel<<<unsigned(rows_), 1024, 0, stream_>>>(logits_, V, argmax_);
            check_launch("argmax_kernel");
            check_cuda(cudaMemcpyAsync(next.data(), argmax_, size_t(rows_) * 4, cudaMemcpyDeviceToHost, stream_), "copy tokens");
        } else {
            logits.resize(size_t(rows_) * V);
            check_cuda(cudaMemcpyAsync(logits.data(), logits_, logits.size() * 4, cudaMemcpyDeviceToHost, stream_), "copy logits");
        }
        if (wait) wait(stream_);
        else check_cuda(cudaStreamSynchronize(stream_), "generate");
        for (int r = 0; r < n && s.temperature > 0; ++r) next[size_t(r)] = sample_token(logits.data() + int64_t(r) * V, V, s, rng[size_t(r)]);
        if (agree) agree(next);
        for (int r = 0; r < n; ++r) {
            std::vector<int32_t>& seq = out[size_t(r)];
            if (done[size_t(r)] || p != int(seq.size()) - 1) continue;
            seq.push_back(next[size_t(r)]);
            if (on_token) on_token(r, next[size_t(r)]);
            bool stop = std::find(eos.begin(), eos.end(), next[size_t(r)]) != eos.end();
            stop |= int(seq.size() - prompts[size_t(r)].size()) >= s.max_new_tokens || int(seq.size()) >= cache_.max_len;
            if (stop) done[size_t(r)] = true;
        }
    }
    return out;
}
