// support/chat_template.h — the chat templates of the model families this program trains, rendered as Hugging
// Face's apply_chat_template renders the model's own Jinja template, character for character, without a Jinja
// engine: the template text (the model directory's chat_template.jinja or tokenizer_config.json's
// chat_template) is recognised by substrings only it has, and its output for plain system/user/assistant
// conversations is written out here, turn by turn:
//   Llama-3.0      BOS <|start_header_id|>{role}<|end_header_id|>\n\n{content|trim}<|eot_id|> ... per message
//   Llama-3.1/3.2  BOS, a system turn "Cutting Knowledge Date: December 2023\nToday Date: {date}\n\n{system|trim}",
//                  then the other messages as Llama-3.0 writes them
//   Llama-2        BOS [INST] {<<SYS>>\n{system}\n<</SYS>>\n\n}{user}.strip() [/INST] {answer.strip()} EOS ...
//   Qwen3          <|im_start|>{role}\n{content}<|im_end|>\n ...; the answers after the last user turn start with
//                  <think>\n{reasoning}\n</think>\n\n (empty for a non-thinking answer)
// and with add_generation_prompt the assistant's header (Qwen3: followed by the empty think block, the
// non-thinking mode). Tools, images and roles other than system/user/assistant are refused.
// The rendering comes in pieces; an assistant turn's piece (its content through its end-of-turn token) is
// marked, and that is what takes the loss. Knows nothing of datasets, tokenization or CUDA.
#pragma once
#include <string>
#include <utility>
#include <vector>

class Tokenizer;

struct ChatMessage {
    std::string role;               // "system", "user" or "assistant"
    std::string content;
    bool has_reasoning = false;     // Qwen3: the message's reasoning_content (else taken from <think>...</think>)
    std::string reasoning;
    ChatMessage() = default;
    ChatMessage(std::string r, std::string c) : role(std::move(r)), content(std::move(c)) {}
};

enum class ChatFamily { none, llama3, llama3_dated, llama2, qwen3 };

struct ChatTemplate {
    ChatFamily family = ChatFamily::none;
    std::string name;                // "Llama-3.1/3.2 (Today Date: 26 Jul 2024)", for the data summary
    std::string source;              // where it was found: a file, or the tokenizer's special tokens
    std::string problem = "no chat template";  // family none: why (said when a row needs a template)
    bool generation_prompt_always = false;  // Llama-3.0's first template: every rendering ends with the header
    std::string date;                // llama3_dated: the "Today Date:" value (chat_template_date)
    std::string bos_token, eos_token;  // the strings the template writes (Llama-2 and Llama-3 use BOS; Llama-2 EOS)
};

// A piece of the rendered text; `assistant`: an assistant turn's content through its end-of-turn token.
struct ChatPiece {
    std::string text;
    bool assistant = false;
};

// The rendering of `messages`, as HF's apply_chat_template(messages, add_generation_prompt=...) gives it, in
// pieces. Fails naming `where` on a conversation the template refuses (Llama-2: roles must alternate
// user/assistant, a system message only first) and on a template of family none.
std::vector<ChatPiece> render_chat(const ChatTemplate& t, const std::vector<ChatMessage>& messages,
                                   bool add_generation_prompt, const std::string& where);

// The special tokens the rendering writes, which the tokenizer must have (BOS, the headers, the end tokens).
std::vector<std::string> chat_template_tokens(const ChatTemplate& t);

// Which template `text` is (family none, with `problem` saying so, when it is none we render).
ChatTemplate recognize_chat_template(const std::string& text, const std::string& source);

// The model's template: MODEL_DIR/chat_template.jinja, else tokenizer_config.json's chat_template (a string,
// or the "default" entry of a list of {"name", "template"}), recognised; when the directory has neither (or
// model_dir is ""), the one the tokenizer's special tokens imply: <|im_start|> Qwen3, <|start_header_id|>
// Llama-3.0, a SentencePiece-style tokenizer Llama-2. bos_token and eos_token are the tokenizer's strings.
ChatTemplate model_chat_template(const std::string& model_dir, const Tokenizer& tok, const std::string& bos_token,
                                 const std::string& eos_token);

// The Llama-3.1/3.2 date, as HF chooses it when apply_chat_template is given no date_string: a template that
// calls strftime_now (Llama-3.2) gets today's local date as "%d %b %Y" (HF defines strftime_now as
// datetime.now().strftime), one that does not (Llama-3.1) its own default, "26 Jul 2024".
std::string chat_template_date(const std::string& template_text);

// Python's str.strip() (Jinja's trim): drops leading and trailing Unicode white space.
std::string python_strip(const std::string& s);
