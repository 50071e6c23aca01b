from __future__ import annotations

from typing import Any

from django.core.management.base import CommandError, CommandParser

from config.commands import ResultCommand, aware_time
from telemetry.calibrations import calibration_add, calibration_correct
from telemetry.services import RegistryError


class Command(ResultCommand):
    help = (
        "Give a device a calibration (gain/offset for tissue O2 from --effective-from), or with --correct "
        "replace an existing calibration's coefficients and reprocess the readings it covered."
    )
    errors = (RegistryError,)

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("device_id")
        parser.add_argument("--id", dest="calibration_id", required=True)
        parser.add_argument("--gain", type=float, required=True)
        parser.add_argument("--offset", type=float, required=True)
        parser.add_argument("--effective-from", type=aware_time, help="ISO 8601 with offset (not with --correct)")
        parser.add_argument("--reason", required=True)
        parser.add_argument("--correct", action="store_true", help="correct an existing calibration and reprocess")

    def act(self, options: dict[str, Any]) -> tuple[dict[str, Any], str]:
        common = {
            "device_id": options["device_id"],
            "calibration_id": options["calibration_id"],
            "gain": options["gain"],
            "offset": options["offset"],
            "reason": options["reason"],
        }
        if options["correct"]:
            if options["effective_from"]:
                raise CommandError("--correct keeps the calibration's effective time; drop --effective-from")
            calibration, reprocessing = calibration_correct(**common)
            result = {
                "device_id": options["device_id"],
                "calibration_id": calibration.calibration_id,
                "coefficients": calibration.coefficients,
                "effective_from": calibration.effective_from.isoformat(),
                "reprocessing": reprocessing.pk,
                "examined": reprocessing.examined,
                "changed": reprocessing.changed,
            }
            text = (
                f"Calibration {calibration.calibration_id} corrected; {reprocessing.changed} of "
                f"{reprocessing.examined} readings reprocessed (old values kept)."
            )
            return result, text
        if not options["effective_from"]:
            raise CommandError("--effective-from is required")
        calibration = calibration_add(**common, effective_from=options["effective_from"])
        result = {
            "device_id": options["device_id"],
            "calibration_id": calibration.calibration_id,
            "coefficients": calibration.coefficients,
            "effective_from": calibration.effective_from.isoformat(),
        }
        return result, f"Calibration {calibration.calibration_id} of {options['device_id']} recorded."
