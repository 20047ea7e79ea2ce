// distributed/zero_estimate.cpp — what ZeRO keeps and moves per rank, counted from the plan without a GPU:
// ZeroStore::estimate (the bytes the store allocates, by kind: the paper's 2 Psi + 2 Psi + K Psi split by
// stage) and ZeroStore::traffic (the collectives one step issues, by kind). The --dry-run and the plan print
// them; the tests hold the store's allocations and the transports' counts to them. They follow zero3.cu's
// constructor and protocol line for line: a change there changes them.
#include <algorithm>
#include <vector>

#include "distributed/offload.h"
#include "zero3.h"

MemoryReport ZeroStore::estimate(const LlamaConfig& c, const LoraConfig& lora, const ZeroOptions& z, int N) {
    MemoryReport m;
    LoraLayout layout = lora_layout(c, lora);
    double biggest = 0, biggest_train = 0;
    int sharded_units = 0;
    std::vector<int64_t> offloaded;  // the shards the CPU optimizer holds
    for (int u = 0; u < num_units(c); ++u) {
        int64_t base = unit_layout(c, u).numel, ad = (lora.rank > 0 && u >= 1 && u <= c.num_hidden_layers) ? layout.per_layer : 0;
        bool sharded = z.stage == 3 && base + ad > z.persistence_threshold;
        for (int64_t numel : {base, ad}) {
            if (!numel) continue;
            Shard s = make_shard(numel, N);
            m.base += double(sharded ? s.size : s.padded) * 2;
        }
        sharded_units += sharded;
        if (sharded) biggest = std::max(biggest, double(align_up(make_shard(base, N).padded) + (ad ? make_shard(ad, N).padded : 0)));
        int64_t t = z.inference ? 0 : lora.rank > 0 ? ad : base;
        if (!t) continue;
        Shard s = make_shard(t, N);
        int64_t opt = z.stage == 0 ? t : s.size;
        if (z.offload) offloaded.push_back(opt);  // master, m, v in host memory
        else m.master += double(opt) * 4, m.moments += double(opt) * 8;
        m.grads += double(z.stage <= 1 ? s.padded : s.size) * 4;
        biggest_train = std::max(biggest_train, double(s.padded));
    }
    if (!offloaded.empty()) m.host = offload_host_bytes(offloaded);  // + the transit ring
    // Gather slots, each big enough for any unit (ZeroStore::free_slot): kGatherSlots at once, or with
    // keep_gathered one per sharded unit (a unit's slot is held from its forward to its backward, so at the end
    // of the forward every unit holds one).
    const int slots = z.keep_gathered ? sharded_units : kGatherSlots;
    if (z.stage == 3 && !gathers_in_place(z, N)) m.gathered = biggest * 2 * slots;
    if (z.stage >= 2) m.grad_buffers = biggest_train * 4 * (lora.rank > 0 || !c.tie_word_embeddings ? kGradBuffers - 1 : kGradBuffers);
    return m;
}

// The step's collectives, as the code below issues them (A micro-batches; bf16 weights, fp32 gradients):
//   each micro-batch  stage 3: all-gather each sharded unit for its forward and again for its backward (once
//                     with keep_gathered); the tied embedding once more, for the lm_head; the last unit (final
//                     norm, + lm_head when untied) once, as the head's forward and backward share one gather
//                     stages 2, 3: reduce-scatter each trainable unit's gradient
//   each step         stages 0, 1: all-reduce each trainable unit's gradient, in reduce_bucket_size buckets
//                     every stage: all-reduce the squared gradient norm (one float)
//                     stages 1-3: all-gather the new weights of each trainable segment kept replicated (with
//                     offload in the next step's forward, O4: a run's first step has none, later steps do)
// On one rank a stage-3 unit is read in place: no gathers. So with Psi elements, all trainable: stage 0 moves
// 2 Psi (4-byte), stage 1 3 Psi (its all-reduce keeps the whole gradient, then the weights come back), stage 2
// 2 Psi, stage 3 3 Psi (two of them bf16). With LoRA the gradients and new weights are the adapters', while
// stage 3 still gathers the frozen base twice.
Traffic ZeroStore::traffic(const LlamaConfig& c, const LoraConfig& lora, const ZeroOptions& z, int N, int A, bool padded) {
    Traffic t;
    t.ranks = N;
    LoraLayout layout = lora_layout(c, lora);
    int L = c.num_hidden_layers;
    auto buffer = [&](int64_t numel) { return padded ? make_shard(numel, N).padded : numel; };
    for (int u = 0; u < num_units(c); ++u) {
        int64_t base = unit_layout(c, u).numel, ad = (lora.rank > 0 && u >= 1 && u <= L) ? layout.per_layer : 0;
        bool sharded = z.stage == 3 && base + ad > z.persistence_threshold;
        if (sharded && !gathers_in_place(z, N)) {
            int gathers = u == L + 1 ? 1 : z.keep_gathered ? 1 : 2;
            if (u == 0 && c.tie_word_embeddings) gathers += 1;
            t.add(Collective::all_gather, buffer(base), 2, int64_t(gathers) * A);
            if (ad) t.add(Collective::all_gather, buffer(ad), 2, int64_t(gathers) * A);
        }
        int64_t trained = lora.rank > 0 ? ad : base;
        if (!trained) continue;
        if (z.stage >= 2) t.add(Collective::reduce_scatter, buffer(trained), 4, A);
        for (int64_t off = 0; z.stage <= 1 && off < buffer(trained); off += z.reduce_bucket_size)
            t.add(Collective::all_reduce, std::min(z.reduce_bucket_size, buffer(trained) - off), 4);
        if (z.stage >= 1 && !sharded) t.add(Collective::all_gather, buffer(trained), 2);
    }
    t.add(Collective::all_reduce, 1, 4);  // the gradient norm
    return t;
}
