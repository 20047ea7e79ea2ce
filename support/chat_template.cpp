// support/chat_template.cpp — the model families' chat templates (see chat_template.h): which one a model
// directory has, and its rendering of a conversation, piece by piece, as HF's Jinja rendering writes it.
#include "support/chat_template.h"

#include <ctime>
#include <unistd.h>

#include "support/common.h"
#include "support/json.h"
#include "support/tokenizer.h"

namespace {

// Whether the template text holds `piece`. Its string literals may spell a newline as the two characters \n
// (Llama-3.1's, Llama-2's) or hold the newline itself (Llama-3.0's): `piece` spells it \n and matches both.
bool has(const std::string& text, const char* piece) {
    std::string raw = piece;
    for (size_t at; (at = raw.find("\\n")) != std::string::npos;) raw.replace(at, 2, "\n");
    return text.find(piece) != std::string::npos || text.find(raw) != std::string::npos;
}
bool starts_with(const std::string& s, const std::string& p) { return s.compare(0, p.size(), p) == 0; }
bool ends_with(const std::string& s, const std::string& p) {
    return s.size() >= p.size() && s.compare(s.size() - p.size(), p.size(), p) == 0;
}

// Python's str.strip('\n'), lstrip('\n') and rstrip('\n') (Qwen3's template).
std::string lstrip_newlines(const std::string& s) { return s.substr(std::min(s.size(), s.find_first_not_of('\n'))); }
std::string rstrip_newlines(const std::string& s) {
    size_t end = s.find_last_not_of('\n');
    return end == std::string::npos ? "" : s.substr(0, end + 1);
}
std::string strip_newlines(const std::string& s) { return rstrip_newlines(lstrip_newlines(s)); }

void add(std::vector<ChatPiece>& out, std::string text, bool assistant = false) { out.push_back({std::move(text), assistant}); }

// ------------------------------------------------------------------------------------- the families' renderings

// Llama-3.0 (Meta-Llama-3-8B-Instruct): every message is a turn; BOS before the first.
//   {% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}
// Llama-3.1/3.2 write the same turns after their system turn (no BOS there: it is written once, first).
void llama3_turns(std::vector<ChatPiece>& out, const std::vector<ChatMessage>& m, size_t first, const std::string& bos) {
    for (size_t i = first; i < m.size(); ++i) {
        std::string header = (out.empty() ? bos : "") + "<|start_header_id|>" + m[i].role + "<|end_header_id|>\n\n";
        std::string body = python_strip(m[i].content) + "<|eot_id|>";
        if (m[i].role == "assistant") add(out, header), add(out, body, true);
        else add(out, header + body);
    }
}

std::vector<ChatPiece> render_llama3(const ChatTemplate& t, const std::vector<ChatMessage>& m, bool generation_prompt) {
    std::vector<ChatPiece> out;
    size_t first = 0;
    if (t.family == ChatFamily::llama3_dated) {  // the system turn is always there; a system message's text ends it
        std::string system = !m.empty() && m[0].role == "system" ? python_strip(m[0].content) : "";
        first = !m.empty() && m[0].role == "system";
        add(out, t.bos_token + "<|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n"
                 "Today Date: " + t.date + "\n\n" + system + "<|eot_id|>");
    }
    llama3_turns(out, m, first, t.bos_token);
    if (generation_prompt || t.generation_prompt_always) add(out, "<|start_header_id|>assistant<|end_header_id|>\n\n");
    return out;
}

// Llama-2 (Llama-2-7b-chat-hf): user turns "<s>[INST] {content.strip()} [/INST]", answers " {content.strip()} </s>";
// a system message goes inside the first user turn. The template raises an error unless the roles alternate
// user/assistant/... after the system message; it would drop a later system message, which we refuse.
std::vector<ChatPiece> render_llama2(const ChatTemplate& t, const std::vector<ChatMessage>& m, const std::string& where) {
    std::vector<ChatPiece> out;
    bool system = !m.empty() && m[0].role == "system";
    for (size_t i = system, k = 0; i < m.size(); ++i, ++k) {
        if (m[i].role == "system")
            fail(where + ": the Llama-2 chat template takes a system message only first (message " + std::to_string(i + 1) + ")");
        if ((m[i].role == "user") != (k % 2 == 0))
            fail(where + ": the Llama-2 chat template needs the roles to alternate user/assistant/user/assistant/... (message " +
                 std::to_string(i + 1) + " is " + m[i].role + ")");
        std::string content = k == 0 && system ? "<<SYS>>\n" + m[0].content + "\n<</SYS>>\n\n" + m[i].content : m[i].content;
        if (m[i].role == "user") add(out, t.bos_token + "[INST] " + python_strip(content) + " [/INST]");
        else add(out, " " + python_strip(content) + " " + t.eos_token, true);
    }
    return out;
}

// Qwen3 (its hybrid thinking template): ChatML turns "<|im_start|>{role}\n{content}<|im_end|>\n", contents as
// they are. An answer's reasoning is its reasoning_content, else the text between <think> and </think> (the
// content keeps what follows </think>). An answer after the last user turn (tool responses aside) that is the
// last message or has reasoning is written "<think>\n{reasoning.strip('\n')}\n</think>\n\n{content.lstrip('\n')}";
// every other answer as its content alone (earlier reasoning is dropped).
std::vector<ChatPiece> render_qwen3(const std::vector<ChatMessage>& m, bool generation_prompt) {
    std::vector<ChatPiece> out;
    size_t last_query = m.size() - 1;  // ns.last_query_index: the last user turn that is not a tool response
    for (size_t i = m.size(); i-- > 0;)
        if (m[i].role == "user" && !(starts_with(m[i].content, "<tool_response>") && ends_with(m[i].content, "</tool_response>"))) {
            last_query = i;
            break;
        }
    for (size_t i = 0; i < m.size(); ++i) {
        if (m[i].role != "assistant") {
            add(out, "<|im_start|>" + m[i].role + "\n" + m[i].content + "<|im_end|>\n");
            continue;
        }
        std::string content = m[i].content, reasoning = m[i].has_reasoning ? m[i].reasoning : "";
        size_t close = content.find("</think>");
        if (!m[i].has_reasoning && close != std::string::npos) {
            std::string before = rstrip_newlines(content.substr(0, close));
            size_t open = before.rfind("<think>");
            reasoning = lstrip_newlines(open == std::string::npos ? before : before.substr(open + 7));
            content = lstrip_newlines(content.substr(content.rfind("</think>") + 8));
        }
        bool think = i > last_query && (i + 1 == m.size() || !reasoning.empty());
        add(out, "<|im_start|>assistant\n");
        add(out, (think ? "<think>\n" + strip_newlines(reasoning) + "\n</think>\n\n" + lstrip_newlines(content) : content) + "<|im_end|>", true);
        add(out, "\n");
    }
    if (generation_prompt) add(out, "<|im_start|>assistant\n<think>\n\n</think>\n\n");  // enable_thinking=False
    return out;
}

std::string today() {
    char buf[32];
    std::time_t now = std::time(nullptr);
    std::tm local{};
    localtime_r(&now, &local);
    std::strftime(buf, sizeof buf, "%d %b %Y", &local);  // the C locale's month names, as Python's strftime
    return buf;
}

ChatTemplate family(ChatFamily f, const std::string& name, const std::string& source) {
    ChatTemplate t;
    t.family = f, t.name = name, t.source = source;
    return t;
}

}  // namespace

std::string python_strip(const std::string& s) {
    auto space = [](uint32_t cp) {  // str.isspace(): white space, and the separators \x1c-\x1f
        return (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x20) || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
               (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
    };
    size_t begin = 0, end = s.size(), n, bad;
    uint32_t cp;
    while (begin < end && (n = utf8_decode(s, begin, cp, bad)) && space(cp)) begin += n;
    while (end > begin) {
        size_t j = end - 1;
        while (j > begin && (static_cast<unsigned char>(s[j]) & 0xC0) == 0x80) --j;
        if (!(n = utf8_decode(s, j, cp, bad)) || !space(cp)) break;
        end = j;
    }
    return s.substr(begin, end - begin);
}

std::vector<ChatPiece> render_chat(const ChatTemplate& t, const std::vector<ChatMessage>& messages, bool add_generation_prompt,
                                   const std::string& where) {
    if (messages.empty()) fail(where + ": the conversation has no messages");
    for (size_t i = 0; i < messages.size(); ++i)
        if (messages[i].role != "system" && messages[i].role != "user" && messages[i].role != "assistant")
            fail(where + ": message " + std::to_string(i + 1) + " has role " + json_quote(messages[i].role) +
                 " (roles are \"system\", \"user\" and \"assistant\")");
    switch (t.family) {
        case ChatFamily::llama3:
        case ChatFamily::llama3_dated: return render_llama3(t, messages, add_generation_prompt);
        case ChatFamily::llama2: return render_llama2(t, messages, where);
        case ChatFamily::qwen3: return render_qwen3(messages, add_generation_prompt);
        case ChatFamily::none: break;
    }
    fail(where + ": " + t.problem);
}

std::vector<std::string> chat_template_tokens(const ChatTemplate& t) {
    switch (t.family) {
        case ChatFamily::llama3:
        case ChatFamily::llama3_dated: return {t.bos_token, "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"};
        case ChatFamily::llama2: return {t.bos_token, t.eos_token};
        case ChatFamily::qwen3: return {"<|im_start|>", "<|im_end|>"};
        case ChatFamily::none: break;
    }
    return {};
}

std::string chat_template_date(const std::string& text) {
    if (has(text, "strftime_now(")) return today();
    const std::string key = "set date_string = \"";
    size_t at = text.find(key), end = at == std::string::npos ? at : text.find('"', at + key.size());
    return end == std::string::npos ? "26 Jul 2024" : text.substr(at + key.size(), end - at - key.size());
}

ChatTemplate recognize_chat_template(const std::string& text, const std::string& source) {
    // Each family's tell-tale lines, as the template text spells them.
    if (has(text, "<|im_start|>") && has(text, "ns.last_query_index") &&
        has(text, "'\\n<think>\\n' + reasoning_content.strip('\\n') + '\\n</think>\\n\\n' + content.lstrip('\\n')") &&
        has(text, "enable_thinking is defined and enable_thinking is false"))
        return family(ChatFamily::qwen3, "Qwen3", source);
    bool llama3_turn = has(text, "'<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>'");
    if (llama3_turn && has(text, "Cutting Knowledge Date: December 2023\\n") && has(text, "\"Today Date: \" + date_string") &&
        has(text, "set date_string = \"") && has(text, "messages[0]['content']|trim") && !has(text, "<|image|>")) {
        ChatTemplate t = family(ChatFamily::llama3_dated, "Llama-3.1/3.2", source);
        t.date = chat_template_date(text);
        t.name += " (Today Date: " + t.date + (has(text, "strftime_now(") ? ", today's, as HF's strftime_now" : "") + ")";
        return t;
    }
    if (llama3_turn && has(text, "'<|start_header_id|>' + message['role'] + '<|end_header_id|>") &&
        has(text, "set content = bos_token + content") && !has(text, "Cutting Knowledge")) {
        ChatTemplate t = family(ChatFamily::llama3, "Llama-3.0", source);
        t.generation_prompt_always = !has(text, "add_generation_prompt");
        if (t.generation_prompt_always) t.name += " (its first version: every rendering ends with the assistant header)";
        return t;
    }
    if (has(text, "bos_token + '[INST] ' + content.strip() + ' [/INST]'") &&
        has(text, "'<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content']") &&
        has(text, "+ content.strip() + ' ' + eos_token") && has(text, "Conversation roles must alternate user/assistant") &&
        !has(text, "DEFAULT_SYSTEM_MESSAGE"))
        return family(ChatFamily::llama2, "Llama-2", source);
    ChatTemplate t = family(ChatFamily::none, "", source);
    t.problem = source + ": its chat template is none that this program renders (Llama-3.0, Llama-3.1/3.2, Llama-2, Qwen3); "
                "give rows as {\"text\"} or pre-tokenized {\"input_ids\", \"labels\"} instead";
    return t;
}

ChatTemplate model_chat_template(const std::string& model_dir, const Tokenizer& tok, const std::string& bos_token,
                                 const std::string& eos_token) {
    ChatTemplate t;
    std::string jinja = model_dir + "/chat_template.jinja", config = model_dir + "/tokenizer_config.json";
    Json file;  // tokenizer_config.json, when it has a chat_template
    if (!model_dir.empty() && access(config.c_str(), R_OK) == 0) file = read_json_file(config);
    const Json* text = file.find("chat_template");
    if (!model_dir.empty() && access(jinja.c_str(), R_OK) == 0) {  // transformers 4.50+ saves the template here
        t = recognize_chat_template(read_file(jinja), jinja);
    } else if (text) {
        if (text->type == Json::Array) {  // named templates: HF uses "default"
            const Json* named = nullptr;
            for (const Json& entry : text->array)
                if (const Json* name = entry.find("name"); name && name->is_string() && name->string == "default") named = entry.find("template");
            text = named;
        }
        if (text && text->is_string()) t = recognize_chat_template(text->string, config);
        else t.source = config, t.problem = config + ": chat_template must be a string or a list holding {\"name\": \"default\", \"template\": ...}";
    } else if (tok.token_id("<|im_start|>") >= 0 && tok.token_id("<|im_end|>") >= 0) {
        t = family(ChatFamily::qwen3, "Qwen3", tok.path() + " (no chat template given; its <|im_start|> token implies Qwen3's)");
    } else if (tok.token_id("<|start_header_id|>") >= 0) {
        t = family(ChatFamily::llama3, "Llama-3.0", tok.path() + " (no chat template given; its <|start_header_id|> token implies Llama-3.0's)");
    } else if (tok.family() == TokenizerFamily::llama2) {
        t = family(ChatFamily::llama2, "Llama-2", tok.path() + " (no chat template given; a SentencePiece-style tokenizer implies Llama-2's)");
    } else {
        t.source = tok.path();
        t.problem = "no chat template given, and " + tok.path() + " implies none (pass --model with a chat template)";
    }
    t.bos_token = bos_token, t.eos_token = eos_token;
    return t;
}
