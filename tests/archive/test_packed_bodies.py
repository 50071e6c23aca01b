"""The kept batches' bodies come from a statement of their own (telemetry/archive/packed.py),
with each batch's id beside its body: matched to their records by id whatever order each
statement's aggregates took the rows in."""

from __future__ import annotations

import numpy as np
import pytest

from telemetry.archive.layout import ArchiveError
from telemetry.archive.packed import _bodies_aligned

IDS = np.array([7, 3, 9, 4], ">i8")  # the records' order
BODY = {7: b"seven", 3: b"3", 9: b"nine!!", 4: b"", 5: b"another batch's"}
LENGTHS = np.array([len(BODY[int(i)]) for i in IDS], ">i4")


def _sent(order: list[int]) -> tuple[np.ndarray, bytes]:
    return np.array(order, ">i8"), b"".join(BODY[i] for i in order)


@pytest.mark.parametrize("order", [[7, 3, 9, 4], [4, 9, 3, 7], [3, 4, 7, 9], [9, 7, 4, 3]])
def test_bodies_come_back_in_the_records_order_whatever_order_they_were_sent_in(order: list[int]) -> None:
    body_ids, bodies = _sent(order)
    got = _bodies_aligned(IDS, body_ids, bodies, LENGTHS)
    assert got.to_pylist() == [BODY[int(i)] for i in IDS]


@pytest.mark.parametrize("order", [[7, 3, 9], [7, 3, 9, 9], [7, 3, 9, 5]])
def test_bodies_of_other_batches_than_the_records_are_an_error(order: list[int]) -> None:
    body_ids, bodies = _sent(order)
    with pytest.raises(ArchiveError):
        _bodies_aligned(IDS, body_ids, bodies, LENGTHS)
