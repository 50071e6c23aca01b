"""Alarms per patient-day that the demo fleet's signal model raises under the shipped rule defaults.

    .venv/bin/python bench/demo_alarm_rate.py                   # the current model, 8 patients x 24 h
    git show fd505bc:telemetry/simulator/signals.py > /tmp/signals_before.py
    .venv/bin/python bench/demo_alarm_rate.py --signals /tmp/signals_before.py \\
        --offline-rate 0.5 --offline-seconds 60 300              # the model before issue 14, its gateways

Offline and light (one process, no server, no database). N patients' tissue-O2 signals are sampled
at F Hz for H hours with the signal module the fleet uses — loaded from its file, so an older
version is measured by exactly the same code — and fed in sample-time order to the real pure
evaluator (alerts/evaluation.py PatientEvaluator with alerts.models.RULE_DEFAULTS). Its condition
changes become alarm rows as the engine makes them (alerts/engine.py, alerts/lifecycle.py): a raise
opens an alarm unless one of that kind is still open, in which case it is a recurrence of that
alarm; an alarm resolves once its condition has been gone for the suppression window. High-priority
alarms latch until acknowledged: they are taken as acknowledged before the window ends, as on a
staffed ward.

No-data alarms come from the gateways' offline periods (GatewayConfig rate and durations unless
given): the engine's no-data check looks at the device's latest reading of any metric, and skin
temperature and battery readings keep arriving through a tissue-O2 dropout, so only a gateway that
is offline for the no-data delay or longer raises one (it clears when the gateway flushes). Late
readings change nothing else: the engine replays them by sample time.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import os
import random
import sys
from collections import Counter, defaultdict
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.dev")

import django  # noqa: E402

django.setup()

from alerts.evaluation import PatientEvaluator, RuleParams, Sample  # noqa: E402
from alerts.models import RULE_DEFAULTS  # noqa: E402
from alerts.vocabulary import KIND_CATEGORY, KIND_PRIORITY, Kind, Priority  # noqa: E402
from telemetry.simulator import GatewayConfig  # noqa: E402

EPOCH = dt.datetime(2026, 1, 5, tzinfo=dt.UTC).timestamp()
# (change, sample time in seconds) per kind: the evaluator's and the no-data check's condition changes.
Changes = dict[str, list[tuple[str, float]]]


def load_signals(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("demo_alarm_rate_signals", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def patient_changes(signals: ModuleType, seed: int, *, hours: float, hz: float) -> tuple[Changes, Counter[str]]:
    """Condition changes of one simulated patient, and its episodes by kind (if the model records them)."""
    signal = signals.PatientSignal(random.Random(seed))
    evaluator = PatientEvaluator(RuleParams.from_values(RULE_DEFAULTS))
    changes: Changes = defaultdict(list)
    for i in range(int(hours * 3600 * hz)):
        t = EPOCH + i / hz
        sample = signal.sample(t)
        if sample is None:
            continue
        at = dt.datetime.fromtimestamp(t, dt.UTC)
        for event in evaluator.feed([Sample(at, sample[0], sample[1], seq=i)]):
            changes[event.kind].append((event.change, event.at.timestamp()))
    episodes = Counter(e.kind for e in getattr(signal, "episodes", []))
    return changes, episodes


def offline_changes(seed: int, *, hours: float, rate: float, seconds: tuple[float, float], batch_s: float) -> Changes:
    """No-data raises and clears from one gateway's offline periods (drawn as Gateway.run draws them)."""
    rng = random.Random(seed)
    delay = float(RULE_DEFAULTS["no_data_delay_s"])
    out: list[tuple[str, float]] = []
    t, end = EPOCH, EPOCH + hours * 3600
    while t < end:
        if rng.random() < rate * batch_s / 3600.0:
            length = rng.uniform(*seconds)
            if length >= delay:
                out += [("raised", t + delay), ("cleared", t + length)]
            t += length
        t += batch_s
    return {Kind.NO_DATA: out}


def alarm_rows(changes: list[tuple[str, float]], suppression_s: float) -> tuple[int, int]:
    """(alarms opened, recurrences): a raise inside the suppression window after a clear reopens nothing."""
    opened = recurrences = 0
    is_open, cleared = False, None
    for change, at in sorted(changes, key=lambda c: c[1]):
        if change == "cleared":
            cleared = at
            continue
        if is_open and (cleared is None or at < cleared + suppression_s):
            recurrences += 1
        else:
            opened += 1
        is_open, cleared = True, None
    return opened, recurrences


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--signals", type=Path, default=ROOT / "telemetry" / "simulator" / "signals.py")
    parser.add_argument("--patients", type=int, default=8)
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument("--hz", type=float, default=1.0, help="samples per second (the demo's default: 1)")
    parser.add_argument("--seed", type=int, default=1)
    gateway = GatewayConfig()
    parser.add_argument("--offline-rate", type=float, default=gateway.offline_rate, help="per device-hour")
    parser.add_argument("--offline-seconds", type=float, nargs=2, default=gateway.offline_seconds)
    args = parser.parse_args()

    signals = load_signals(args.signals)
    suppression = float(RULE_DEFAULTS["suppression_window_s"])
    raises: Counter[str] = Counter()
    opened: Counter[str] = Counter()
    recurred: Counter[str] = Counter()
    episodes: Counter[str] = Counter()
    for p in range(args.patients):
        # Seeds as run_fleet gives them (gateway seed * 7919 + index; the signal takes seed + 1).
        seed = args.seed * 7919 + p
        changes, kinds = patient_changes(signals, seed + 1, hours=args.hours, hz=args.hz)
        changes.update(
            offline_changes(
                seed, hours=args.hours, rate=args.offline_rate, seconds=tuple(args.offline_seconds), batch_s=1
            )
        )
        episodes += kinds
        for kind, kind_changes in changes.items():
            raises[kind] += sum(1 for change, _ in kind_changes if change == "raised")
            rows, again = alarm_rows(kind_changes, suppression)
            opened[kind] += rows
            recurred[kind] += again

    days = args.patients * args.hours / 24.0
    print(f"{args.signals}: {args.patients} patients x {args.hours:g} h at {args.hz:g} Hz = {days:g} patient-days")
    print(f"gateway offline {args.offline_rate:g}/h for {args.offline_seconds[0]:g}-{args.offline_seconds[1]:g} s")
    print(f"\n{'kind':16} {'priority':8} {'category':13} {'alarms':>7} {'/pt-day':>8} {'recurred':>9} {'raises':>7}")
    for kind in Kind:
        print(
            f"{kind.value:16} {KIND_PRIORITY[kind].value:8} {KIND_CATEGORY[kind].value:13} {opened[kind]:7d} "
            f"{opened[kind] / days:8.2f} {recurred[kind]:9d} {raises[kind]:7d}"
        )
    print()
    for priority in Priority:
        n = sum(opened[k] for k in Kind if KIND_PRIORITY[k] == priority)
        print(f"{priority.value:8} priority: {n:5d} alarms, {n / days:6.2f} per patient-day")
    total = sum(opened.values())
    print(f"all:              {total:5d} alarms, {total / days:6.2f} per patient-day")
    if episodes:
        print("\nepisodes: " + ", ".join(f"{k} {n} ({n / days:.2f}/pt-day)" for k, n in sorted(episodes.items())))


if __name__ == "__main__":
    main()
