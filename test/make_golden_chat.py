#!/usr/bin/env python3
"""Makes the chat-template golden files from the real templates in test/golden/chat_templates/ (see its
README.md for where each came from) and the conversations in test/golden/chat_templates/conversations.json.

  --text OUT   the rendered text of every (template, conversation) with jinja2 alone, in the environment
               Hugging Face renders chat templates in (trim_blocks, lstrip_blocks, loop controls, the
               raise_exception and strftime_now globals, its tojson filter). Runs anywhere jinja2 is installed;
               writes test/golden/chat_text.json.
  DATA OUT     the token ids HF's apply_chat_template(tokenize=True) gives for the same cases, with transformers
               and the tokenizers in DATA (tokenizer.json: Llama-3; llama2_tokenizer.json: Llama-2;
               qwen3_tokenizer.json: Qwen3, skipped when absent), and the assistant mask: 1 on the tokens of
               each assistant turn, from the end of its header (Llama-3: <|start_header_id|>assistant
               <|end_header_id|>\\n\\n; Llama-2: [/INST]; Qwen3: <|im_start|>assistant\\n) through its end token
               (<|eot_id|>, </s>, <|im_end|>), found in HF's ids (a generation prompt marks nothing). It also checks that HF's rendered text equals
               the jinja2 text above. Run on the GPU machine; writes test/golden/chat_ids.json.

test/test_data.cpp (and support/chat_template.cpp's tests there) compare our rendering, ids and label masks
with these files.

    python3 test/make_golden_chat.py --text test/golden/chat_text.json
    python3 test/make_golden_chat.py data test/golden/chat_ids.json

Dates: the Llama-3.1 template's default date is "26 Jul 2024"; Llama-3.2's calls strftime_now, so its cases
are rendered with date_string = DATE below (HF would put in the machine's date). Qwen3's generation prompts
are rendered with enable_thinking=False (the empty think block), as ./train does.
"""
import datetime
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
TEMPLATES = os.path.join(HERE, "golden", "chat_templates")
DATE = "05 Mar 2025"

# template file, tokenizer file in DATA, bos_token, eos_token, assistant header, end token
CASES = [
    ("llama-3-instruct.jinja", "tokenizer.json", "<|begin_of_text|>", "<|eot_id|>", "<|start_header_id|>assistant<|end_header_id|>\n\n", "<|eot_id|>"),
    ("llama-3-instruct-first.jinja", "tokenizer.json", "<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>assistant<|end_header_id|>\n\n", "<|eot_id|>"),
    ("llama-3.1-instruct.jinja", "tokenizer.json", "<|begin_of_text|>", "<|eot_id|>", "<|start_header_id|>assistant<|end_header_id|>\n\n", "<|eot_id|>"),
    ("llama-3.2-instruct.jinja", "tokenizer.json", "<|begin_of_text|>", "<|eot_id|>", "<|start_header_id|>assistant<|end_header_id|>\n\n", "<|eot_id|>"),
    ("llama-2-chat.jinja", "llama2_tokenizer.json", "<s>", "</s>", "[/INST]", "</s>"),
    ("qwen3.jinja", "qwen3_tokenizer.json", None, "<|im_end|>", "<|im_start|>assistant\n", "<|im_end|>"),
]


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def template_kwargs(template_name, conversation):
    kwargs = {}
    if "strftime_now" in read(os.path.join(TEMPLATES, template_name)):
        kwargs["date_string"] = DATE
    if template_name.startswith("qwen3") and conversation["add_generation_prompt"]:
        kwargs["enable_thinking"] = False
    return kwargs


def render_jinja(template_text, conversation, bos, eos, kwargs):
    """The text, as HF's apply_chat_template(tokenize=False) renders it (transformers' chat template environment)."""
    import jinja2
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(fmt):
        return datetime.datetime.now().strftime(fmt)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    context = dict(messages=conversation["messages"], add_generation_prompt=conversation["add_generation_prompt"], **kwargs)
    if bos is not None:
        context["bos_token"] = bos
    context["eos_token"] = eos
    return env.from_string(template_text).render(**context)


def text_cases():
    conversations = json.loads(read(os.path.join(TEMPLATES, "conversations.json")))
    out = []
    for name, _, bos, eos, _, _ in CASES:
        template = read(os.path.join(TEMPLATES, name))
        for k, c in enumerate(conversations):
            kwargs = template_kwargs(name, c)
            out.append({"template": name, "conversation": k, "kwargs": kwargs, "text": render_jinja(template, c, bos, eos, kwargs)})
    return out


def assistant_mask(ids, header_ids, end_id):
    """1 from after each occurrence of the header's ids through the next end token; a header with no end token
    after it (a generation prompt) marks nothing."""
    mask = [0] * len(ids)
    t = 0
    while t < len(ids):
        if ids[t:t + len(header_ids)] != header_ids:
            t += 1
            continue
        t += len(header_ids)
        if end_id not in ids[t:]:
            break
        end = ids.index(end_id, t)
        for k in range(t, end + 1):
            mask[k] = 1
        t = end + 1
    return mask


def hf_tokenizer(path, bos, eos, template):
    try:
        from transformers import PreTrainedTokenizerFast
    except ImportError:  # transformers 5 names the tokenizers-backed class TokenizersBackend
        from transformers import TokenizersBackend as PreTrainedTokenizerFast
    special = {"eos_token": eos}
    if bos is not None:
        special["bos_token"] = bos
    tok = PreTrainedTokenizerFast(tokenizer_file=path, **special)
    tok.chat_template = template
    return tok


def id_list(out):
    """apply_chat_template's ids: a list, or (transformers 5's default) a BatchEncoding holding input_ids."""
    if hasattr(out, "keys"):
        out = out["input_ids"]
    out = list(out)
    if out and isinstance(out[0], list):
        out = out[0]
    return [int(x) for x in out]


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--text":
        with open(sys.argv[2], "w", encoding="utf-8") as f:
            json.dump({"date_string": DATE, "cases": text_cases()}, f, ensure_ascii=False, indent=1)
            f.write("\n")
        return
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    data_dir, out_path = sys.argv[1], sys.argv[2]
    import tokenizers
    import transformers

    conversations = json.loads(read(os.path.join(TEMPLATES, "conversations.json")))
    texts = {(c["template"], c["conversation"]): c["text"] for c in text_cases()}
    cases, skipped, mismatched = [], [], 0
    for name, tokenizer_file, bos, eos, header, end in CASES:
        path = os.path.join(data_dir, tokenizer_file)
        if not os.path.exists(path):
            skipped.append(name + " (no " + path + ")")
            continue
        template = read(os.path.join(TEMPLATES, name))
        tok = hf_tokenizer(path, bos, eos, template)
        header_ids = tok(header, add_special_tokens=False)["input_ids"]
        if name.startswith("llama-2"):  # "[/INST]" follows a space inside the template: its ids there
            header_ids = tok("a [/INST]", add_special_tokens=False)["input_ids"][-len(header_ids):]
        end_id = tok.convert_tokens_to_ids(end)
        for k, c in enumerate(conversations):
            kwargs = template_kwargs(name, c)
            text = tok.apply_chat_template(c["messages"], tokenize=False, add_generation_prompt=c["add_generation_prompt"], **kwargs)
            ids = id_list(tok.apply_chat_template(c["messages"], tokenize=True, add_generation_prompt=c["add_generation_prompt"], **kwargs))
            if text != texts[(name, k)]:
                mismatched += 1
                print(f"text differs from jinja2's: {name} conversation {k}\n  HF:     {text!r}\n  jinja2: {texts[(name, k)]!r}")
            if ids != tok(text, add_special_tokens=False)["input_ids"]:
                sys.exit(f"{name} conversation {k}: apply_chat_template's ids differ from tokenizing its text")
            cases.append({"template": name, "tokenizer": tokenizer_file, "conversation": k, "kwargs": kwargs, "text": text,
                          "ids": ids, "assistant_mask": assistant_mask(ids, header_ids, end_id)})
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump({"transformers": transformers.__version__, "tokenizers": tokenizers.__version__, "date_string": DATE,
                   "cases": cases}, f, ensure_ascii=False)
        f.write("\n")
    print(f"wrote {out_path}: {len(cases)} cases; skipped: {', '.join(skipped) or 'none'}; "
          f"{mismatched} texts differ from jinja2's")


if __name__ == "__main__":
    main()
