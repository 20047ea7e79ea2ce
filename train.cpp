// train.cpp — main: options, setup, and the subcommands.
//   ./train [OPTIONS]                  fine-tune (see --help)
//   ./train tokenize [--tokenizer P]   print the ids of stdin's UTF-8 text, space-separated, no BOS
// Every user mistake ends in one line `error: ...` naming the flag, file or field, and exit status 1.
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <iterator>
#include <sstream>
#include <string>
#include <vector>

#include "common.h"
#include "data.h"

namespace {

const char* kUsage = R"(usage: ./train [OPTIONS]
       ./train tokenize [--tokenizer PATH]

Fine-tunes a Llama model. With no options it runs the default job on the data in data/
(prepared by `make`).

Data:
  --tokenizer PATH       HF tokenizer.json (default: data/tokenizer.json)
  --data PATH            training data: a .jsonl file of rows {"text"}, {"question","answer"[,"context"]},
                         {"prompt","completion"} or {"input_ids"[,"labels"]}; or a plain-text file or a
                         directory of them (packed). Default: data/qa_train.jsonl
  --eval-data PATH       evaluation data, same forms (default: data/qa_eval.jsonl when --data is default)
  --eval-fraction F      split this fraction of --data off for evaluation instead (0 < F < 1)
  --seq N                sequence length: rows are truncated (and counted) to N, padded up to N (default 1024)
  --micro-batch N        rows per GPU per micro-step (default 8)
  --train-on-prompt      loss on every token, not only the answer/completion and EOS
  --chat-template        wrap question/answer and prompt/completion rows in the Llama-3 chat template
  --pack                 fill each sequence with several JSONL rows
  --seed N               seed for the shuffle and initialisation (default 1234)
  --dry-run              check every input, print the data summary, and stop

Subcommands:
  tokenize               read UTF-8 text on stdin, print its token ids on one line (no BOS);
                         special-token strings such as <|eot_id|> become their ids
  -h, --help             this text
)";

struct Options {
    std::string tokenizer, data, eval_data;
    double eval_fraction = 0;
    int seq = 1024, micro_batch = 8;
    bool train_on_prompt = false, chat_template = false, pack = false, dry_run = false;
    uint64_t seed = 1234;
};

// Parses a whole decimal number for `flag` in [lo, hi].
long long parse_int(const std::string& flag, const std::string& text, long long lo, long long hi) {
    char* end = nullptr;
    errno = 0;
    long long v = std::strtoll(text.c_str(), &end, 10);
    if (text.empty() || *end != '\0' || errno != 0) fail(flag + " needs a whole number, not \"" + text + "\"");
    if (v < lo || v > hi) fail(flag + " must be in [" + std::to_string(lo) + ", " + std::to_string(hi) + "], not " + text);
    return v;
}

double parse_real(const std::string& flag, const std::string& text) {
    char* end = nullptr;
    double v = std::strtod(text.c_str(), &end);
    if (text.empty() || *end != '\0') fail(flag + " needs a number, not \"" + text + "\"");
    return v;
}

// A path of the default data: relative to the working directory, else to the directory of ./train.
std::string default_path(const std::string& relative) {
    if (access(relative.c_str(), F_OK) == 0) return relative;
    char exe[4096];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n > 0) {
        std::string dir(exe, size_t(n));
        dir = dir.substr(0, dir.rfind('/'));
        if (access((dir + "/" + relative).c_str(), F_OK) == 0) return dir + "/" + relative;
    }
    return relative;
}

Options parse_options(const std::vector<std::string>& args) {
    Options o;
    for (size_t i = 0; i < args.size(); ++i) {
        const std::string& a = args[i];
        auto value = [&]() -> const std::string& {
            if (i + 1 >= args.size()) fail(a + " needs a value");
            return args[++i];
        };
        if (a == "--tokenizer") o.tokenizer = value();
        else if (a == "--data") o.data = value();
        else if (a == "--eval-data") o.eval_data = value();
        else if (a == "--eval-fraction") o.eval_fraction = parse_real(a, value());
        else if (a == "--seq") o.seq = int(parse_int(a, value(), 2, 1 << 20));
        else if (a == "--micro-batch") o.micro_batch = int(parse_int(a, value(), 1, 1 << 16));
        else if (a == "--seed") o.seed = uint64_t(parse_int(a, value(), 0, (1LL << 62)));
        else if (a == "--train-on-prompt") o.train_on_prompt = true;
        else if (a == "--chat-template") o.chat_template = true;
        else if (a == "--pack") o.pack = true;
        else if (a == "--dry-run") o.dry_run = true;
        else fail("unknown option " + a + " (see ./train --help)");
    }
    if (o.eval_fraction != 0 && !(o.eval_fraction > 0 && o.eval_fraction < 1))
        fail("--eval-fraction must be in (0, 1), not " + std::to_string(o.eval_fraction));
    if (o.eval_fraction != 0 && !o.eval_data.empty()) fail("--eval-fraction and --eval-data exclude each other");
    if (o.tokenizer.empty()) o.tokenizer = default_path("data/tokenizer.json");
    if (o.data.empty()) {
        o.data = default_path("data/qa_train.jsonl");
        if (o.eval_data.empty() && o.eval_fraction == 0) o.eval_data = default_path("data/qa_eval.jsonl");
    }
    return o;
}

Tokenizer load_tokenizer(const std::string& path) {
    if (access(path.c_str(), F_OK) != 0)
        fail("tokenizer " + path + " not found (run `make` to prepare data/, or pass --tokenizer PATH)");
    return Tokenizer::load(path);
}

std::string thousands(int64_t n) {
    std::string s = std::to_string(n);
    for (int i = int(s.size()) - 3; i > (n < 0 ? 1 : 0); i -= 3) s.insert(size_t(i), ",");
    return s;
}

void print_data_summary(const char* role, const Dataset& d) {
    const DataStats& s = d.stats;
    std::printf("data: %-5s %s: %s rows, %s tokens (%s take loss), %s rows truncated (%s tokens cut)", role,
                d.source.c_str(), thousands(int64_t(d.rows.size())).c_str(), thousands(s.tokens).c_str(),
                thousands(s.target_tokens).c_str(), thousands(s.truncated_rows).c_str(),
                thousands(s.truncated_tokens).c_str());
    if (s.rows_without_targets) std::printf(", %s rows with no answer left", thousands(s.rows_without_targets).c_str());
    std::printf("\n");
}

int run_tokenize(const std::vector<std::string>& args) {
    std::string path;
    for (size_t i = 0; i < args.size(); ++i) {
        if (args[i] == "--tokenizer" && i + 1 < args.size()) path = args[++i];
        else if (args[i] == "--tokenizer") fail("--tokenizer needs a value");
        else fail("unknown option " + args[i] + " for tokenize (usage: ./train tokenize [--tokenizer PATH])");
    }
    Tokenizer tok = load_tokenizer(path.empty() ? default_path("data/tokenizer.json") : path);
    std::string text((std::istreambuf_iterator<char>(std::cin)), std::istreambuf_iterator<char>());
    std::vector<int32_t> ids = tok.encode(text);
    std::string line;
    for (size_t i = 0; i < ids.size(); ++i) line += (i ? " " : "") + std::to_string(ids[i]);
    std::printf("%s\n", line.c_str());
    return 0;
}

int run_train(const Options& o) {
    Tokenizer tok = load_tokenizer(o.tokenizer);
    DataOptions dopt;
    dopt.seq_len = o.seq;
    dopt.train_on_prompt = o.train_on_prompt;
    dopt.chat_template = o.chat_template;
    dopt.pack = o.pack;
    Dataset train = load_dataset(o.data, tok, dopt);
    Dataset eval;
    if (o.eval_fraction > 0) eval = split_eval(train, o.eval_fraction, o.seed);
    else if (!o.eval_data.empty()) eval = load_dataset(o.eval_data, tok, dopt);
    print_data_summary("train", train);
    if (!eval.rows.empty()) print_data_summary("eval", eval);
    Loader loader(train, o.micro_batch, o.seq, 0, 1, o.seed, true, tok.special_id("<|end_of_text|>"));
    std::printf("data: %s micro-batches of %d x %d per epoch\n", thousands(loader.micro_batches_per_epoch()).c_str(),
                o.micro_batch, o.seq);
    if (o.dry_run) return 0;
    fail("this build has no model engine yet (llama.cu); use --dry-run to check the data");
}

}  // namespace

int main(int argc, char** argv) {
    std::vector<std::string> args(argv + 1, argv + argc);
    try {
        for (const std::string& a : args)
            if (a == "-h" || a == "--help") { std::fputs(kUsage, stdout); return 0; }
        if (!args.empty() && args[0] == "tokenize") return run_tokenize({args.begin() + 1, args.end()});
        return run_train(parse_options(args));
    } catch (const Error& e) {
        exit_with_error(e.what());
    }
}
