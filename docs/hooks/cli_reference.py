"""mkdocs hook: the CLI reference page, generated from lapsv's argument parser at build time.

``mkdocs build`` imports this file (``hooks:`` in mkdocs.yml) and adds ``cli-reference.md``
to the site: one section per verb and sub-verb with its usage and a table of its arguments,
read from :func:`lapsv.cli.build_parser`. The page exists only in the built site, so it
cannot drift from the parser; ``tests/test_docs.py`` renders it too.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator

PAGE = "cli-reference.md"
WIDTH = 88  # usage lines are wrapped at this width, whatever the terminal

INTRO = """# CLI reference

Generated from lapsv's argument parser (`lapsv.cli.build_parser`) each time this site is
built, so it always says what the installed `lapsv` accepts. `lapsv VERB --help` prints the
same. An option spelled with underscores also takes dashes (`--top_k` or `--top-k`): the
underscore spelling is the library parameter's name. [Command line](cli.md) explains
`MODEL`, `AUDIO`, option checks and exit codes, with examples.
"""


def _children(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The sub-verbs of ``parser``, by name.

    argparse has no public way to walk a built parser: ``_actions`` and the sub-parsers
    action's ``_name_parser_map`` are its private attributes (stable since Python 3.2).
    This function and :func:`_arguments` are the only places that read them.
    """
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action._name_parser_map)
    return {}


def _arguments(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """The arguments of ``parser`` shown in the table (not --help, not the sub-verbs)."""
    return [
        action
        for action in parser._actions
        if not isinstance(action, (argparse._HelpAction, argparse._SubParsersAction))
        and action.help != argparse.SUPPRESS
    ]


def _cell(text: str) -> str:
    text = " ".join(text.split()).replace("|", "\\|")
    return text.replace("<", "&lt;").replace(">", "&gt;")


def _default(action: argparse.Action) -> str:
    if action.required:
        return "required"
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        return ""
    if action.default in (None, [], argparse.SUPPRESS):
        return ""
    return f"`{action.default}`"


def _name(action: argparse.Action) -> str:
    if action.option_strings:
        metavar = ""
        if action.nargs != 0:
            if action.choices:
                metavar = " {" + ",".join(str(c) for c in action.choices) + "}"
            else:
                metavar = " " + (action.metavar or action.dest.upper())
        return "<br>".join(f"`{flag}{metavar}`" for flag in action.option_strings)
    name = action.metavar or action.dest
    return f"`{name}`" + (" ..." if action.nargs in ("+", "*") else "")


def _section(words: list[str], parser: argparse.ArgumentParser, summary: str) -> str:
    parser.formatter_class = lambda prog: argparse.HelpFormatter(prog, width=WIDTH)
    lines = [f"## {' '.join(words)}", ""]
    if summary:
        ending = "" if summary[-1] in ".?!" else "."
        lines += [summary[0].upper() + summary[1:] + ending, ""]
    lines += ["```text", parser.format_usage().strip(), "```", ""]
    rows = [f"| {_name(a)} | {_default(a)} | {_cell(a.help or '')} |" for a in _arguments(parser)]
    if rows:
        lines += ["| argument | default | what it is |", "|---|---|---|", *rows, ""]
    return "\n".join(lines)


def _summaries(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Sub-verb name -> its one-line help, as the parent's --help lists it."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return {choice.dest: choice.help or "" for choice in action._choices_actions}
    return {}


def _walk(
    words: list[str], parser: argparse.ArgumentParser, summary: str
) -> Iterator[tuple[list[str], argparse.ArgumentParser, str]]:
    children = _children(parser)
    if _arguments(parser) or not children:
        yield words, parser, summary
    summaries = _summaries(parser)
    for name, child in children.items():
        # `lapsv serve run MODEL` is spelled `lapsv serve MODEL`: its section is `lapsv serve`
        child_words = words if (words[-1:] == ["serve"] and name == "run") else [*words, name]
        yield from _walk(child_words, child, summaries.get(name, ""))


def sections() -> list[tuple[str, str]]:
    """(command, markdown section) for every verb and sub-verb of ``lapsv``, in parser order."""
    from lapsv.cli import build_parser  # imported when the page is built, not when loaded

    root = build_parser()
    summaries = _summaries(root)
    found = []
    for name, parser in _children(root).items():
        for words, sub, text in _walk(["lapsv", name], parser, summaries.get(name, "")):
            found.append((" ".join(words), _section(words, sub, text)))
    return found


def render() -> str:
    """The whole CLI reference page (Markdown)."""
    return INTRO + "\n" + "\n".join(text for _, text in sections())


def on_files(files, config):
    """mkdocs event: add the generated page to the site's files."""
    from mkdocs.structure.files import File

    files.append(File.generated(config, PAGE, content=render()))
    return files
