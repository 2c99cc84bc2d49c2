"""The config-key reference (docs/config.md), generated from the config dataclasses themselves.

Each section of `Config` is a frozen dataclass; every key's type and default come from its field,
and its description from the field's trailing `# comment` (or, failing that, the comment lines
right above it), so the reference cannot drift from the code:

    python -m scalelab.train.config_reference > docs/config.md
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import re
import sys
import textwrap
import tokenize
import typing
from pathlib import Path
from typing import Any

from scalelab.configs import CONFIG_DIR
from scalelab.errors import ConfigError
from scalelab.train.config import Config

REGENERATE = "python -m scalelab.train.config_reference > docs/config.md"

INTRO = """\
# Config keys

<!-- Generated from the config dataclasses; do not edit by hand. Regenerate with:
     {regenerate} -->

A config is a YAML file with one mapping per section below. It is loaded into typed, validated
dataclasses, so every key has the type and default listed here.

- **Names or paths.** `scalelab train gpt-tiny` reads the shipped `gpt-tiny` config (listed at the
  end); any YAML path works too.
- **Inheritance.** `base: NAME_OR_PATH` starts from another config; the keys a config sets win,
  section by section.
- **Overrides.** `--set a.b.c=value` sets any key from the command line, parsing the value as
  YAML: `--set model.n_layers=4`, `--set optimizer.lr=3e-4`, `--set 'mesh.rules={{embed: null}}'`.
  Numbers may be written in scientific notation anywhere: `--set train.steps=1e5` is the integer 100000.
- **Errors name the full key.** An unknown key also names the nearest valid one (`unknown key
  'model.d_modle'; did you mean 'model.d_model'?`); a wrong type says what was expected; values
  that do not fit together (`d_model` not divisible by `n_heads`, warmup longer than training)
  say how to fix them.
- **null** means "the default described"; YAML writes Python's `None` as `null`.
"""


def field_comments(cls: type) -> dict[str, str]:
    """{field name: its comment} for a dataclass: the trailing `# comment`, else the comment lines just above."""
    lines, _ = inspect.getsourcelines(cls)
    source = textwrap.dedent("".join(lines))
    comments: dict[int, str] = {}  # 1-based line in `source` -> comment text
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            comments[token.start[0]] = token.string.lstrip("#").strip()
    source_lines = source.splitlines()
    (class_node,) = ast.parse(source).body
    found: dict[str, str] = {}
    for node in class_node.body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        trailing = [comments[n] for n in range(node.lineno, node.end_lineno + 1) if n in comments]
        above: list[str] = []
        line = node.lineno - 1
        while line >= 1 and source_lines[line - 1].strip().startswith("#"):
            above.insert(0, comments[line])
            line -= 1
        found[node.target.id] = " ".join(trailing or above)
    return found


def annotation_text(cls: type) -> dict[str, str]:
    """{field name: its annotation as written in the source}, e.g. 'int | None'."""
    lines, _ = inspect.getsourcelines(cls)
    (class_node,) = ast.parse(textwrap.dedent("".join(lines))).body
    return {
        node.target.id: ast.unparse(node.annotation)
        for node in class_node.body
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
    }


# A value no choice-valued key accepts: the error it raises lists the choices, in the validator's own words.
_PROBE = "\x00not-a-choice"
_CHOICES = re.compile(r"unknown value .*; choose one of (.+)$")


def choices_of(cls: type, name: str) -> tuple[str, ...]:
    """The values a string key accepts, as its section's validation lists them; () if it lists none."""
    try:
        cls(**{name: _PROBE})
    except ConfigError as error:
        match = _CHOICES.search(str(error))
        if match and f"{name}:" in str(error):
            return tuple(choice.strip() for choice in match.group(1).split(","))
    return ()


def yaml_value(value: Any) -> str:
    """A default as it would be written in a config file."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}" if value != int(value) or abs(value) >= 1e16 else f"{value:.1f}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(yaml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key}: {yaml_value(item)}" for key, item in value.items()) + "}"
    return str(value)


def default_of(field: dataclasses.Field) -> Any:
    """A field's default value, calling its default_factory if it has one."""
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


def table_cell(text: str) -> str:
    """Text that is safe inside a Markdown table cell (no column breaks, no HTML tags)."""
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


@dataclasses.dataclass(frozen=True)
class Key:
    """One config key: its dotted path, annotation, default as YAML, and description."""

    path: str
    type: str
    default: str
    description: str


@dataclasses.dataclass(frozen=True)
class Section:
    """A dataclass-backed section: its dotted path (empty for the top level), docstring and keys."""

    path: str
    doc: str
    keys: tuple[Key, ...]


def walk(cls: type, path: str = "") -> list[Section]:
    """The sections of dataclass `cls`, depth first: its own plain keys, then each nested dataclass."""
    hints = typing.get_type_hints(cls)
    comments = field_comments(cls)
    annotations = annotation_text(cls)
    prefix = f"{path}." if path else ""
    keys: list[Key] = []
    nested: list[Section] = []
    for field in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[field.name]):
            nested += walk(hints[field.name], prefix + field.name)
            continue
        default = default_of(field)
        description = comments.get(field.name, "")
        if annotations[field.name] in ("str", "str | None"):
            allowed = choices_of(cls, field.name)
            if allowed:
                listed = "one of " + ", ".join(f"`{choice}`" for choice in allowed)
                description = f"{listed}; {description}" if description else listed
        keys.append(
            Key(
                path=prefix + field.name,
                type=annotations[field.name],
                default="(required)" if default is dataclasses.MISSING else yaml_value(default),
                description=description,
            )
        )
    doc = inspect.getdoc(cls) or ""
    return [Section(path, doc, tuple(keys)), *nested]


def render_section(section: Section) -> str:
    """One section as a heading, its docstring and a table of keys."""
    title = f"`{section.path}`" if section.path else "Top level"
    out = [f"## {title}", "", section.doc, "", "| key | type | default | description |", "|---|---|---|---|"]
    for key in section.keys:
        out.append(
            f"| `{key.path}` | `{table_cell(key.type)}` | `{table_cell(key.default)}` | {table_cell(key.description)} |"
        )
    return "\n".join(out) + "\n"


def first_sentence(text: str) -> str:
    """The first sentence of a paragraph (up to a full stop followed by a space, or the end)."""
    end = text.find(". ")
    return text if end < 0 else text[: end + 1]


def shipped_configs(config_dir: Path = CONFIG_DIR) -> str:
    """A table of the configs that ship with scalelab, each described by its file's leading comment."""
    out = [
        "## Shipped configs",
        "",
        "Give these by name (`scalelab train gpt-tiny`); each file's leading comment says more.",
        "",
        "| name | base | what it is |",
        "|---|---|---|",
    ]
    for path in sorted(config_dir.glob("*.yaml")):
        comment: list[str] = []
        base = ""
        for line in path.read_text().splitlines():
            if line.startswith("#") and not base:
                comment.append(line.lstrip("#").strip())
            elif line.startswith("base:"):
                base = line.split(":", 1)[1].split("#", 1)[0].strip()
            elif comment:
                break
        base_cell = f"`{base}`" if base else ""
        out.append(f"| `{path.stem}` | {base_cell} | {table_cell(first_sentence(' '.join(comment)))} |")
    return "\n".join(out) + "\n"


def render(root: type = Config) -> str:
    """The whole reference as Markdown."""
    parts = [INTRO.format(regenerate=REGENERATE)]
    parts += [render_section(section) for section in walk(root)]
    parts.append(shipped_configs())
    return "\n".join(parts)


def main() -> int:
    """Print the reference to stdout."""
    sys.stdout.write(render())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
