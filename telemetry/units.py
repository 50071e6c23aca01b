"""Metrics, their canonical units, accepted aliases, what each quantity can physically be, and how
people name it (label, and the unit as printed: UCUM's `Cel` is shown as °C)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    canonical: str
    converters: dict[str, Callable[[float], float]]
    low: float
    high: float
    label: str
    symbol: str


def _same(value: float) -> float:
    return value


MMHG_PER_KPA = 7.500617


METRICS: dict[str, Metric] = {
    "tissue_o2": Metric("%", {"%": _same, "percent": _same}, 0.0, 100.0, "Tissue O₂", "%"),
    "tissue_po2": Metric("mmHg", {"mmHg": _same, "kPa": lambda v: v * MMHG_PER_KPA}, 0.0, 2000.0, "Tissue pO₂", "mmHg"),
    "spo2": Metric("%", {"%": _same, "percent": _same}, 0.0, 100.0, "SpO₂", "%"),
    "skin_temp": Metric(
        "Cel",
        {"Cel": _same, "degC": _same, "degF": lambda v: (v - 32.0) * 5.0 / 9.0},
        0.0,
        60.0,
        "Skin temperature",
        "°C",
    ),
    "battery": Metric("mV", {"mV": _same}, 0.0, 20000.0, "Sensor battery", "mV"),
}
