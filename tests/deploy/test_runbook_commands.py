"""Every `manage COMMAND --flag` (and `manage.py COMMAND --flag`) in the operating docs names a
real management command and only flags it has: a runbook is followed under stress, letter by
letter."""

from __future__ import annotations

import re
import shlex

import pytest
from django.core.management import get_commands, load_command_class

from tests.process_support import ROOT

DOCS = ["docs/runbooks.md", "docs/upgrade.md"]
_CALL = re.compile(r"\bmanage(?:\.py)? ([a-z0-9_]+)([^\n`]*)")
_FLAG = re.compile(r"(?<![\w'\"=/-])(--?[a-z][a-z-]*)")
# Where the command's own arguments end on a line: a comment, a pipe, a redirect, `||`, `;`, a
# paren or comma of the prose around an inline command.
_END = re.compile(r"\s#|\|\||[|;>]|\s\(|\)|,")


def _calls() -> list[tuple[str, str, str]]:
    found = []
    for doc in DOCS:
        for match in _CALL.finditer((ROOT / doc).read_text()):
            name, rest = match.group(1), match.group(2)
            # Shell words standing for one argument: a loop variable, the Python code of `shell -c`.
            rest = re.sub(r'-c "[^"]*"?', "-c CODE", rest.replace('"$key"', "KEY"))
            if name == "py":
                continue
            end = _END.search(rest)
            found.append((doc, name, rest[: end.start()] if end else rest))
    return found


def test_the_docs_call_commands() -> None:
    names = {name for _, name, _ in _calls()}
    assert {"revoke_device_key", "audit_verify", "hl7_dead_letters", "deactivate_staff", "migrate"} <= names


@pytest.mark.parametrize(("doc", "name", "args"), _calls())
def test_documented_command_and_flags_exist(doc: str, name: str, args: str) -> None:
    commands = get_commands()
    assert name in commands, f"{doc}: manage.py {name} does not exist"
    parser = load_command_class(commands[name], name).create_parser("manage.py", name)
    options = {option for action in parser._actions for option in action.option_strings}
    for flag in _FLAG.findall(args):
        assert flag in options, f"{doc}: manage.py {name} has no {flag} ({args.strip()!r})"
    tokens = shlex.split(args.replace("…", ""))
    if all(re.fullmatch(r"[\w.:/=@-]+", token) for token in tokens):
        parser.parse_args(tokens)  # positional arguments too: argparse exits on a mistake
