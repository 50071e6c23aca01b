"""config.live.iso, the one time format of frames and chart APIs, gives exactly what the plain
formula gives for any aware time: its per-second cache and millisecond table change the cost,
never the text."""

from __future__ import annotations

import datetime as dt
import random
from zoneinfo import ZoneInfo

from config import live


def reference(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


ZONES: list[dt.tzinfo] = [
    dt.UTC,
    ZoneInfo("UTC"),
    ZoneInfo("Etc/UTC"),
    ZoneInfo("Europe/Zurich"),
    ZoneInfo("America/St_Johns"),
    dt.timezone(dt.timedelta(hours=5, minutes=45)),
    dt.timezone(-dt.timedelta(hours=11)),
]


def test_iso_matches_the_plain_formula_on_random_times_in_every_zone() -> None:
    rng = random.Random(20261203)
    lo = dt.datetime(1971, 1, 1, tzinfo=dt.UTC).timestamp()
    hi = dt.datetime(2099, 12, 31, tzinfo=dt.UTC).timestamp()
    for _ in range(50_000):
        t = dt.datetime.fromtimestamp(rng.uniform(lo, hi), tz=rng.choice(ZONES))
        t = t.replace(microsecond=rng.choice([0, 999, 1000, 499_999, 999_999, rng.randrange(1_000_000)]))
        assert live.iso(t) == reference(t), t


def test_iso_stays_right_when_its_cache_is_emptied_and_refilled() -> None:
    start = dt.datetime(2026, 12, 3, 23, 59, 58, 123456, tzinfo=dt.UTC)
    times = [start + dt.timedelta(seconds=s, microseconds=s * 7) for s in range(3 * live._SECOND_TEXT_MAX)]
    assert [live.iso(t) for t in times] == [reference(t) for t in times]
    assert len(live._SECOND_TEXT) <= live._SECOND_TEXT_MAX
    # Midnight, a new year and a leap day cross second, date and year text at once.
    for t in (
        dt.datetime(2026, 12, 31, 23, 59, 59, 999_999, tzinfo=dt.UTC),
        dt.datetime(2027, 1, 1, 0, 0, 0, tzinfo=dt.UTC),
        dt.datetime(2028, 2, 29, 12, 0, 0, 1, tzinfo=ZoneInfo("Pacific/Kiritimati")),
    ):
        assert live.iso(t) == reference(t)
