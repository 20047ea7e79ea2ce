// test/test_chat_template.cpp — the chat templates (support/chat_template.h) against the real ones: each stored
// template (test/golden/chat_templates/) is recognised as its family, our rendering of every stored
// conversation equals jinja2's rendering of the template (test/golden/chat_text.json), and our ids and label
// masks equal HF's apply_chat_template ids and the assistant tokens (test/golden/chat_ids.json, made on the
// GPU machine by test/make_golden_chat.py; skipped while absent). Also where the template comes from (the
// model directory's files, else the tokenizer) and each conversation a template refuses.
#include "test.h"

#include <algorithm>
#include <ctime>
#include <memory>

#include "data.h"

namespace {

const std::string kTemplates = "test/golden/chat_templates/";

std::string template_text(const std::string& name) { return read_file(kTemplates + name); }

// A stored template, recognised, with the tokens HF passes it (the tokenizer's bos_token and eos_token).
ChatTemplate stored(const std::string& name) {
    ChatTemplate t = recognize_chat_template(template_text(name), kTemplates + name);
    bool llama2 = t.family == ChatFamily::llama2;
    t.bos_token = llama2 ? "<s>" : t.family == ChatFamily::qwen3 ? "" : "<|begin_of_text|>";
    t.eos_token = llama2 ? "</s>" : t.family == ChatFamily::qwen3 ? "<|im_end|>" : "<|eot_id|>";
    return t;
}

std::vector<ChatMessage> messages_of(const Json& conversation) {
    std::vector<ChatMessage> out;
    for (const Json& m : conversation.find("messages")->array) out.emplace_back(m.find("role")->string, m.find("content")->string);
    return out;
}

std::string joined(const std::vector<ChatPiece>& pieces) {
    std::string s;
    for (const ChatPiece& p : pieces) s += p.text;
    return s;
}

std::string today() {
    char buf[32];
    std::time_t now = std::time(nullptr);
    std::tm local{};
    localtime_r(&now, &local);
    std::strftime(buf, sizeof buf, "%d %b %Y", &local);
    return buf;
}

// The golden case's template, with the date_string the golden script passed (Llama-3.2: a fixed date).
ChatTemplate golden_template(const Json& c) {
    ChatTemplate t = stored(c.find("template")->string);
    if (const Json* date = c.find("kwargs")->find("date_string")) t.date = date->string;
    return t;
}

}  // namespace

TEST_CASE("chat template: each stored template is recognised as its family") {
    ChatTemplate l3 = stored("llama-3-instruct.jinja"), first = stored("llama-3-instruct-first.jinja");
    CHECK((l3.family == ChatFamily::llama3 && !l3.generation_prompt_always));
    CHECK((first.family == ChatFamily::llama3 && first.generation_prompt_always));
    ChatTemplate l31 = stored("llama-3.1-instruct.jinja"), l32 = stored("llama-3.2-instruct.jinja");
    CHECK(l31.family == ChatFamily::llama3_dated);
    CHECK(l31.date == "26 Jul 2024");  // its default; it never calls strftime_now
    CHECK(l32.family == ChatFamily::llama3_dated);
    CHECK(l32.date == today());  // HF defines strftime_now, so Llama-3.2's template takes today's date
    CHECK(l32.name.find("Today Date: " + today()) != std::string::npos);
    CHECK(stored("llama-2-chat.jinja").family == ChatFamily::llama2);
    CHECK(stored("qwen3.jinja").family == ChatFamily::qwen3);

    // Near misses are no family: the Llama-3.2 vision template (images, untrimmed contents), a Mistral
    // template ([INST] without <<SYS>>), a Llama-3 template whose turns are not trimmed.
    std::string vision = template_text("llama-3.2-instruct.jinja") + "{{- '<|image|>' }}";
    std::string mistral = "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}{{ '[INST] ' + "
                          "message['content'] + ' [/INST]' }}{% else %}{{ message['content'] + eos_token }}{% endif %}{% endfor %}";
    std::string untrimmed = template_text("llama-3-instruct.jinja");
    untrimmed.replace(untrimmed.find(" | trim"), 7, "");
    for (const std::string& text : {vision, mistral, untrimmed, std::string("{{ messages }}")}) {
        ChatTemplate t = recognize_chat_template(text, "model/tokenizer_config.json");
        CHECK(t.family == ChatFamily::none);
        CHECK(t.problem.find("model/tokenizer_config.json: its chat template is none that this program renders") == 0);
        CHECK_THROWS_WITH_AS(render_chat(t, {{"user", "hi"}}, true, "row 1"),
                             doctest::Contains("row 1: model/tokenizer_config.json: its chat template is none"), Error);
    }
}

TEST_CASE("chat template: our rendering equals jinja2's rendering of every stored template") {
    Json golden = read_json_file("test/golden/chat_text.json");
    Json conversations = read_json_file(kTemplates + "conversations.json");
    size_t cases = 0;
    for (const Json& c : golden.find("cases")->array) {
        const Json& conversation = conversations.array[size_t(c.find("conversation")->integer)];
        bool generation_prompt = conversation.find("add_generation_prompt")->boolean;
        CAPTURE(c.find("template")->string);
        CAPTURE(conversation.find("name")->string);
        std::vector<ChatPiece> pieces = render_chat(golden_template(c), messages_of(conversation), generation_prompt, "test");
        CHECK(joined(pieces) == c.find("text")->string);
        ++cases;
    }
    CHECK(cases == 6 * conversations.array.size());
}

TEST_CASE("chat template: ids and assistant masks equal HF's apply_chat_template") {
    if (!exists("test/golden/chat_ids.json")) {
        skip_test("test/golden/chat_ids.json is absent: make it on the GPU machine with "
                  "python3 test/make_golden_chat.py data test/golden/chat_ids.json");
        return;
    }
    Json golden = read_json_file("test/golden/chat_ids.json");
    Json conversations = read_json_file(kTemplates + "conversations.json");
    size_t compared = 0;
    for (const Json& c : golden.find("cases")->array) {
        const std::string& file = c.find("tokenizer")->string;
        CAPTURE(file);
        REQUIRE((file == "tokenizer.json" || file == "llama2_tokenizer.json" || file == "qwen3_tokenizer.json"));
        const Tokenizer& tok = file == "tokenizer.json" ? default_tokenizer() : file == "llama2_tokenizer.json" ? llama2_tokenizer() : qwen3_tokenizer();
        const Json& conversation = conversations.array[size_t(c.find("conversation")->integer)];
        CAPTURE(c.find("template")->string);
        CAPTURE(conversation.find("name")->string);
        Example ex = chat_example(tok, golden_template(c), messages_of(conversation),
                                  conversation.find("add_generation_prompt")->boolean, false);
        std::vector<int32_t> ids = ids_of(*c.find("ids")), mask;
        for (const Json& m : c.find("assistant_mask")->array) mask.push_back(int32_t(m.integer));
        CHECK(ex.ids == ids);
        std::vector<int32_t> ours;
        for (int32_t label : ex.labels) ours.push_back(label != kIgnoreIndex);
        CHECK(ours == mask);
        ++compared;
    }
    CHECK(compared == golden.find("cases")->array.size());
    CHECK(compared == 6 * conversations.array.size());  // each of the six templates on every conversation
}

TEST_CASE("chat template: the model directory's chat_template.jinja or tokenizer_config.json, else the tokenizer's") {
    const Tokenizer& tok = default_tokenizer();
    uint64_t seed = uint64_t(time(nullptr));
    std::string name = "chat_model_" + std::to_string(seed), dir = temp_dir(name);
    auto config = [&](const std::string& chat_template) {
        temp_file(name + "/tokenizer_config.json", "{\"bos_token\": \"<|begin_of_text|>\", \"chat_template\": " + chat_template + "}");
    };
    config(json_quote(template_text("llama-3.1-instruct.jinja")));
    ModelTokens mt = model_tokens(tok, dir);
    CHECK(mt.chat.family == ChatFamily::llama3_dated);
    CHECK(mt.chat.date == "26 Jul 2024");
    CHECK(mt.chat.source == dir + "/tokenizer_config.json");
    CHECK(mt.chat.bos_token == "<|begin_of_text|>");
    config("[{\"name\": \"tool_use\", \"template\": \"{{ x }}\"}, {\"name\": \"default\", \"template\": " +
           json_quote(template_text("llama-3-instruct.jinja")) + "}]");
    CHECK(model_tokens(tok, dir).chat.family == ChatFamily::llama3);
    config("[{\"name\": \"tool_use\", \"template\": \"{{ x }}\"}]");
    CHECK(model_tokens(tok, dir).chat.problem.find("chat_template must be a string or a list holding") != std::string::npos);
    config("5");
    CHECK(model_tokens(tok, dir).chat.family == ChatFamily::none);
    temp_file(name + "/chat_template.jinja", template_text("llama-3.2-instruct.jinja"));  // transformers 4.50+: wins
    ModelTokens jinja = model_tokens(tok, dir);
    CHECK(jinja.chat.family == ChatFamily::llama3_dated);
    CHECK(jinja.chat.source == dir + "/chat_template.jinja");

    // No template in the directory: the tokenizer's special tokens say which.
    CHECK(model_tokens(tok, temp_dir("chat_model_none_" + std::to_string(seed))).chat.family == ChatFamily::llama3);
    CHECK(model_tokens(llama2_tokenizer(), "").chat.family == ChatFamily::llama2);

    // A template we cannot render fails only when a row needs it: text rows still load.
    std::string unknown = "chat_model_unknown_" + std::to_string(seed), udir = temp_dir(unknown);
    temp_file(unknown + "/tokenizer_config.json", "{\"chat_template\": \"{{ messages }}\"}");
    ModelTokens u = model_tokens(tok, udir);
    DataOptions opt;
    opt.tokens = &u;
    CHECK(load_dataset(temp_file("unknown_text.jsonl", "{\"text\": \"fine\"}\n"), tok, opt).rows.size() == 1);
    CHECK_THROWS_WITH_AS(
        load_dataset(temp_file("unknown_chat.jsonl", "{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}, "
                                                      "{\"role\": \"assistant\", \"content\": \"b\"}]}\n"), tok, opt),
        doctest::Contains(("unknown_chat.jsonl:1: " + udir + "/tokenizer_config.json: its chat template is none that this program "
                          "renders (Llama-3.0, Llama-3.1/3.2, Llama-2, Qwen3)").c_str()), Error);
}

TEST_CASE("chat template: conversations a template refuses") {
    ChatTemplate l2 = stored("llama-2-chat.jinja"), l3 = stored("llama-3-instruct.jinja");
    CHECK_THROWS_WITH_AS(render_chat(l2, {{"user", "a"}, {"user", "b"}}, false, "row 3"),
                         doctest::Contains("row 3: the Llama-2 chat template needs the roles to alternate user/assistant/"
                                           "user/assistant/... (message 2 is user)"), Error);
    CHECK_THROWS_WITH_AS(render_chat(l2, {{"assistant", "a"}}, false, "row 3"), doctest::Contains("(message 1 is assistant)"), Error);
    CHECK_THROWS_WITH_AS(render_chat(l2, {{"user", "a"}, {"assistant", "b"}, {"system", "c"}}, false, "row 3"),
                         doctest::Contains("row 3: the Llama-2 chat template takes a system message only first (message 3)"), Error);
    CHECK_THROWS_WITH_AS(render_chat(l3, {{"user", "a"}, {"tool", "b"}}, false, "row 4"),
                         doctest::Contains("row 4: message 2 has role \"tool\""), Error);
    CHECK_THROWS_WITH_AS(render_chat(l3, {}, true, "row 5"), doctest::Contains("row 5: the conversation has no messages"), Error);
    CHECK_NOTHROW(render_chat(l3, {{"user", "a"}, {"user", "b"}}, true, "row 6"));  // Llama-3's template checks no order
}

TEST_CASE("chat template: the loss is on the assistant turns' tokens, every token with train_on_prompt") {
    const Tokenizer& tok = default_tokenizer();
    std::vector<ChatMessage> m = {{"system", "Be brief."}, {"user", "Hi"}, {"assistant", " Hello! "}, {"user", "Bye"}, {"assistant", "Bye."}};
    for (const char* name : {"llama-3-instruct.jinja", "llama-3.1-instruct.jinja", "llama-3-instruct-first.jinja"}) {
        CAPTURE(std::string(name));
        ChatTemplate t = stored(name);
        Example ex = chat_example(tok, t, m, false, false);
        CHECK(ex.ids == tok.encode(joined(render_chat(t, m, false, "test"))));
        std::vector<std::string> runs;  // the decoded runs of tokens that take loss
        for (size_t k = 0; k < ex.labels.size(); ++k) {
            if (ex.labels[k] == kIgnoreIndex) continue;
            if (k == 0 || ex.labels[k - 1] == kIgnoreIndex) runs.emplace_back();
            runs.back() += tok.decode({ex.labels[k]});
        }
        CHECK(runs == std::vector<std::string>{"Hello!<|eot_id|>", "Bye.<|eot_id|>"});
        CHECK(chat_example(tok, t, m, false, true).labels == ex.ids);
        Example skip = chat_example(tok, t, m, false, false, "test", 1);  // the first answer is part of a prompt
        CHECK(std::count_if(skip.labels.begin(), skip.labels.end(), [](int32_t l) { return l != kIgnoreIndex; }) ==
              long(tok.encode("Bye.<|eot_id|>").size()));
    }
    std::vector<int32_t> prompt = prompt_ids(tok, model_tokens(tok, ""), "What is a harbor?", true);
    CHECK(prompt == tok.encode("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nWhat is a harbor?<|eot_id|>"
                               "<|start_header_id|>assistant<|end_header_id|>\n\n"));
}
