// distributed/checkpoint.h — what a run leaves on disk and reads back: checkpoints of the trainable state by
// parameter name (so a run resumes on any number of ranks and any ZeRO stage), the trainer's position in
// the data, and the streamed HF export of a whole model. Knows files and names; the ZeRO store says which
// slices this rank owns.
//
// A checkpoint is OUT/checkpoints/step-N/:
//   rank-R-of-W.safetensors  for every trainable tensor slice rank R optimizes, "master:NAME:BEGIN",
//                            "m:NAME:BEGIN", "v:NAME:BEGIN" (fp32; BEGIN = first element within NAME)
//   zero.json                the world size, stage, model config and LoRA setup, and every rank file's size
//                            (rank 0, after every rank reported its file written)
//   trainer.json             where the run stands (TrainerState)
// and OUT/checkpoints/latest names the newest complete one, replaced by atomic rename after it is whole.
// Each file reaches the disk (fsync) before the next step of that order, and the directories after their
// renames, so a node that crashes leaves `latest` naming a whole checkpoint; a resume checks every rank
// file against its recorded size and names a damaged newest checkpoint with the last complete one.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "lora.h"
#include "support/safetensors.h"
#include "zero3.h"

std::string checkpoint_rank_file(const std::string& dir, int rank, int size);
std::string checkpoint_key(const std::string& kind, const std::string& name, int64_t begin);

// Every slice in a checkpoint's rank files, by tensor name: any range of any tensor can be read back.
class CheckpointIndex {
  public:
    CheckpointIndex(const std::string& dir, int files);  // reads every file's header (fails on a damaged one)
    // Elements [begin, begin + n) of tensor `name`, assembled from whichever slices hold them.
    std::vector<float> read(const std::string& kind, const std::string& name, int64_t begin, int64_t n) const;
    // Fails unless the slices of `name` cover its `numel` elements for master, m and v (headers only).
    void check_covers(const std::string& name, int64_t numel) const;

  private:
    struct Slice { std::string kind, key; int64_t begin, count; int file; };
    std::string dir_;
    std::vector<std::unique_ptr<SafetensorsReader>> readers_;
    std::map<std::string, std::vector<Slice>> slices_;
};

// Where the run stands, in terms that do not depend on the rank count: sequences of the epoch's order
// consumed by all ranks together, and the global batch. Resuming converts these to the new world's
// micro-batch index (it must divide evenly) and keeps the run's length and schedule.
struct TrainerState {
    int64_t step = 0;                  // optimizer steps done
    int64_t total_steps = 0;           // the run's length (the LR schedule's)
    int64_t epoch = 0;                 // epoch of the next micro-batch
    int64_t sequences_into_epoch = 0;  // sequences of that epoch already consumed (all ranks)
    int64_t global_batch = 0;          // sequences per optimizer step: micro-batch x accumulation x ranks
    int64_t world_size = 0;            // the ranks that wrote it (informational)
    uint64_t seed = 0;
};

// This world's index of the next micro-batch (counting from the run's first) for a checkpoint's state:
// micro-batch x ranks must divide the sequences consumed, and the global batch must be the same.
// Fails naming `where` otherwise.
int64_t resume_micro_batch(const TrainerState& s, int micro_batch, int grad_accum, int ranks, int64_t micro_batches_per_epoch,
                           const std::string& where);

// Writes DIR (collective): each rank its slices (the ranks agree that every file was written: a failure is
// one error, from the rank that failed, and `latest` stays), rank 0 zero.json and trainer.json, then `latest`.
void save_checkpoint(ZeroStore& store, const std::string& root, const std::string& name, const LlamaConfig& c,
                     const LoraConfig& lora, const TrainerState& state);
// The checkpoint to resume from: `flag` is a directory, or "auto" for ROOT/latest ("": none, and "auto"
// finds none). A directory that does not exist, a damaged one (named with what is wrong and the last
// complete one), and a complete step-N beside no `latest` (a run stopped between the two) are refused.
std::string find_checkpoint(const std::string& root, const std::string& flag);
// Why DIR is not a complete checkpoint ("" when it is): zero.json and trainer.json present, and every rank
// file zero.json records present at its recorded size (older checkpoints, without sizes: the JSON files).
std::string checkpoint_damage(const std::string& dir);
// Fails unless DIR was written for this model and LoRA setup, holds every rank's file with a sound header,
// and its slices cover every trainable tensor (reads headers only: before the GPU is used).
void check_checkpoint(const std::string& dir, const LlamaConfig& c, const LoraConfig& lora);
// Fails, naming `where`, unless the checkpoint continues this run: the same seed, and steps left before
// `total_steps` (the global batch and the data position: resume_micro_batch).
void check_resume(const TrainerState& s, uint64_t seed, int64_t total_steps, const std::string& where);
// Reads the trainable state into the store (any rank count or stage) and returns the trainer's state.
TrainerState load_checkpoint(ZeroStore& store, const std::string& dir, const LlamaConfig& c, const LoraConfig& lora);
TrainerState read_trainer_state(const std::string& dir);

// Writes model.safetensors + config.json: the full fine-tuned model, or the base with the adapters merged
// (collective: one unit at a time is gathered; rank 0 writes).
void save_hf(ZeroStore& store, const std::string& dir, const LlamaConfig& c, const LoraConfig& lora);
