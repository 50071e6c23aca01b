"""CSV exports a spreadsheet cannot turn into formulas (CSV injection).

A cell that begins with `=`, `+`, `-`, `@`, a tab or a carriage return is read as a formula by
Excel, LibreOffice and Google Sheets: an audit export carrying a user agent or purpose typed by
someone else could run `=HYPERLINK(…)` or DDE in the compliance officer's spreadsheet. Such text
cells get a leading apostrophe, which the spreadsheet shows as text (OWASP's advice). Numbers
are written as they are: they are not text, and `-3.5` must stay a number. Every CSV the
application writes goes through `csv_writer`.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from typing import Any, Protocol

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


class _Target(Protocol):
    def write(self, value: str, /) -> Any: ...


def csv_cell(value: object) -> object:
    if value is None:
        return ""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


class SafeCsvWriter:
    """csv.writer whose rows are neutralised; writerow returns what the target's write returned
    (the line itself for a streaming echo target)."""

    def __init__(self, target: _Target) -> None:
        self._writer = csv.writer(target)

    def writerow(self, row: Iterable[object]) -> Any:
        return self._writer.writerow([csv_cell(value) for value in row])


def csv_writer(target: _Target) -> SafeCsvWriter:
    return SafeCsvWriter(target)
