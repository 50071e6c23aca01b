"""Fixtures of the dashboard tests: a clinician of ward A and a patient on it (the wards are the
shared ones of tests/conftest.py)."""

from __future__ import annotations

from typing import Any

import pytest

from telemetry.models import Ward
from tests.live_support import patient, persona


@pytest.fixture
def clinician(ward_a: Ward) -> Any:
    return persona("clinician", ward_a)


@pytest.fixture
def p1(ward_a: Ward) -> Any:
    return patient("p-one", ward_a)
