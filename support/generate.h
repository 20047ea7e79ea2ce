// support/generate.h — text generation with a KV cache, and the `generate` command: the prompts' first
// positions read in one pass (LlamaModel::prefill), then the model's own layer forward run one token at a
// time for a batch of sequences (LlamaModel::decode), each layer's keys and values kept for every position
// so far, and each next token chosen greedily or sampled (temperature, top-k, top-p). When the store's weights stay in place (UnitStore::weights_in_place) and the stream is the
// caller's own, one decode step (every layer, the head, the argmax) is captured in a CUDA graph after a
// first step run directly, and replayed for every later one: the host launches one graph a token instead
// of some 15 kernels a layer. Knows nothing of MPI: when several ranks generate together (ZeRO stage 3
// gathers are collective), `agree` makes them all take rank 0's choice, so every rank runs the same steps.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
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
// restricted to the top-k, then to the top-p nucleus.
int32_t sample_token(const float* logits, int vocab, const Sampling& s, Rng& rng);

class Generator {
  public:
    // rows: sequences generated together; max_len: prompt + generated tokens of one sequence at most.
    Generator(const LlamaConfig& c, LoraShape lora, int rows, int max_len, cudaStream_t stream);
    ~Generator();
    Generator(const Generator&) = delete;
    Generator& operator=(const Generator&) = delete;

    // Each prompt (at most `rows`, each shorter than max_len) followed by its generated ids. A sequence
    // stops after an id in `eos` (kept), after s.max_new_tokens, or when it reaches max_len. on_token (if
    // set) sees each new id as it comes: (sequence, id). A replayed step holds the store's weight addresses:
    // the store must outlive the Generator.
    std::vector<std::vector<int32_t>> generate(UnitStore& store, const std::vector<std::vector<int32_t>>& prompts, const Sampling& s,
                                               const std::vector<int32_t>& eos,
                                               const std::function<void(int, int32_t)>& on_token = {});
    int rows() const { return rows_; }
    int max_len() const { return cache_.max_len; }
    // The last generate(): seconds from its start to its first new token (the prefill, then a step for each
    // prompt token after it), and how many tokens came at that step (one per sequence whose prompt ended there).
    double first_token_seconds() const { return first_token_s_; }
    int first_tokens() const { return first_tokens_; }

    // Positions 0..P-1 of every row are read in one pass (prefill) when P ≥ min_prefill, P being one less than
    // the shortest prompt (at most kMaxPrefillTokens over all rows); the rest of each prompt a step a token.
    static constexpr int kMaxPrefillTokens = 8192;
    // 32: the first prefill of a length makes its model (a 7B on an H100: ~100 ms before its first token,
    // against 5.8 ms a decode step), so prompts this short are read a step a token.
    int min_prefill = 32;
    std::function<void(std::vector<int32_t>&)> agree;  // several ranks: every rank takes rank 0's tokens
    std::function<void(cudaStream_t)> wait;            // waits for the stream (default: cudaStreamSynchronize)

  private:
    void decode_step(UnitStore& store);  // model_.decode and the argmax: run directly, or replayed from graph_
    void prefill(UnitStore& store, const std::vector<std::vector<int32_t>>& prompts, int P);  // positions 0..P-1

    LlamaConfig c_;
    LoraShape lora_;
    int rows_;
    cudaStream_t stream_;
    LlamaModel model_;         // B = rows, T = 1, one layer's activations
    std::unique_ptr<LlamaModel> prefill_model_;  // B = rows, T = the last prefill's P (made when P changes)
    int32_t* prefill_ids_ = nullptr;             // [rows, P] device
    int prefill_tokens_ = 0;                     // P of prefill_model_
    KvCache cache_;
    float* logits_ = nullptr;  // [rows, V] device
    int32_t* argmax_ = nullptr;  // [rows] device
    int32_t* next_ = nullptr;    // [rows] pinned: the argmax, read by the host
    cudaGraphExec_t graph_ = nullptr;  // one decode step, captured with the store graph_store_
    const UnitStore* graph_store_ = nullptr;
    const UnitStore* warmed_ = nullptr;  // the store a direct step ran with (loads every kernel before a capture)
    double first_token_s_ = 0;
    int first_tokens_ = 0;
};

// ./train generate: prompts as arguments or one per line on stdin, answered one after another with the
// answer streamed as it comes; see kGenerateUsage in generate.cu. Returns the exit status.
int run_generate(const std::vector<std::string>& args);
