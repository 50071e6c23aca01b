"""The base of the staff management commands that answer with one result (contract section 2):
one line for a person, or with `--json` the result as one JSON object for scripts.

A command adds its own arguments, does its act in `act`, which returns the JSON object and the
text; an error of a type in `errors` (the act's domain error, e.g. telemetry's RegistryError)
ends the command with its message, as a CommandError, instead of a traceback.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser


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
