// test/main.cpp — the doctest runner. Prints the closing line "N passed, N failed, N skipped".
#define DOCTEST_CONFIG_IMPLEMENT
#include "test.h"

#include "support/cuda_calls.h"

#include <cstdio>
#include <cstdlib>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <set>

#include "data.h"

namespace {
std::set<std::string> skipped;  // names of test cases that skipped
int failed_cases = 0, run_cases = 0;

struct Counter : doctest::IReporter {
    explicit Counter(const doctest::ContextOptions&) {}
    void report_query(const doctest::QueryData&) override {}
    void test_run_start() override {}
    void test_run_end(const doctest::TestRunStats& stats) override {
        run_cases = int(stats.numTestCasesPassingFilters);
        failed_cases = int(stats.numTestCasesFailed);
    }
    void test_case_start(const doctest::TestCaseData&) override {}
    void test_case_reenter(const doctest::TestCaseData&) override {}
    void test_case_end(const doctest::CurrentTestCaseStats&) override {}
    void test_case_exception(const doctest::TestCaseException&) override {}
    void subcase_start(const doctest::SubcaseSignature&) override {}
    void subcase_end() override {}
    void log_assert(const doctest::AssertData&) override {}
    void log_message(const doctest::MessageData&) override {}
    void test_case_skipped(const doctest::TestCaseData&) override {}
};
REGISTER_LISTENER("counter", 1, Counter);

std::string run_dir() {
    static std::string dir = [] {
        char tmpl[] = "/tmp/lora_zero3_tests_XXXXXX";
        if (!mkdtemp(tmpl)) std::abort();
        return std::string(tmpl);
    }();
    return dir;
}
}  // namespace

Shell shell(const std::string& command) {
    FILE* p = popen(("(" + command + ") < /dev/null 2>&1").c_str(), "r");
    REQUIRE(p);
    std::string out;
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
    int status = pclose(p);
    return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

std::string temp_file(const std::string& name, const std::string& content) {
    std::string path = run_dir() + "/" + name;
    std::ofstream(path, std::ios::binary) << content;
    return path;
}

std::string temp_dir(const std::string& name) {
    std::string path = run_dir() + "/" + name;
    mkdir(path.c_str(), 0755);
    return path;
}

std::string random_text(uint64_t seed, size_t code_points) {
    Rng rng(seed);
    static const uint32_t pools[][2] = {{0x20, 0x7E}, {0x20, 0x7E}, {0x20, 0x7E}, {0x09, 0x0D}, {0xA0, 0x24F},
                                        {0x370, 0x3FF}, {0x400, 0x4FF}, {0x4E00, 0x9FFF}, {0x1F300, 0x1F6FF},
                                        {0x600, 0x6FF}, {0x900, 0x97F}, {0x3000, 0x303F}, {0x2000, 0x206F}};
    std::string out;
    for (size_t i = 0; i < code_points; ++i) {
        const uint32_t* pool = pools[rng.below(sizeof(pools) / sizeof(pools[0]))];
        uint32_t cp = pool[0] + uint32_t(rng.below(pool[1] - pool[0] + 1));
        if (cp >= 0xD800 && cp <= 0xDFFF) cp = 'x';
        append_utf8(out, cp);
    }
    return out;
}

bool has_warning(const std::string& output) {
    for (size_t at = output.find("warning"); at != std::string::npos; at = output.find("warning", at + 1)) {
        size_t end = output.find('\n', at);
        if (output.substr(at, end == std::string::npos ? std::string::npos : end - at).find("too few for CPU offload") == std::string::npos) return true;
    }
    return false;
}

void skip_test(const std::string& why) {
    std::string name = doctest::getContextOptions()->currentTest ? doctest::getContextOptions()->currentTest->m_name : "?";
    if (skipped.insert(name).second) std::printf("skipped: %s (%s)\n", name.c_str(), why.c_str());
}

bool need_gpu() {
    if (gpu_available()) return true;
    skip_test("no GPU");
    return false;
}

static Tokenizer load_fixture(const std::string& path) {
    if (access(path.c_str(), R_OK) != 0) FAIL(path << " is missing: run `make data` (or `bash data/fetch.sh`) first");
    return Tokenizer::load(path);
}
const Tokenizer& default_tokenizer() {
    static Tokenizer tok = load_fixture("data/tokenizer.json");
    return tok;
}
const Tokenizer& llama2_tokenizer() {
    static Tokenizer tok = load_fixture("data/llama2_tokenizer.json");
    return tok;
}
const Tokenizer& qwen3_tokenizer() {
    static Tokenizer tok = load_fixture("data/qwen3_tokenizer.json");
    return tok;
}

std::vector<int32_t> ids_of(const Json& array) {
    std::vector<int32_t> ids;
    for (const Json& x : array.array) ids.push_back(int32_t(x.integer));
    return ids;
}

std::string ids_fnv1a(const std::vector<int32_t>& ids) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (int32_t id : ids)
        for (int k = 0; k < 4; ++k) h = (h ^ ((uint32_t(id) >> (8 * k)) & 0xff)) * 0x100000001b3ull;
    char buf[17];
    std::snprintf(buf, sizeof buf, "%016llx", (unsigned long long)h);
    return buf;
}

void check_golden_files(const Tokenizer& tok, const Json& files) {
    int checked = 0;
    for (const Json& f : files.array) {
        std::string path = "data/" + f.find("file")->string;
        if (access(path.c_str(), R_OK) != 0) FAIL("missing " << path << ": run `make data`");
        std::vector<int32_t> ids = tok.encode(read_file(path));
        CAPTURE(path);
        CHECK(int64_t(ids.size()) == f.find("count")->integer);
        CHECK(ids_fnv1a(ids) == f.find("fnv1a")->string);
        ++checked;
    }
    CHECK(checked > 100);
}

void check_golden_texts(const Tokenizer& tok, const Json& golden, int min_cases) {
    int checked = 0;
    for (const Json& c : golden.find("cases")->array) {
        const std::string& text = c.find("text")->string;
        CAPTURE(text);
        std::vector<int32_t> expected = ids_of(*c.find("ids"));
        CHECK(tok.encode(text) == expected);
        CHECK(tok.encode_ordinary(text) == ids_of(*c.find("ordinary_ids")));
        CHECK(tok.decode(expected) == c.find("decoded")->string);
        ++checked;
    }
    CHECK(checked >= min_cases);
    for (const Json& c : golden.find("decode")->array) {
        CAPTURE(c.find("text")->string);
        CHECK(tok.decode(ids_of(*c.find("ids"))) == c.find("text")->string);
    }
    for (const Json& c : golden.find("invalid_utf8")->array) {
        std::string hex = c.find("bytes_hex")->string, bytes;
        for (size_t i = 0; i + 1 < hex.size(); i += 2) bytes += char(std::stoi(hex.substr(i, 2), nullptr, 16));
        CAPTURE(hex);
        CHECK(tok.encode(bytes) == ids_of(*c.find("ids")));
    }
}

int main(int argc, char** argv) {
    doctest::Context context;
    context.applyCommandLine(argc, argv);
    int status = context.run();
    if (context.shouldExit()) return status;
    int skip = int(skipped.size());
    std::printf("%d passed, %d failed, %d skipped\n", run_cases - failed_cases - skip, failed_cases, skip);
    return status;
}
