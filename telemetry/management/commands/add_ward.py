from __future__ import annotations

from typing import Any

from django.core.management.base import CommandParser

from config.commands import ResultCommand
from telemetry.services import RegistryError, ward_save


class Command(ResultCommand):
    help = (
        "Create a ward, or rename it (contract section 2). --site moves it to a site (gateways with "
        "--site-wide and the rate limits are per site); without it a new ward is on site 'main' and an "
        "existing one keeps its site."
    )
    errors = (RegistryError,)

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("code")
        parser.add_argument("--name", required=True)
        parser.add_argument("--site")

    def act(self, options: dict[str, Any]) -> tuple[dict[str, Any], str]:
        saved = ward_save(code=options["code"], name=options["name"], site=options["site"])
        ward = saved.ward
        out = {"code": ward.code, "name": ward.name, "site": ward.site}
        if saved.created:
            verb = "created"
        elif saved.changed:
            verb = "updated (" + ", ".join(saved.changed) + ")"
        else:
            verb = "unchanged"
        return out, f"ward {ward.code} ({ward.name}, site {ward.site}) {verb}"
