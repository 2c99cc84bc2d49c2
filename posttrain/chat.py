"""The chat template: how {"messages": [...]} examples become a prompt and a completion.

It is stored with the tokenizer, as `chat_template.json` in the tokenizer's folder, so every run
that reads that tokenizer renders chats the same way and `scalelab generate` can be prompted in
that format. `scalelab chat-template CONFIG` writes the default one; a tokenizer without it
cannot read chat data (an error says to run that command). The template holds one format string per
role, with `{content}` where the message goes, and the generation prompt that opens the
assistant's reply.
"""

from __future__ import annotations

import json
from pathlib import Path

from scalelab.posttrain.records import ROLES, PostTrainDataError

TEMPLATE_FILE = "chat_template.json"
DEFAULT_TEMPLATE = {
    "system": "System: {content}\n",
    "user": "User: {content}\n",
    "assistant": "Assistant: {content}\n",
    "generation_prompt": "Assistant: ",
}


def template_command(config: str = "CONFIG") -> str:
    return f"scalelab chat-template {config}"


def write_template(tokenizer_dir: Path, template: dict[str, str] | None = None, force: bool = False) -> Path:
    """Write `template` (default: DEFAULT_TEMPLATE) next to the tokenizer; an existing one stays unless `force`."""
    template = dict(template or DEFAULT_TEMPLATE)
    check_template(template, tokenizer_dir / TEMPLATE_FILE)
    path = Path(tokenizer_dir) / TEMPLATE_FILE
    if path.exists() and not force:
        return path
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(template, indent=2) + "\n")
    tmp.replace(path)
    return path


def check_template(template: dict[str, str], where: Path) -> None:
    """Each role and the generation prompt must be strings; each role's must contain {content}."""
    for key in (*ROLES, "generation_prompt"):
        if not isinstance(template.get(key), str):
            raise PostTrainDataError(f"{where}: the chat template needs a string {key!r}")
    for role in ROLES:
        if "{content}" not in template[role]:
            raise PostTrainDataError(f"{where}: the {role!r} format must contain {{content}}")


def load_template(tokenizer_dir: Path) -> dict[str, str]:
    """The chat template stored with the tokenizer in `tokenizer_dir`, or an error naming the command that writes it."""
    path = Path(tokenizer_dir) / TEMPLATE_FILE
    if not path.is_file():
        raise PostTrainDataError(
            f"the tokenizer at {tokenizer_dir} has no chat template ({TEMPLATE_FILE}), so chat examples cannot be "
            f"rendered; write the default one with: {template_command()} (the config that names this tokenizer)"
        )
    try:
        template = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise PostTrainDataError(f"{path}: not valid JSON ({error.msg}); rewrite it: {template_command()}") from None
    check_template(template, path)
    return template


def render(messages: tuple[dict[str, str], ...], template: dict[str, str]) -> tuple[str, str]:
    """(prompt, completion) of a chat: every turn but the last, then the generation prompt; the last assistant turn."""
    history = "".join(template[m["role"]].replace("{content}", m["content"]) for m in messages[:-1])
    return history + template["generation_prompt"], messages[-1]["content"]
