// distributed/checkpoint.cpp — checkpoints by parameter name, the trainer's position, and the HF export (checkpoint.h).
// Saving: each rank writes the slices it optimizes (ZeroStore::owned_slices) under their tensor names;
// loading: each rank reads back, by name, the slices the new world gives it, from whichever files hold
// them — so rank count and stage may change between save and load.
#include "distributed/checkpoint.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "support/cuda_calls.h"
#include "support/json.h"
#include "support/report.h"

namespace {

std::string lora_signature(const LoraConfig& l) {
    std::string s = "r=" + std::to_string(l.rank) + " alpha=" + std::to_string(l.alpha) + " rslora=" + std::to_string(l.use_rslora) + " targets=";
    for (int t = 0; t < kTargets; ++t)
        if (l.target[t] && l.rank) s += std::string(lora_target_name(LoraTarget(t))) + ",";
    return s;
}

const char* kKinds[3] = {"master", "m", "v"};

int64_t file_size(const std::string& path) {
    struct stat st;
    return stat(path.c_str(), &st) == 0 ? int64_t(st.st_size) : -1;
}

// A directory's entries (files renamed into it) reach the disk. File systems that cannot sync a
// directory (EINVAL) keep their own order.
void sync_directory(const std::string& dir) {
    int fd = open(dir.c_str(), O_RDONLY | O_DIRECTORY);
    bool ok = fd >= 0 && (fsync(fd) == 0 || errno == EINVAL);
    int err = errno;
    if (fd >= 0) close(fd);
    if (!ok) fail("cannot sync " + dir + " to disk: " + std::strerror(err));
}

}  // namespace

std::string checkpoint_rank_file(const std::string& dir, int rank, int size) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "/rank-%05d-of-%05d.safetensors", rank, size);
    return dir + buf;
}

std::string checkpoint_key(const std::string& kind, const std::string& name, int64_t begin) {
    return kind + ":" + name + ":" + std::to_string(begin);
}

CheckpointIndex::CheckpointIndex(const std::string& dir, int files) : dir_(dir) {
    for (int k = 0; k < files; ++k) {
        readers_.emplace_back(new SafetensorsReader(checkpoint_rank_file(dir, k, files)));
        for (const auto& [key, t] : readers_.back()->tensors()) {
            size_t a = key.find(':'), b = key.rfind(':');
            char* end = nullptr;
            long long begin = a == std::string::npos || a == b ? -1 : std::strtoll(key.c_str() + b + 1, &end, 10);
            if (begin < 0 || *end != '\0' || t.shape.size() != 1) fail(t.file + ": unexpected entry " + key);
            slices_[key.substr(a + 1, b - a - 1)].push_back({key.substr(0, a), key, begin, t.shape[0], k});
        }
    }
}

std::vector<float> CheckpointIndex::read(const std::string& kind, const std::string& name, int64_t begin, int64_t n) const {
    std::vector<float> part(static_cast<size_t>(n));
    int64_t covered = 0;
    auto it = slices_.find(name);
    if (it != slices_.end())
        for (const Slice& sl : it->second) {
            if (sl.kind != kind) continue;
            int64_t lo = std::max(begin, sl.begin), hi = std::min(begin + n, sl.begin + sl.count);
            if (lo >= hi) continue;
            std::vector<float> v = readers_[size_t(sl.file)]->read_float(sl.key, {sl.count});
            std::copy(v.begin() + (lo - sl.begin), v.begin() + (hi - sl.begin), part.begin() + (lo - begin));
            covered += hi - lo;
        }
    if (covered != n) fail("checkpoint " + dir_ + " is incomplete: " + kind + " of " + name + " is missing elements");
    return part;
}

void CheckpointIndex::check_covers(const std::string& name, int64_t numel) const {
    for (const char* kind : kKinds) {
        std::vector<std::pair<int64_t, int64_t>> ranges;  // [begin, end) of each slice of this kind
        auto it = slices_.find(name);
        if (it != slices_.end())
            for (const Slice& sl : it->second)
                if (sl.kind == kind) ranges.push_back({sl.begin, sl.begin + sl.count});
        std::sort(ranges.begin(), ranges.end());
        int64_t covered = 0;
        for (const auto& [lo, hi] : ranges)
            if (lo <= covered) covered = std::max(covered, hi);
        if (covered < numel || (!ranges.empty() && ranges.back().second > numel))
            fail("checkpoint " + dir_ + " is incomplete: " + kind + " of " + name + " does not cover its " + std::to_string(numel) +
                 " elements (a rank file from another run?)");
    }
}

void save_checkpoint(ZeroStore& store, const std::string& root, const std::string& name, const LlamaConfig& c,
                     const LoraConfig& lora, const TrainerState& state) {
    const World& w = store.world();
    std::string dir = root + "/" + name;
    if (w.rank == 0) mkdir(root.c_str(), 0755), mkdir(dir.c_str(), 0755);
    world_barrier(w);
    // Streamed: the header first, then each slice's values straight from host memory (offload) or through
    // a bounded buffer from the GPU, never the rank's whole state at once (12 bytes per trainable element).
    std::vector<OwnedSlice> slices = store.owned_slices();
    std::vector<SafetensorsWriter::Entry> entries;
    double bytes = 0;
    for (const OwnedSlice& s : slices)
        for (int k = 0; k < 3; ++k) entries.push_back({checkpoint_key(kKinds[k], s.name, s.begin), "F32", {s.count}}), bytes += double(s.count) * 4;
    // Every rank writes its file to disk (fsync) and reports; only when all succeeded does rank 0 go on.
    std::string file = checkpoint_rank_file(dir, w.rank, w.size);
    Progress shown("writing checkpoint " + dir, bytes, Progress::Units::Bytes, w.rank == 0);
    world_agree(w, world_timeout(), [&] {
        SafetensorsWriter out(file, entries, {{"world_size", std::to_string(w.size)}});
        std::vector<float> buffer;
        double done = 0;
        for (const OwnedSlice& s : slices) {
            const float* src[3] = {s.master, s.m, s.v};
            for (int k = 0; k < 3; ++k) {
                if (s.host) out.write(src[k], size_t(s.count) * 4);
                for (int64_t at = 0; !s.host && at < s.count; at += int64_t(buffer.size())) {
                    buffer.resize(size_t(std::min<int64_t>(s.count, 1 << 24)));
                    size_t n = size_t(std::min<int64_t>(int64_t(buffer.size()), s.count - at));
                    check_cuda(cudaMemcpy(buffer.data(), src[k] + at, n * 4, cudaMemcpyDeviceToHost), "copy state");
                    out.write(buffer.data(), n * 4);
                }
                shown.update(done += double(s.count) * 4);
            }
        }
        out.finish(true);
    });
    std::vector<std::vector<double>> sizes = world_gather(w, {double(file_size(file))});
    shown.finish();
    if (w.rank != 0) return;
    std::string files;
    for (int r = 0; r < w.size; ++r)
        files += std::string(r ? ", " : "") + json_quote(checkpoint_rank_file("", r, w.size).substr(1)) + ": " +
                 std::to_string(int64_t(sizes[size_t(r)][0]));
    write_atomically(dir + "/trainer.json",
                     "{\"step\": " + std::to_string(state.step) + ", \"total_steps\": " + std::to_string(state.total_steps) +
                         ", \"epoch\": " + std::to_string(state.epoch) + ", \"sequences_into_epoch\": " +
                         std::to_string(state.sequences_into_epoch) + ", \"global_batch\": " + std::to_string(state.global_batch) +
                         ", \"world_size\": " + std::to_string(w.size) + ", \"seed\": " + std::to_string(state.seed) + "}\n",
                     true);
    write_atomically(dir + "/zero.json", "{\"world_size\": " + std::to_string(w.size) + ", \"trainable\": " +
                                             std::to_string(store.trainable_numel()) + ", \"lora\": " + json_quote(lora_signature(lora)) +
                                             ", \"model\": " + json_quote(config_json(c)) + ", \"files\": {" + files + "}}\n",
                     true);
    sync_directory(dir);
    write_atomically(root + "/latest", name + "\n", true);
    sync_directory(root);
    std::printf("checkpoint: %s\n", dir.c_str());
}

std::string checkpoint_damage(const std::string& dir) {
    for (const char* name : {"zero.json", "trainer.json"})
        if (!exists(dir + "/" + name)) return std::string("no ") + name;
    Json meta;
    try {
        meta = read_json_file(dir + "/zero.json");
    } catch (const Error&) {
        return "zero.json is not JSON";
    }
    const Json* files = meta.find("files");
    if (!files) return "";  // written before sizes were recorded
    for (const auto& [name, size] : files->object) {
        int64_t bytes = file_size(dir + "/" + name);
        if (bytes < 0) return name + " is missing";
        if (!size.is_int() || bytes != size.integer)
            return name + " has " + thousands(bytes) + " bytes where zero.json records " + (size.is_int() ? thousands(size.integer) : "?");
    }
    return "";
}

namespace {
bool complete(const std::string& dir) { return checkpoint_damage(dir).empty(); }

// The newest complete step-N directory under `root`, or "".
std::string last_complete(const std::string& root) {
    std::string best;
    long long best_step = -1;
    if (DIR* d = opendir(root.c_str())) {
        while (dirent* e = readdir(d)) {
            std::string n = e->d_name;
            if (n.rfind("step-", 0) == 0 && complete(root + "/" + n) && std::atoll(n.c_str() + 5) > best_step)
                best_step = std::atoll(n.c_str() + 5), best = root + "/" + n;
        }
        closedir(d);
    }
    return best;
}

// The trainable tensors of a run, by name and size: every parameter (full fine-tuning) or every adapter.
std::vector<TensorSpec> trainable_tensors(const LlamaConfig& c, const LoraConfig& lora) {
    if (lora.rank == 0) return parameter_specs(c);
    std::vector<TensorSpec> out;
    LoraLayout layout = lora_layout(c, lora);
    for (int l = 0; l < c.num_hidden_layers; ++l)
        for (int t = 0; t < kTargets; ++t)
            if (lora.target[t]) {
                out.push_back({peft_key(l, LoraTarget(t), 'A'), {lora.rank, layout.in[t]}});
                out.push_back({peft_key(l, LoraTarget(t), 'B'), {layout.out[t], lora.rank}});
            }
    return out;
}
}  // namespace

std::string find_checkpoint(const std::string& root, const std::string& flag) {
    if (flag.empty()) return "";
    std::string dir = flag;
    if (dir == "auto") {
        std::string latest = root + "/latest";
        if (!exists(latest)) {
            std::string last = last_complete(root);
            if (!last.empty())
                fail(root + " holds the complete checkpoint " + last + " but no `latest` file naming the newest: resume it with --resume " + last);
            return "";
        }
        std::string name = read_file(latest);
        dir = root + "/" + name.substr(0, name.find('\n'));
    } else if (!exists(dir)) {
        fail("--resume " + dir + ": no such checkpoint directory");
    }
    std::string damage = checkpoint_damage(dir);
    if (damage.empty()) return dir;
    std::string best = last_complete(root);
    fail("checkpoint " + dir + " is incomplete or damaged (" + damage + ")" +
         (best.empty() ? "" : "; the last complete one is " + best + ": resume it with --resume " + best));
}

void check_checkpoint(const std::string& dir, const LlamaConfig& c, const LoraConfig& lora) {
    Json meta = read_json_file(dir + "/zero.json");
    const Json* ws = meta.find("world_size");
    const Json* model = meta.find("model");
    const Json* sig = meta.find("lora");
    if (!ws || !ws->is_int() || ws->integer < 1 || ws->integer > (1 << 20) || !model || !model->is_string())
        fail(dir + "/zero.json: not a checkpoint description");
    if (model->string != config_json(c)) fail("checkpoint " + dir + " is from another model (its config differs from this run's)");
    if (!sig || !sig->is_string()) fail(dir + "/zero.json: not a checkpoint description");
    if (sig->string != lora_signature(lora))
        fail("checkpoint " + dir + " has LoRA " + sig->string + " but this run has " + lora_signature(lora));
    read_trainer_state(dir);
    // every rank's file present, its header sized for its file, and the slices covering every trainable tensor
    int files = int(ws->integer);
    for (int k = 0; k < files; ++k)
        if (!exists(checkpoint_rank_file(dir, k, files)))
            fail("checkpoint " + dir + " lacks " + checkpoint_rank_file(dir, k, files).substr(dir.size() + 1) + " (it was written by " +
                 std::to_string(files) + " rank" + (files == 1 ? "" : "s") + ")");
    CheckpointIndex index(dir, files);
    for (const TensorSpec& t : trainable_tensors(c, lora)) index.check_covers(t.name, t.numel());
}

void check_resume(const TrainerState& s, uint64_t seed, int64_t total_steps, const std::string& where) {
    if (s.seed != seed)
        fail(where + ": the checkpoint's run has --seed " + std::to_string(s.seed) + ", this run " + std::to_string(seed) +
             " (the data order and the dropout masks follow the seed: give --seed " + std::to_string(s.seed) + ")");
    if (s.step >= total_steps)
        fail(where + ": the checkpoint is at step " + std::to_string(s.step) + " and the run ends at step " + std::to_string(total_steps) +
             ": nothing is left to train (give a larger --steps)");
}

TrainerState read_trainer_state(const std::string& dir) {
    std::string path = dir + "/trainer.json";
    Json t = read_json_file(path);
    TrainerState s;
    auto get = [&](const char* key) {
        const Json* v = t.find(key);
        if (!v || !v->is_int() || v->integer < 0) fail(path + ": missing or bad field \"" + std::string(key) + "\"");
        return v->integer;
    };
    s.step = get("step"), s.total_steps = get("total_steps"), s.epoch = get("epoch");
    s.sequences_into_epoch = get("sequences_into_epoch"), s.global_batch = get("global_batch"), s.world_size = get("world_size");
    s.seed = uint64_t(get("seed"));
    if (s.step > s.total_steps || s.total_steps > INT32_MAX || s.global_batch < 1 || s.world_size < 1)
        fail(path + ": not a trainer state (step " + std::to_string(s.step) + " of " + std::to_string(s.total_steps) + ", global_batch " +
             std::to_string(s.global_batch) + ", world_size " + std::to_string(s.world_size) + ")");
    return s;
}

int64_t resume_micro_batch(const TrainerState& s, int micro_batch, int grad_accum, int ranks, int64_t micro_batches_per_epoch,
                           const std::string& where) {
    int64_t global = int64_t(micro_batch) * grad_accum * ranks, per_micro = int64_t(micro_batch) * ranks;
    if (s.global_batch != global)
        fail(where + ": the checkpoint takes " + std::to_string(s.global_batch) + " sequences per step, this run " + std::to_string(global) +
             " (" + std::to_string(micro_batch) + " x " + std::to_string(grad_accum) + " x " + std::to_string(ranks) +
             " ranks): choose --micro-batch and --grad-accum so micro-batch x accumulation x ranks = " + std::to_string(s.global_batch));
    if (s.sequences_into_epoch % per_micro != 0)
        fail(where + ": the checkpoint stopped " + std::to_string(s.sequences_into_epoch) +
             " sequences into an epoch, which is no whole number of this run's micro-batches (" + std::to_string(per_micro) +
             " sequences across ranks)");
    return s.epoch * micro_batches_per_epoch + s.sequences_into_epoch / per_micro;
}

TrainerState load_checkpoint(ZeroStore& store, const std::string& dir, const LlamaConfig& c, const LoraConfig& lora) {
    check_checkpoint(dir, c, lora);
    Json meta = read_json_file(dir + "/zero.json");
    CheckpointIndex index(dir, int(meta.find("world_size")->integer));
    for (const OwnedSlice& s : store.owned_slices()) {
        float* dst[3] = {s.master, s.m, s.v};
        for (int k = 0; k < 3; ++k) {
            std::vector<float> part = index.read(kKinds[k], s.name, s.begin, s.count);
            if (s.host) std::memcpy(dst[k], part.data(), size_t(s.count) * 4);
            else check_cuda(cudaMemcpy(dst[k], part.data(), size_t(s.count) * 4, cudaMemcpyHostToDevice), "copy state");
        }
    }
    store.refresh_weights();
    return read_trainer_state(dir);
}

// The bf16 weights the model computes with are written as they are (for trained weights they are
// bf16(master), as the update writes them); only an adapted projection of a merged export goes through fp32,
// for W + s B A.
void save_hf(ZeroStore& store, const std::string& dir, const LlamaConfig& c, const LoraConfig& lora) {
    const World& w = store.world();
    std::vector<std::vector<float>> adapters = lora.rank ? store.lora_layers() : std::vector<std::vector<float>>();
    std::unique_ptr<SafetensorsWriter> out;
    double bytes = 0;
    if (w.rank == 0) {
        mkdir(dir.c_str(), 0755);
        std::vector<SafetensorsWriter::Entry> entries;
        for (int u = 0; u < num_units(c); ++u)  // unit order, which is the order the data is written in
            for (const UnitTensor& t : unit_layout(c, u).tensors) entries.push_back({t.spec.name, "BF16", t.spec.shape}), bytes += double(t.spec.numel()) * 2;
        out.reset(new SafetensorsWriter(dir + "/model.safetensors", entries, {{"format", "pt"}}));
    }
    Progress shown("writing " + dir + "/model.safetensors", bytes, Progress::Units::Bytes, w.rank == 0);
    double done = 0;
    for (int u = 0; u < num_units(c); ++u) {  // one unit in host memory at a time
        std::vector<uint16_t> weights = store.unit_weights16(u);
        if (w.rank != 0) continue;
        std::vector<UnitTensor> tensors = unit_layout(c, u).tensors;
        std::vector<int> adapted(tensors.size(), -1);  // the LoRA target merged into each tensor, if any
        if (lora.rank && u >= 1 && u <= c.num_hidden_layers)
            for (int t = 0; t < kTargets; ++t)  // found by offset: a family's layer may have other tensors between them
                for (size_t i = 0; i < tensors.size() && lora.target[t]; ++i)
                    if (tensors[i].offset == layer_tensor_offset(c, kProjection[t])) adapted[i] = t;
        for (size_t i = 0; i < tensors.size(); ++i) {
            const UnitTensor& t = tensors[i];
            const uint16_t* w16 = weights.data() + t.offset;
            size_t n = size_t(t.spec.numel());
            std::vector<uint16_t> rows;  // a tensor with padded rows (LoRA training's layout), its rows back to back
            for (int64_t e = 0; t.pad && e < t.spec.numel(); e += t.cols()) {
                const uint16_t* row = weights.data() + t.at(e);
                rows.insert(rows.end(), row, row + t.cols());
            }
            if (t.pad) w16 = rows.data();
            done += double(n) * 2;
            if (adapted[i] < 0) {
                out->write(w16, n * 2);
                continue;
            }
            std::vector<float> W(n);
            for (size_t k = 0; k < n; ++k) W[k] = bf16_to_float(w16[k]);
            merge_lora_target(c, lora, adapters[size_t(u - 1)].data(), LoraTarget(adapted[i]), W.data());
            std::vector<uint16_t> merged(n);
            for (size_t k = 0; k < n; ++k) merged[k] = float_to_bf16(W[k]);
            out->write(merged.data(), n * 2);
        }
        shown.update(done);
    }
    shown.finish();
    if (w.rank != 0) return;
    out->finish();
    write_atomically(dir + "/config.json", config_json(c));
}
