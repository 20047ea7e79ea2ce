// generate.h — text generation with a KV cache: the model's own layer forward run one token at a time
// (LlamaModel::decode), each layer's keys and values kept for every position so far, and the next token
// chosen greedily or sampled (temperature, top-k, top-p). Knows nothing of MPI: when several ranks
// generate together (ZeRO stage 3 gathers are collective), `agree` makes them all take rank 0's choice.
#pragma once
#include <cstdint>
#include <functional>
#include <vector>

#include "data.h"
#include "llama.h"

struct Sampling {
    float temperature = 0;  // 0: greedy (argmax)
    float top_p = 1;        // keep the smallest set of tokens whose probability reaches top_p
    int top_k = 0;          // keep the k most likely tokens (0: all)
    uint64_t seed = 0;
    int max_new_tokens = 64;
};

// The next token from logits [V]: argmax when temperature is 0, else a draw from softmax(logits / T)
// restricted to the top-k, then the top-p nucleus.
int32_t sample_token(const std::vector<float>& logits, const Sampling& s, Rng& rng);

class Generator {
  public:
    // max_len: prompt + generated tokens at most (the KV cache's length).
    Generator(const LlamaConfig& c, LoraShape lora, int max_len, cudaStream_t stream);
    ~Generator();
    Generator(const Generator&) = delete;
    Generator& operator=(const Generator&) = delete;

    // The prompt followed by the generated ids; stops after any id in `eos` (kept), after
    // s.max_new_tokens, or when the cache is full. on_token (if set) sees each new id as it comes.
    std::vector<int32_t> generate(UnitStore& store, const std::vector<int32_t>& prompt, const Sampling& s,
                                  const std::vector<int32_t>& eos, const std::function<void(int32_t)>& on_token = {});
    int max_len() const { return cache_.max_len; }

    std::function<void(int32_t&)> agree;  // several ranks: every rank takes rank 0's token (set by the caller)

  private:
    LlamaConfig c_;
    cudaStream_t stream_;
    LlamaModel model_;  // B = T = 1, one layer's activations
    KvCache cache_;
    float* logits_ = nullptr;  // [V] device
};
