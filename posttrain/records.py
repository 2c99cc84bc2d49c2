"""Post-training JSONL files read into checked records, each error naming the file, the line and the fix.

Three formats, one JSON object per line (blank lines are skipped):
- prompt/completion: {"prompt": str, "completion": str}
- chat: {"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}, ending with an assistant turn
- preference: {"prompt": str, "chosen": str, "rejected": str}

Nothing is dropped silently: the first bad line stops the read with a PostTrainDataError.
A file is read whole before training starts, so a bad line costs no training time.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

from scalelab.data.storage import DataError

ROLES = ("system", "user", "assistant")


class PostTrainDataError(DataError):
    """A post-training data file is missing or one of its lines is unusable; the message names file:line."""


@dataclasses.dataclass(frozen=True)
class Example:
    """One supervised example: the text the model reads and the text it learns to write (where: file:line)."""

    prompt: str | None  # None for chat examples, whose prompt the chat template renders
    completion: str | None
    messages: tuple[dict[str, str], ...] | None
    where: str


@dataclasses.dataclass(frozen=True)
class Pair:
    """One preference: a prompt and two responses, `chosen` preferred over `rejected` (where: file:line)."""

    prompt: str
    chosen: str
    rejected: str
    where: str


TRAIN_FILE = "posttrain.train_file"


def _numbered_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of each non-blank line of a UTF-8 file; bytes that are not UTF-8 name their line."""
    lines = []
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")  # a byte-order mark is not JSON
            except UnicodeDecodeError as error:
                raise PostTrainDataError(
                    f"{path}:{number}: not UTF-8 text (byte {error.start + 1} of the line); give a JSONL file "
                    "saved as UTF-8"
                ) from None
            if line.strip():
                lines.append((number, line))
    return lines


def _lines(path: Path, setting: str = TRAIN_FILE) -> list[tuple[str, dict[str, Any]]]:
    """(file:line, object) for each non-blank line of a JSONL file; `setting` names where the path came from."""
    if not path.is_file():
        what = "is a directory, not a file" if path.is_dir() else "does not exist"
        raise PostTrainDataError(f"{path} {what}; {setting} must name a JSONL file")
    rows = []
    for number, line in _numbered_lines(path):
        where = f"{path}:{number}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as error:
            raise PostTrainDataError(
                f"{where}: not valid JSON ({error.msg} at column {error.colno}); fix the line so it holds one "
                "JSON object"
            ) from None
        if not isinstance(obj, dict):
            raise PostTrainDataError(f"{where}: expected a JSON object, got {type(obj).__name__}; wrap it in {{}}")
        rows.append((where, obj))
    if not rows:
        raise PostTrainDataError(f"{path} holds no examples; give a JSONL file with one JSON object per line")
    return rows


def _text(obj: dict[str, Any], key: str, where: str, fmt: str, allow_empty: bool = False) -> str:
    """obj[key] as a string, or an error naming the missing or mistyped field."""
    if key not in obj:
        raise PostTrainDataError(f"{where}: missing field {key!r}; each line needs {fmt}")
    value = obj[key]
    if not isinstance(value, str):
        raise PostTrainDataError(f"{where}: field {key!r} must be a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise PostTrainDataError(f"{where}: field {key!r} is empty; give it text or remove the line")
    return value


def read_prompts(path: Path, setting: str = TRAIN_FILE) -> list[tuple[str, str]]:
    """(file:line, prompt) of each line of a JSONL file of {"prompt": ...} objects: PPO's and the demo's prompts."""
    return [(where, _text(obj, "prompt", where, '{"prompt": "Once upon"}')) for where, obj in _lines(path, setting)]


def _messages(obj: dict[str, Any], where: str) -> tuple[dict[str, str], ...]:
    messages = obj["messages"]
    if not isinstance(messages, list) or not messages:
        raise PostTrainDataError(f"{where}: 'messages' must be a non-empty list of {{'role', 'content'}} objects")
    checked = []
    for i, message in enumerate(messages):
        at = f"{where}: messages[{i}]"
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise PostTrainDataError(f"{at} needs the fields 'role' and 'content'")
        if message["role"] not in ROLES:
            raise PostTrainDataError(f"{at}: unknown role {message['role']!r}; use one of {', '.join(ROLES)}")
        if not isinstance(message["content"], str):
            raise PostTrainDataError(f"{at}: 'content' must be a string")
        checked.append({"role": message["role"], "content": message["content"]})
    if checked[-1]["role"] != "assistant" or not checked[-1]["content"].strip():
        raise PostTrainDataError(
            f"{where}: the last message must be a non-empty assistant turn (what the model learns to write)"
        )
    return tuple(checked)


def read_examples(path: Path, setting: str = TRAIN_FILE) -> list[Example]:
    """Supervised examples of a prompt/completion or chat JSONL file."""
    examples = []
    fmt = "'prompt' and 'completion' (or 'messages' for chat)"
    for where, obj in _lines(Path(path), setting):
        if "messages" in obj:
            examples.append(Example(None, None, _messages(obj, where), where))
        else:
            prompt = _text(obj, "prompt", where, fmt, allow_empty=True)
            examples.append(Example(prompt, _text(obj, "completion", where, fmt), None, where))
    return examples


def read_pairs(path: Path, setting: str = TRAIN_FILE) -> list[Pair]:
    """Preference pairs of a {prompt, chosen, rejected} JSONL file."""
    pairs = []
    fmt = "'prompt', 'chosen' and 'rejected'"
    for where, obj in _lines(Path(path), setting):
        prompt = _text(obj, "prompt", where, fmt, allow_empty=True)
        chosen, rejected = _text(obj, "chosen", where, fmt), _text(obj, "rejected", where, fmt)
        if chosen == rejected:
            raise PostTrainDataError(
                f"{where}: 'chosen' equals 'rejected', so the pair states no preference; fix or remove the line"
            )
        pairs.append(Pair(prompt, chosen, rejected, where))
    return pairs


def held_out(where_and_text: str, fraction: float) -> bool:
    """Whether a record (by its content) belongs to the held-out share: stable under reordering and appends."""
    digest = hashlib.sha256(where_and_text.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def split_records(records: list, fraction: float) -> tuple[list, list]:
    """(train, held out) records, chosen by content hash; each side keeps at least one record."""
    keys = [json.dumps(dataclasses.asdict(r) | {"where": ""}, sort_keys=True) for r in records]
    held = [r for r, k in zip(records, keys, strict=True) if held_out(k, fraction)]
    kept = [r for r, k in zip(records, keys, strict=True) if not held_out(k, fraction)]
    if not held:
        held, kept = kept[-1:], kept[:-1]
    if not kept:
        kept, held = held[:1], held[1:]
    if not held or not kept:
        raise PostTrainDataError(
            f"{records[0].where.rsplit(':', 1)[0]} has {len(records)} record(s), too few to hold some out; add more "
            "or set posttrain.eval_file"
        )
    return kept, held
