"""Reading the shell examples out of Markdown: fenced blocks, the commands in them, and scalelab's argv.

A block whose first line is `# not run here: <reason>` shows a command that needs a pod, a GPU,
hours or a cluster; the tests only parse such commands. Every other shell block is run.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
from pathlib import Path

SHELL_LANGUAGES = ("bash", "sh", "shell")
NOT_RUN = "# not run here:"
FENCE = re.compile(r"^```(\S*)\s*$")
# The words that separate one simple command from the next on a shell line.
# Programs that run the command after their own options.
LAUNCHERS = {"srun", "mpirun", "taskset", "env", "time", "nohup"}
SEPARATORS = {"&&", "||", ";", "|", "&", "do", "then", "done", "fi", ";;"}


@dataclasses.dataclass(frozen=True)
class Block:
    """One fenced shell block: where it is, its text, and whether the tests run it."""

    page: str  # the Markdown file, relative to the repo root
    line: int  # the line of its opening fence
    text: str
    runs: bool

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"


def shell_blocks(path: Path, root: Path) -> list[Block]:
    """Every fenced block of a shell language in the Markdown file `path`."""
    blocks = []
    lines = path.read_text().splitlines()
    index = 0
    while index < len(lines):
        match = FENCE.match(lines[index])
        if not match:
            index += 1
            continue
        start, language = index, match.group(1)
        index += 1
        body = []
        while index < len(lines) and not lines[index].startswith("```"):
            body.append(lines[index])
            index += 1
        index += 1  # the closing fence
        if language in SHELL_LANGUAGES:
            text = "\n".join(body) + "\n"
            if body and body[0].startswith("# not run here") and not body[0].startswith(NOT_RUN):
                raise ValueError(f"{path}:{start + 1}: write the marker as '{NOT_RUN} <reason>', got {body[0]!r}")
            runs = not (body and body[0].startswith(NOT_RUN))
            blocks.append(Block(str(path.relative_to(root)), start + 1, text, runs))
    return blocks


def without_comments(text: str) -> str:
    """The block with backslash continuations joined and comment-only lines dropped."""
    joined = text.replace("\\\n", " ")
    return "\n".join(line for line in joined.splitlines() if not line.lstrip().startswith("#"))


def simple_commands(text: str) -> list[list[str]]:
    """The words of each simple command in shell text, with shell variables replaced by 0.

    Newlines separate commands too, except inside quotes (a command quoted across lines stays one word).
    """
    lexer = shlex.shlex(re.sub(r"\$\{?\w+\}?", "0", text), posix=True, punctuation_chars=";&|\n")
    lexer.whitespace = " \t\r"
    lexer.whitespace_split = True
    lexer.commenters = ""  # shlex's comments would swallow the newline that ends the command
    commands: list[list[str]] = [[]]
    in_comment = False
    for word in lexer:
        if "\n" in word and word.strip(";&|\n") == "":
            in_comment = False
        elif in_comment or word.startswith("#"):
            in_comment = True
            continue
        if word.strip(";&|\n") == "" or word in SEPARATORS or word in ("for", "while", "if"):
            commands.append([])
        else:
            commands[-1].append(word)
    return [command for command in commands if command]


def program_and_args(words: list[str]) -> tuple[str, list[str]]:
    """(program name, its arguments), skipping leading VAR=value assignments and a launcher before scalelab."""
    index = 0
    while index < len(words) and re.fullmatch(r"[A-Za-z_]\w*=.*", words[index]):
        index += 1
    if index == len(words):
        return "", []
    if Path(words[index]).name in LAUNCHERS:  # srun scalelab ..., taskset -c 0 scalelab ...
        for position in range(index + 1, len(words)):
            if Path(words[position]).name == "scalelab":
                return "scalelab", words[position + 1 :]
    return Path(words[index]).name, words[index + 1 :]


def invocations(text: str) -> list[tuple[str, list[str]]]:
    """Every (program, args) in a block, including commands quoted inside another (ssh --command '...')."""
    found = []
    for words in simple_commands(without_comments(text)):
        program, args = program_and_args(words)
        found.append((program, args))
        for arg in args:  # a whole command passed as one argument, e.g. to gcloud ... --command
            if "scalelab " in arg:
                found += invocations(arg)
    return found
