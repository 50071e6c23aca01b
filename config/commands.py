"""The base of the staff management commands that answer with one result (contract section 2):
one line for a person, or with `--json` the result as one JSON object for scripts.

A command adds its own arguments, does its act in `act`, which returns the JSON object and the
text; an error of a type in `errors` (the act's domain error, e.g. telemetry's RegistryError)
ends the command with its message, as a CommandError, instead of a traceback.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import signal
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from types import FrameType
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import close_old_connections


def aware_time(raw: str) -> dt.datetime:
    """An option's time (argparse `type=`): ISO 8601 with a UTC offset, since a naive time would be
    read in whatever zone the server runs in."""
    try:
        value = dt.datetime.fromisoformat(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {raw!r}") from None
    if value.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{raw!r} needs a time zone (a UTC offset, e.g. 2026-01-18T14:00:00+00:00)")
    return value


class ResultCommand(BaseCommand, ABC):
    errors: tuple[type[Exception], ...] = ()

    def create_parser(self, prog_name: str, subcommand: str, **kwargs: Any) -> CommandParser:
        parser = super().create_parser(prog_name, subcommand, **kwargs)
        parser.add_argument("--json", action="store_true")
        return parser

    @abstractmethod
    def act(self, options: dict[str, Any]) -> tuple[dict[str, Any], str]:
        """Do the command's act; return its result for --json and its wording for a person."""

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            result, text = self.act(options)
        except self.errors as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(json.dumps(result) if options["json"] else text)


def repeat_until_stopped(
    job: Callable[[], None],
    *,
    every: float,
    failed: Callable[[Exception], None],
    errors: tuple[type[Exception], ...] = (Exception,),
) -> None:
    """Run `job` every `every` seconds until SIGTERM or SIGINT (the `--every` of the periodic
    commands). A run that raises one of `errors` goes to `failed` and is retried at the next
    interval; connections a database restart broke are dropped before each run, as a request
    would, so one restart does not fail every later run."""
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    while not stop.is_set():
        close_old_connections()
        try:
            job()
        except errors as exc:
            failed(exc)
        stop.wait(every)
