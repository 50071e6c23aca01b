"""A revoked key is refused on its very next message, at every door that verifies per part: the
group writer (the MQTT bridge's and HTTP's) and a gateway's inner batch. Keys are read from
PostgreSQL for every group and every gateway message (no key cache: the profile in
docs/benchmarks.md, Fleet, found the lookup well under 1 % of the door's CPU), so a revocation
committed between two messages is seen by the second."""

from __future__ import annotations

from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.test import AsyncClient

from telemetry.ingest import group
from telemetry.services import device_key_revoke
from tests import factories
from tests.ingest_helpers import ago, stored

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("ingest_clients")]


def _message(dev: factories.SimDevice, first: int) -> group.Message:
    body = factories.batch_body(dev, factories.series(first, 2, start=ago(60)))
    headers = {name.lower(): value for name, value in dev.sign(body).items()}
    return group.Message(body, headers, topic_device=dev.device_id)


async def test_the_group_writer_refuses_a_key_revoked_since_its_last_group() -> None:
    dev = await sync_to_async(factories.device)()
    (first,) = await group.group_handle([group.message_prepare(_message(dev, 1))])
    assert (first.status, first.body["accepted"]) == (200, 2)
    await sync_to_async(device_key_revoke)(key_id=dev.key_id)
    (second,) = await group.group_handle([group.message_prepare(_message(dev, 3))])
    assert (second.status, second.body["error"]["code"]) == (401, "revoked_key")
    assert [r[0] for r in await stored(dev.device_id)] == [1, 2]


async def test_a_gateway_part_of_a_key_revoked_since_the_last_message_is_refused() -> None:
    ward = await sync_to_async(factories.ward)()
    dev = await sync_to_async(factories.device)(ward.code)
    gw = await sync_to_async(factories.gateway)(ward.code)

    async def part(first: int) -> Any:
        inner = factories.inner(dev, factories.batch_body(dev, factories.series(first, 2, start=ago(60))))
        body = gw.envelope([inner])
        response = await AsyncClient().post(
            "/api/v1/ingest/gateway", body, content_type="application/json", headers=gw.sign(body)
        )
        assert response.status_code == 200
        (result,) = response.json()["results"]
        return result

    assert (await part(1))["status"] == 200
    await sync_to_async(device_key_revoke)(key_id=dev.key_id)
    refused = await part(3)
    assert (refused["status"], refused["error"]["code"]) == (401, "revoked_key")
    assert [r[0] for r in await stored(dev.device_id)] == [1, 2]
