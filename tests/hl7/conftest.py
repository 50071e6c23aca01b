from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.hl7.support import RunningListener, listener_running


@pytest.fixture
def hl7(transactional_db: None) -> Iterator[RunningListener]:
    """The real ADT listener on a free loopback port (committed data: the listener's threads
    have their own database connections)."""
    yield from listener_running(max_bytes=1024 * 1024, idle_seconds=30)
