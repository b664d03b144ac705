"""Prompt templates: each task turns a data file into trl's formats (prompt + completion, or plain text).

- stories-tags: TinyStories Instruct prompts (`Features:`, `Words:`, `Summary:`, then `Story:`); loss on the story.
- lm: plain text for domain-adaptive pretraining (the shared sonnets are cleaned of headings and line numbers), or
  one field of JSONL, JSON or parquet rows.
- instruct: the Alpaca template, `User:`/`Assistant:` turns, or the tokenizer's own chat template; loss on answers.
  Rows hold prompt/answer, instruction/output, chat `messages`, or one `conversation` string of `User:` /
  `Assistant:` turns.
"""

from __future__ import annotations

import hashlib
import itertools
import random
import re
from pathlib import Path

from talelab.data.sources import detect_format, read_documents, read_jsonl, read_text
from talelab.data.tags import RULE_FEATURES, check_features, labels_of, rule_features, story_prompt, story_rows
from talelab.errors import ConfigError, InputError
from talelab.paths import resolve_input

TASKS = ("stories-tags", "lm", "instruct")
INSTRUCT_TEMPLATES = ("auto", "alpaca", "user-assistant", "chat")
EOS_PLACEHOLDER = "###eos_token###"  # how the shared Dolly rows mark the end of an answer
ALPACA_HEADER = ("Below is an instruction that describes a task. Write a response that appropriately completes "
                 "the request.")
ALPACA_HEADER_WITH_INPUT = ("Below is an instruction that describes a task, paired with an input that provides "
                            "further context. Write a response that appropriately completes the request.")
_SONNET_HEADING = re.compile(r"^\s*SONNET(?: [IVXLCDM]+)?\s*$", re.MULTILINE)
_LINE_NUMBER = re.compile(r"\s+\d+\s*$", re.MULTILINE)
_INSTRUCT_KEYS = ("Features:", "Words:", "Summary:", "Random sentence:", "Story:")
_TURN = re.compile(r"^(User|Assistant):[ \t]*", re.MULTILINE)  # a turn of a `conversation` string starts a line
# Words too common to test instruction following when required words are drawn from an unlabelled story.
_COMMON = set("""the and was were that with they them then there their this from have had for but not she her his him
one day very said what when who would could what into your you are all out saw big little too some went came""".split())


# ---------------------------------------------------------------- reading rows


def field(row: dict, names: tuple[str, ...], where: str) -> str:
    """The first string field of `names` in the row, or an InputError naming the place and the fields wanted."""
    for name in names:
        if isinstance(row.get(name), str):
            return row[name]
    raise InputError(f"{where}: no string field {' or '.join(repr(n) for n in names)} (keys: {', '.join(sorted(row))})")


def is_jsonl(path: Path) -> bool:
    return path.suffix.lower() in (".jsonl", ".json")


def data_file(data: str, data_root=None, split: str = "train") -> Path:
    """The file `data` names (a path or under the data root); a prepared directory means its `split`.jsonl."""
    path = resolve_input(data, data_root)
    if path.is_dir():
        path = path / f"{split}.jsonl"
        if not path.is_file():
            raise InputError(f"{data}: a directory without {split}.jsonl (expected a prepared directory or a file)")
    return path


# ---------------------------------------------------------------- stories-tags


def pick_words(story: str, count: int) -> list[str]:
    """`count` distinct uncommon words of the story, chosen by a hash of the story (the same every run)."""
    words = sorted({w for w in re.findall(r"[a-z]{4,}", story.lower()) if w not in _COMMON})
    rng = random.Random(hashlib.sha256(story.encode("utf-8")).digest())
    return rng.sample(words, min(count, len(words)))


def words_used(story: str, words: list[str]) -> int:
    """How many of the required words the story contains (as words or their inflections: 'jump' in 'jumped')."""
    text = story.lower()
    return sum(re.search(rf"\b{re.escape(w.lower())}", text) is not None for w in words)


def parse_instruct_story(document: str) -> dict:
    """A TinyStoriesInstruct block (`Features:` / `Words:` / `Summary:` / `Story:` lines) as a record."""
    record, story_lines, in_story = {"features": [], "words": [], "summary": ""}, [], False
    for line in document.split("\n"):
        key = next((k for k in _INSTRUCT_KEYS if line.startswith(k)), None)
        if in_story or key is None:
            story_lines.append(line)
        elif key == "Story:":
            in_story = True
            story_lines.append(line[len(key):].strip())
        elif key == "Features:":
            record["features"] = [f.strip() for f in line[len(key):].split(",") if f.strip()]
        elif key == "Words:":
            record["words"] = [w.strip() for w in line[len(key):].split(",") if w.strip()]
        elif key == "Summary:":
            record["summary"] = line[len(key):].strip()
    record["story"] = "\n".join(story_lines).strip()
    return record


def story_records(path: Path, derive_words: int = 0) -> tuple[list[dict], str]:
    """Stories with their features, words and summary, and a note on where the features came from.

    Records that carry labels (TinyStories all_data records, raw or prepared, and Instruct-format text) keep them;
    the others get the features that rules detect reliably (Dialogue, MoralValue). Read as a stream.
    """
    records, labelled = [], 0
    rows = story_rows(path)
    head = list(itertools.islice(rows, 20))
    instruct = any(line.startswith("Story:") for r in head for line in r["text"].split("\n"))
    for number, row in enumerate(itertools.chain(head, rows), start=1):
        where = f"{path}: record {number}"
        features, words, summary = labels_of(row, where)
        story = row["text"]
        if features is None and instruct:
            block = parse_instruct_story(story)
            story, features, words, summary = block["story"], block["features"], block["words"], block["summary"]
        if features is None:
            features = rule_features(story)
        elif row.get("tag_source") != "rules":  # prepare --tag-rules marks the features its rules wrote
            labelled += 1
            check_features(features, where)
        if not words and derive_words:
            words = pick_words(story, derive_words)
        records.append({"story": story, "features": features, "words": words, "summary": summary})
    total = len(records)
    if labelled == total:
        note = f"features: as labelled in {path} ({total} stories)"
    else:
        note = (f"features: {total - labelled} of {total} stories carry no labels; their features were derived by "
                f"rules, here or by prepare --tag-rules ({', '.join(RULE_FEATURES)} only: the other four need a "
                "classifier)")
        note += f", the other {labelled} as labelled in {path}" if labelled else ""
    if derive_words:
        note += f"; required words: up to {derive_words} per unlabelled story, drawn from the story itself"
    return records, note


def story_example(record: dict, bos: str) -> dict:
    prompt = story_prompt(record["features"], record["words"], record["summary"], bos)
    return {"prompt": prompt, "completion": " " + record["story"]}


# ---------------------------------------------------------------- lm


def clean_sonnets(text: str) -> list[str]:
    """The sonnets of a Project Gutenberg-style file, without `SONNET <roman>` headings, line numbers or indents."""
    poems = []
    for block in _SONNET_HEADING.split(text):
        lines = [line.strip() for line in _LINE_NUMBER.sub("", block).split("\n")]
        poem = "\n".join(line for line in lines if line)
        if poem:
            poems.append(poem)
    return poems


def lm_documents(path: Path, text_field: str = "text") -> list[str]:
    """Plain documents of a text file (sonnet files cleaned first), or the `text_field` of JSONL, JSON or parquet
    rows; stripped, blank ones left out."""
    if detect_format(path) in ("eot", "blank-line"):
        text = read_text(path)
        if len(_SONNET_HEADING.findall(text)) >= 2:
            return clean_sonnets(text)
    return read_documents(path, text_field=text_field)


# ---------------------------------------------------------------- instruct


# The two plain-text templates as Jinja chat templates (transformers' `chat_template`), stored with a model
# fine-tuned on them so that a chat request reaches it in the form it was trained on: the last user message as the
# Alpaca instruction, or every turn as `User:` / `Assistant:` lines; `bos_token` as the training prompts begin.
CHAT_TEMPLATES = {
    "alpaca": ("{%- set ns = namespace(instruction='') -%}"
               "{%- for message in messages if message['role'] == 'user' -%}"
               "{%- set ns.instruction = message['content'] -%}{%- endfor -%}"
               "{{ bos_token }}" + ALPACA_HEADER + "\n\n### Instruction:\n{{ ns.instruction }}\n\n### Response:"),
    "user-assistant": ("{{ bos_token }}{%- for message in messages if message['role'] != 'system' -%}"
                       "{{ 'User' if message['role'] == 'user' else 'Assistant' }}: {{ message['content'] | trim }}"
                       "{{ '\\n' }}{%- endfor -%}{%- if add_generation_prompt -%}Assistant:{%- endif -%}"),
}


def alpaca_prompt(instruction: str, context: str = "") -> str:
    if context:
        return (f"{ALPACA_HEADER_WITH_INPUT}\n\n### Instruction:\n{instruction}\n\n### Input:\n{context}\n\n"
                f"### Response:")
    return f"{ALPACA_HEADER}\n\n### Instruction:\n{instruction}\n\n### Response:"


def strip_eos_placeholder(answer: str, eos_token: str) -> str:
    """The answer without its trailing placeholder (trl appends the real EOS); any other occurrence becomes EOS."""
    answer = answer.rstrip()
    if answer.endswith(EOS_PLACEHOLDER):
        answer = answer[: -len(EOS_PLACEHOLDER)].rstrip()
    return answer.replace(EOS_PLACEHOLDER, eos_token)


def parse_conversation(text: str, where: str) -> list[dict]:
    """A `conversation` string of 'User: ...' / 'Assistant: ...' turns as chat messages. A turn runs until the next
    line that starts with 'User:' or 'Assistant:'; the turns must alternate from User to a last Assistant turn."""
    marks = list(_TURN.finditer(text))
    if not marks or text[:marks[0].start()].strip():
        raise InputError(f"{where}: 'conversation' does not start with a 'User:' line")
    ends = [m.start() for m in marks[1:]] + [len(text)]
    messages = [{"role": "user" if m.group(1) == "User" else "assistant", "content": text[m.end():end].strip()}
                for m, end in zip(marks, ends)]
    roles = [m["role"] for m in messages]
    alternating = all(role == ("user", "assistant")[i % 2] for i, role in enumerate(roles))
    if not alternating or roles[-1] != "assistant" or not all(m["content"] for m in messages):
        turns = " ".join(f"{'User' if m['role'] == 'user' else 'Assistant'}{'' if m['content'] else '(empty)'}"
                         for m in messages)
        raise InputError(f"{where}: 'conversation' turns must alternate User: and Assistant:, none empty, ending "
                         f"with Assistant: (found {turns})")
    return messages


def conversation_of(row: dict, where: str) -> list[dict]:
    """A row as chat messages: `messages`, a `conversation` string of User:/Assistant: turns, or the
    instruction/answer fields of the Alpaca-style datasets."""
    if isinstance(row.get("conversation"), str) and "messages" not in row:
        return parse_conversation(row["conversation"], where)
    if isinstance(row.get("messages"), list):
        messages = row["messages"]
        if not messages or not all(isinstance(m, dict) and {"role", "content"} <= set(m) for m in messages):
            raise InputError(f"{where}: 'messages' must be a list of {{'role', 'content'}} objects")
        if messages[-1]["role"] != "assistant":
            raise InputError(f"{where}: the last message must be the assistant's answer (found {messages[-1]['role']})")
        return messages
    if "prompt" in row and isinstance(row.get("answer", row.get("completion")), str):
        return [{"role": "user", "content": field(row, ("prompt",), where)},
                {"role": "assistant", "content": field(row, ("answer", "completion"), where)}]
    instruction = field(row, ("instruction", "question", "prompt"), where)
    context = row.get("input") or row.get("context") or ""
    user = f"{instruction}\n\n{context}" if context else instruction
    return [{"role": "user", "content": user, "instruction": instruction, "input": context},
            {"role": "assistant", "content": field(row, ("output", "response", "answer"), where)}]


def instruct_example(row: dict, where: str, template: str, tokenizer, bos: str) -> dict:
    """One prompt + completion pair in the chosen template; the completion is the answer alone."""
    messages = conversation_of(row, where)
    eos = tokenizer.eos_token or ""
    answer = strip_eos_placeholder(messages[-1]["content"], eos)
    if template == "chat":
        history = [{"role": m["role"], "content": strip_eos_placeholder(m["content"], eos)} for m in messages[:-1]]
        return {"prompt": history, "completion": [{"role": "assistant", "content": answer}]}
    if template == "alpaca":
        first = messages[0]
        if "### Response:" in first["content"]:  # already rendered (the shared Dolly subset)
            prompt = first["content"].rstrip()
        else:
            prompt = alpaca_prompt(first.get("instruction", first["content"]), first.get("input", ""))
        return {"prompt": bos + prompt, "completion": "\n" + answer}
    turns = "".join(f"{'User' if m['role'] == 'user' else 'Assistant'}: {m['content'].strip()}\n"
                    for m in messages[:-1] if m["role"] != "system")
    return {"prompt": bos + turns + "Assistant:", "completion": " " + answer}


def choose_template(template: str, rows: list[tuple[int, dict]], tokenizer) -> str:
    """'auto' becomes chat for `messages` rows when the tokenizer has a chat template, else alpaca or user-assistant."""
    if template not in INSTRUCT_TEMPLATES:
        raise ConfigError(f"template={template!r} is not one of {', '.join(INSTRUCT_TEMPLATES)}")
    has_chat = bool(getattr(tokenizer, "chat_template", None))
    if template == "chat" and not has_chat:
        raise ConfigError(f"template=chat: the tokenizer of {tokenizer.name_or_path} has no chat template (choose "
                          f"--template alpaca or user-assistant)")
    if template != "auto":
        return template
    if "messages" in rows[0][1] or "conversation" in rows[0][1]:
        return "chat" if has_chat else "user-assistant"
    return "alpaca"


# ---------------------------------------------------------------- all tasks


def bos_text(tokenizer) -> str:
    """The BOS token's text when the tokenizer does not add it by itself (talelab's and GPT-2's do not)."""
    bos = tokenizer.bos_token
    if not bos or tokenizer("a")["input_ids"][:1] == [tokenizer.bos_token_id]:
        return ""
    return bos


def build_examples(task: str, data: str, tokenizer, template: str = "auto", derive_words: int = 0,
                   data_root=None, split: str = "train", text_field: str = "text") -> tuple[list[dict], str]:
    """The examples of `data` (a file, or a prepared directory's `split`.jsonl) for `task` (trl's prompt/completion
    or text rows) and a line for the run log.

    stories-tags rows also keep `features` and `words`, which the tag-adherence measure reads; lm reads documents
    from `text_field` of JSONL, JSON or parquet rows.
    """
    if task not in TASKS:
        raise ConfigError(f"task={task!r} is not one of {', '.join(TASKS)}")
    path = data_file(data, data_root, split)
    bos = bos_text(tokenizer)
    if task == "stories-tags":
        records, note = story_records(path, derive_words)
        return [{**story_example(r, bos), "features": r["features"], "words": r["words"]} for r in records], note
    if task == "lm":
        documents = lm_documents(path, text_field)
        return [{"text": bos + d} for d in documents], f"lm: {len(documents)} documents from {path.name}"
    rows = read_jsonl(path) if is_jsonl(path) else None
    if not rows:
        raise InputError(f"{path}: instruct data must be JSONL with at least one row (prompt/answer, "
                         f"instruction/output, messages or conversation rows)")
    template = choose_template(template, rows, tokenizer)
    # each example names its template: the run stores it with the model (sft.finetune), for serve and generate --chat
    examples = [{**instruct_example(row, f"{path}:{n}", template, tokenizer, "" if template == "chat" else bos),
                 "template": template} for n, row in rows]
    return examples, f"instruct: {len(examples)} rows from {path.name}, template {template}, loss on answers only"
