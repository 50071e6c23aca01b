"""The start-up heap is frozen out of the cyclic GC (config/heap.py): garbage of the start-up is
freed first, what lives on is skipped by later collections, and the ASGI entry point does it."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import weakref
from pathlib import Path

from config.heap import heap_freeze

ROOT = Path(__file__).resolve().parents[2]


class _Node:
    me: _Node | None = None


def test_start_up_garbage_is_freed_and_the_living_heap_frozen() -> None:
    dead = _Node()
    dead.me = dead  # a cycle: only the cyclic collector frees it
    dead_ref = weakref.ref(dead)
    del dead
    kept = _Node()
    kept.me = kept

    frozen = heap_freeze()
    try:
        assert dead_ref() is None  # collected, not frozen for the life of the process
        # (Not compared with gc.get_freeze_count() a moment later: another thread of the suite's
        # process may free a frozen object meanwhile, which leaves the permanent generation.)
        assert frozen > 0
        # Frozen objects are in no generation: collections no longer walk them.
        assert not any(obj is kept for obj in gc.get_objects())
    finally:
        gc.unfreeze()  # the rest of the suite's process collected as before


def test_the_asgi_entry_point_leaves_the_collector_little_to_walk() -> None:
    """In a fresh interpreter, as Daphne loads it: after importing config.asgi almost every
    tracked object is frozen."""
    probe = (
        "import gc, json, config.asgi\n"
        "print(json.dumps({'frozen': gc.get_freeze_count(), 'tracked': len(gc.get_objects())}))\n"
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings.test"}
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True, check=True, timeout=120
    )
    counts = json.loads(out.stdout.strip().splitlines()[-1])
    assert counts["frozen"] > 10 * counts["tracked"], counts
