// bench/tokenize_bench.cpp — how fast the JSON reader and the tokenizer are on one core.
//   make bench && ./build/tokenize_bench [data/tokenizer.json, data/llama2_tokenizer.json or data/qwen3_tokenizer.json] [data/corpus]
// Prints one table: tokenizer.json load time, and encoding speed in MB/s over the corpus (cold: a fresh
// tokenizer with an empty piece cache; warm: the same text again).
#include <cstdio>
#include <dirent.h>

#include <algorithm>
#include <string>
#include <vector>

#include "support/common.h"
#include "data.h"

int main(int argc, char** argv) {
    std::string tok_path = argc > 1 ? argv[1] : "data/tokenizer.json", dir = argc > 2 ? argv[2] : "data/corpus";
    try {
        double t0 = wall_seconds();
        std::string raw = read_file(tok_path);
        double t1 = wall_seconds();
        Json parsed = parse_json(raw, tok_path);
        double t2 = wall_seconds();
        Tokenizer tok = Tokenizer::load(tok_path);
        double t3 = wall_seconds();

        std::vector<std::string> texts;
        size_t bytes = 0;
        DIR* d = opendir(dir.c_str());
        if (!d) fail("cannot open " + dir);
        std::vector<std::string> names;
        while (dirent* e = readdir(d))
            if (e->d_name[0] != '.') names.push_back(dir + "/" + e->d_name);
        closedir(d);
        std::sort(names.begin(), names.end());
        for (const auto& n : names) texts.push_back(read_file(n)), bytes += texts.back().size();

        size_t tokens = 0;
        double c0 = wall_seconds();
        for (const auto& t : texts) tokens += tok.encode(t).size();
        double c1 = wall_seconds();
        for (const auto& t : texts) tok.encode(t);
        double c2 = wall_seconds();

        std::printf("| what | value |\n|---|---|\n");
        std::printf("| tokenizer.json size | %.1f MB |\n", double(raw.size()) / 1e6);
        std::printf("| JSON parse of tokenizer.json | %.0f ms (read %.0f ms) |\n", (t2 - t1) * 1e3, (t1 - t0) * 1e3);
        std::printf("| Tokenizer::load (parse + build tables) | %.0f ms |\n", (t3 - t2) * 1e3);
        std::printf("| corpus | %zu files, %.2f MB, %zu tokens |\n", texts.size(), double(bytes) / 1e6, tokens);
        std::printf("| encode, cold cache, 1 core | %.1f MB/s |\n", double(bytes) / 1e6 / (c1 - c0));
        std::printf("| encode, warm cache, 1 core | %.1f MB/s |\n", double(bytes) / 1e6 / (c2 - c1));
    } catch (const Error& e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
}
