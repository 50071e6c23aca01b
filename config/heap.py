"""The server process's start-up heap, moved out of the cyclic garbage collector's way.

A Daphne holds about 134,000 GC-tracked objects once Django, the apps, DRF, Channels and the
ingest path are imported (modules, classes, functions, the URL patterns, settings), and almost
none of them ever becomes garbage. CPython's full (generation 2) collection nevertheless walks
every one of them: measured in a Daphne under the ingest benchmark (bench/ingest.py --proxy,
docs/benchmarks.md), one every 6-7 s, each stopping the event loop for 70-120 ms, so the two or
so requests that Daphne had in flight each took that much longer — which was most of the
ingest's p99. `heap_freeze` collects once (start-up garbage is freed, not kept) and then moves
every surviving object to the permanent generation (`gc.freeze`), which collections skip: the
full collections that follow walk only what was allocated since — a few thousand objects, 1-2 ms
measured in the same benchmark. Objects created later are collected as before; a frozen object
that becomes garbage is freed by reference counting as usual (only a frozen *cycle* would stay,
and the start-up objects do not form cycles that die). Called once by the ASGI entry point
(config/asgi.py) after the application is built.
"""

from __future__ import annotations

import gc


def heap_freeze() -> int:
    """Collect, then freeze every object the collector tracks; how many are frozen now."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
