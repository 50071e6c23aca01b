"""Observation ids: stable, resolvable, and valid FHIR ids ([A-Za-z0-9-.]{1,64}).

A raw Observation is one stored reading, named by its idempotency key: `r-{device pk}-{metric}-
{seq}-{sample time in µs since 1970}`. An aggregated Observation is one bucket of a patient's
series (merged across devices, as the history API merges them): `{1m|1h}-{patient pk}-{metric}-
{bucket start in s since 1970}`. The metric is written without underscores (FHIR ids allow none).
The same reading or bucket always gets the same id, and the id alone finds it again.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from telemetry.selectors import BUCKET_SECONDS, Resolution
from telemetry.units import METRICS

_UNIX = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_SLUGS = {metric: metric.replace("_", "") for metric in METRICS}
_METRICS = {slug: metric for metric, slug in _SLUGS.items()}
_ONE_US = dt.timedelta(microseconds=1)


@dataclass(frozen=True)
class RawId:
    device_pk: int
    metric: str
    seq: int
    sample_time: dt.datetime


@dataclass(frozen=True)
class BucketId:
    resolution: Resolution
    patient_pk: int
    metric: str
    start: dt.datetime

    @property
    def end(self) -> dt.datetime:
        return self.start + dt.timedelta(seconds=BUCKET_SECONDS[self.resolution])


def raw_id(*, device_pk: int, metric: str, seq: int, sample_time: dt.datetime) -> str:
    micros = (sample_time - _UNIX) // _ONE_US
    return f"r-{device_pk}-{_SLUGS[metric]}-{seq}-{micros}"


def bucket_id(*, resolution: Resolution, patient_pk: int, metric: str, start: dt.datetime) -> str:
    seconds = (start - _UNIX) // dt.timedelta(seconds=1)
    return f"{resolution}-{patient_pk}-{_SLUGS[metric]}-{seconds}"


def _number(text: str) -> int | None:
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 19 else None


def observation_id_parse(text: str) -> RawId | BucketId | None:
    """The reading or bucket an Observation id names; None for anything else."""
    parts = text.split("-")
    if len(parts) == 5 and parts[0] == "r" and parts[2] in _METRICS:
        device, seq, micros = (_number(p) for p in (parts[1], parts[3], parts[4]))
        if device is None or seq is None or micros is None or micros > 10**17:
            return None
        return RawId(device, _METRICS[parts[2]], seq, _UNIX + micros * _ONE_US)
    if len(parts) == 4 and parts[0] in BUCKET_SECONDS and parts[2] in _METRICS:
        patient, seconds = _number(parts[1]), _number(parts[3])
        if patient is None or seconds is None or seconds > 10**11 or seconds % BUCKET_SECONDS[parts[0]]:
            return None
        resolution: Resolution = "1m" if parts[0] == "1m" else "1h"
        return BucketId(resolution, patient, _METRICS[parts[2]], _UNIX + dt.timedelta(seconds=seconds))
    return None
