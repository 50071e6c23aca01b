"""The simulated patient's subcutaneous tissue-O2 signal, as a Lumee-class sensor reports it.
Pure Python: no Django, no I/O; the fleet (telemetry/simulator/fleet.py) samples one
PatientSignal per worn device. docs/simulator.md gives the sources of every figure below.

The model, in the order `sample` applies it:
- a resting level per patient (55-75 %) with a slow drift around it (an Ornstein-Uhlenbeck walk,
  ten-minute time constant) and sensor noise;
- desaturation episodes of the kinds in EPISODE_KINDS, one at a time, each a fall, a plateau and a
  slower recovery, arriving at random at the kind's rate per patient-day. Subcutaneous tissue O2
  changes over minutes, not seconds: the fall of every paced kind is stretched until its steepest
  part is no faster than `max_fall_per_min`, well below the shipped rapid-fall rule (15 points in
  60 s). Only the rare `rapid` kind (acute ischaemia: an occlusion, a collapse) falls that fast;
- artefacts the sensor knows about: brief motion artefacts and longer poor-contact periods (the
  reader displaced over the sensor) report a signal quality below 0.5 and values that mean
  nothing; brief dropouts report no sample at all.

`showcase_after_s` scripts one critically low episode that many seconds after the first sample,
so that the demo sounds a high-priority alarm within minutes of `make run` (the fleet gives it to
one patient only); without it every episode is random.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

DAY_HOURS = 24.0


@dataclass(frozen=True)
class EpisodeKind:
    """One kind of desaturation: how often, how deep, how fast. Durations in seconds."""

    name: str
    per_day: float  # episodes per patient-day
    floor: tuple[float, float]  # the plateau's tissue O2, %
    min_drop: float  # the plateau is at least this far below the patient's level at onset
    fall_s: tuple[float, float]
    hold_s: tuple[float, float]
    recover_s: tuple[float, float]
    paced: bool = True  # False: falls as fast as drawn (only the rapid kind)


# Rates and depths chosen against the shipped alarm defaults (low < 35 % for 30 s, critical < 25 %
# for 10 s, rapid fall 15 points in 60 s): a dip stays above 35 %, a low episode holds between 27
# and 33 % (a medium alarm), a critical one below 22 % (a high alarm after the medium one).
EPISODE_KINDS: tuple[EpisodeKind, ...] = (
    EpisodeKind("dip", 8.0, (38.0, 52.0), 5.0, (180.0, 600.0), (120.0, 900.0), (300.0, 1200.0)),
    EpisodeKind("low", 1.5, (27.0, 33.0), 10.0, (240.0, 900.0), (300.0, 1200.0), (600.0, 1800.0)),
    EpisodeKind("critical", 0.5, (14.0, 22.0), 20.0, (300.0, 900.0), (180.0, 600.0), (900.0, 2400.0)),
    EpisodeKind("rapid", 0.25, (28.0, 42.0), 20.0, (40.0, 80.0), (120.0, 600.0), (600.0, 1800.0), paced=False),
)
# The demo's scripted episode (`showcase_after_s`): started once, never drawn, so no rate of its own.
SHOWCASE = EpisodeKind("critical", 0.0, (17.0, 19.0), 20.0, (300.0, 300.0), (300.0, 300.0), (900.0, 900.0))


@dataclass
class SignalConfig:
    """Episode kinds and artefact rates (per hour of signal unless named per day); seconds."""

    kinds: tuple[EpisodeKind, ...] = EPISODE_KINDS
    max_fall_per_min: float = 8.0  # %-points per minute at the steepest point of a paced fall
    noise: float = 0.8
    motion_rate: float = 6.0
    motion_seconds: tuple[float, float] = (2.0, 15.0)
    contact_per_day: float = 1.0
    contact_seconds: tuple[float, float] = (90.0, 600.0)
    dropout_rate: float = 2.0
    dropout_seconds: tuple[float, float] = (5.0, 60.0)
    showcase_after_s: float | None = None


@dataclass
class Episode:
    """A fall (`fall_s`, a quarter of the duration unless given), a plateau at the floor
    (`hold_s`, 35 % of it unless given) and a recovery over the rest."""

    start: float
    duration: float
    floor: float
    kind: str = "dip"
    fall_s: float | None = None
    hold_s: float | None = None

    @property
    def end(self) -> float:
        return self.start + self.duration

    def depth(self, t: float) -> float:
        """0 outside the episode, 1 at its floor; raised-cosine fall and recovery (smooth, no step)."""
        x = t - self.start
        if x <= 0 or x >= self.duration:
            return 0.0
        fall = self.duration * 0.25 if self.fall_s is None else self.fall_s
        hold = self.duration * 0.35 if self.hold_s is None else self.hold_s
        if x < fall:
            return 0.5 - 0.5 * math.cos(math.pi * x / fall)
        if x < fall + hold:
            return 1.0
        return 0.5 + 0.5 * math.cos(math.pi * (x - fall - hold) / (self.duration - fall - hold))


@dataclass
class PatientSignal:
    rng: random.Random
    config: SignalConfig = field(default_factory=SignalConfig)
    baseline: float = 0.0
    level: float = 0.0
    last_t: float | None = None
    episode: Episode | None = None
    waiting: list[EpisodeKind] = field(default_factory=list)  # arrived while another was under way
    episodes: list[Episode] = field(default_factory=list)  # every episode started, for inspection
    true_value: float = 0.0  # the physiological value of the last sample, before noise and artefacts
    artifact_until: float = 0.0
    contact_until: float = 0.0
    dropout_until: float = 0.0

    def __post_init__(self) -> None:
        self.baseline = self.baseline or self.rng.uniform(55.0, 75.0)
        self.level = self.level or self.baseline

    def _happens(self, rate_per_hour: float, dt_s: float) -> bool:
        return self.rng.random() < rate_per_hour * dt_s / 3600.0

    def sample(self, t: float) -> tuple[float, float] | None:
        """(tissue O2 %, signal quality) at time t (seconds), or None during a dropout."""
        c = self.config
        if self.last_t is None and c.showcase_after_s is not None:
            self._begin(SHOWCASE, t + c.showcase_after_s)
        dt_s = 0.0 if self.last_t is None else max(0.0, t - self.last_t)
        self.last_t = t
        # Slow drift: an Ornstein-Uhlenbeck walk around the patient's baseline (minutes scale).
        self.level += (self.baseline - self.level) * dt_s / 600.0 + self.rng.gauss(0, 0.08) * math.sqrt(dt_s)
        if self.episode is not None and t >= self.episode.end:
            self.episode = None
        self._arrivals(dt_s)
        if self.episode is None and self.waiting:
            self._begin(self.waiting.pop(0), t)
        self.true_value = self.level
        if self.episode is not None:
            self.true_value += (self.episode.floor - self.level) * self.episode.depth(t)
        if t >= self.dropout_until and self._happens(c.dropout_rate, dt_s):
            self.dropout_until = t + self.rng.uniform(*c.dropout_seconds)
        if t < self.dropout_until:
            return None
        if t >= self.artifact_until and self._happens(c.motion_rate, dt_s):
            self.artifact_until = t + self.rng.uniform(*c.motion_seconds)
        if t >= self.contact_until and self._happens(c.contact_per_day / DAY_HOURS, dt_s):
            self.contact_until = t + self.rng.uniform(*c.contact_seconds)
        value = self.true_value + self.rng.gauss(0, c.noise)
        quality = min(1.0, max(0.6, self.rng.gauss(0.93, 0.03)))
        if t < self.artifact_until:
            # Motion: large excursions both ways, and the sensor knows its signal is poor.
            value += self.rng.gauss(0, 10.0)
            quality = self.rng.uniform(0.05, 0.45)
        elif t < self.contact_until:
            # The reader has slipped off the sensor: a weak, unreliable optical signal for minutes.
            value += self.rng.gauss(0, 6.0)
            quality = self.rng.uniform(0.15, 0.45)
        return round(min(100.0, max(0.0, value)), 1), round(quality, 2)

    def _arrivals(self, dt_s: float) -> None:
        # Episodes arrive at their kind's rate whatever is under way; one arriving during another
        # waits for it to end, so episodes never overlap and each kind keeps its documented rate.
        kinds = self.config.kinds
        total = sum(k.per_day for k in kinds)
        if total > 0 and self._happens(total / DAY_HOURS, dt_s):
            self.waiting.append(self.rng.choices(kinds, weights=[k.per_day for k in kinds])[0])

    def _begin(self, kind: EpisodeKind, start: float) -> None:
        floor = min(self.rng.uniform(*kind.floor), self.level - kind.min_drop)
        fall = self.rng.uniform(*kind.fall_s)
        if kind.paced:
            # A raised-cosine fall of depth D over F seconds is steepest at its middle: D*pi/(2F)
            # per second. Stretch F until that is no faster than the paced limit.
            fall = max(fall, (self.level - floor) * math.pi * 60.0 / (2.0 * self.config.max_fall_per_min))
        hold = self.rng.uniform(*kind.hold_s)
        duration = fall + hold + self.rng.uniform(*kind.recover_s)
        self.episode = Episode(start, duration, floor, kind.name, fall, hold)
        self.episodes.append(self.episode)
