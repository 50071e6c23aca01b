"""The simulated patient's tissue-O2 signal: a drifting baseline with noise, desaturation
episodes, motion artifacts (with a low signal quality) and dropouts. Pure Python: no Django, no
I/O; the fleet (telemetry/simulator/fleet.py) samples one PatientSignal per worn device."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field


@dataclass
class SignalConfig:
    """Rates are events per hour of signal; durations in seconds."""

    episode_rate: float = 4.0
    episode_seconds: tuple[float, float] = (20.0, 300.0)
    episode_floor: tuple[float, float] = (22.0, 42.0)
    artifact_rate: float = 12.0
    artifact_seconds: tuple[float, float] = (2.0, 15.0)
    dropout_rate: float = 3.0
    dropout_seconds: tuple[float, float] = (5.0, 60.0)
    noise: float = 0.8


@dataclass
class Episode:
    start: float
    duration: float
    floor: float

    def depth(self, t: float) -> float:
        """0 outside the episode, 1 at its floor: a fall, a plateau, a slower recovery."""
        x = (t - self.start) / self.duration
        if x <= 0 or x >= 1:
            return 0.0
        if x < 0.25:
            return math.sin(x / 0.25 * math.pi / 2)
        if x < 0.6:
            return 1.0
        return math.cos((x - 0.6) / 0.4 * math.pi / 2)


@dataclass
class PatientSignal:
    rng: random.Random
    config: SignalConfig = field(default_factory=SignalConfig)
    baseline: float = 0.0
    level: float = 0.0
    last_t: float | None = None
    episode: Episode | None = None
    artifact_until: float = 0.0
    dropout_until: float = 0.0

    def __post_init__(self) -> None:
        self.baseline = self.baseline or self.rng.uniform(55.0, 75.0)
        self.level = self.level or self.baseline

    def _happens(self, rate_per_hour: float, dt_s: float) -> bool:
        return self.rng.random() < rate_per_hour * dt_s / 3600.0

    def sample(self, t: float) -> tuple[float, float] | None:
        """(tissue O2 %, signal quality) at time t (seconds), or None during a dropout."""
        dt_s = 0.0 if self.last_t is None else max(0.0, t - self.last_t)
        self.last_t = t
        c = self.config
        # Slow drift: an Ornstein-Uhlenbeck walk around the patient's baseline (minutes scale).
        self.level += (self.baseline - self.level) * dt_s / 600.0 + self.rng.gauss(0, 0.08) * math.sqrt(dt_s)
        if self.episode is None and self._happens(c.episode_rate, dt_s):
            self.episode = Episode(t, self._duration(c.episode_seconds), self.rng.uniform(*c.episode_floor))
        if self.episode is not None and t >= self.episode.start + self.episode.duration:
            self.episode = None
        if t >= self.dropout_until and self._happens(c.dropout_rate, dt_s):
            self.dropout_until = t + self.rng.uniform(*c.dropout_seconds)
        if t < self.dropout_until:
            return None
        if t >= self.artifact_until and self._happens(c.artifact_rate, dt_s):
            self.artifact_until = t + self.rng.uniform(*c.artifact_seconds)
        value = self.level
        if self.episode is not None:
            value += (self.episode.floor - self.level) * self.episode.depth(t)
        value += self.rng.gauss(0, c.noise)
        quality = min(1.0, max(0.6, self.rng.gauss(0.93, 0.03)))
        if t < self.artifact_until:
            # Motion: large excursions both ways, and the sensor knows its signal is poor.
            value += self.rng.gauss(0, 10.0)
            quality = self.rng.uniform(0.05, 0.45)
        return round(min(100.0, max(0.0, value)), 1), round(quality, 2)

    def _duration(self, bounds: tuple[float, float]) -> float:
        # Most desaturations are short; some last minutes (log-uniform between the bounds).
        lo, hi = bounds
        return math.exp(self.rng.uniform(math.log(lo), math.log(hi)))
