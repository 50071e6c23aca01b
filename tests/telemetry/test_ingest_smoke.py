import pytest
from asgiref.sync import sync_to_async
from django.test import AsyncClient

from tests import factories

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("ingest_clients")]


async def test_smoke():
    dev = await sync_to_async(factories.device)(patient="p-smoke")
    body = factories.batch_body(dev, factories.series(1, 500))
    client = AsyncClient()
    r = await client.post("/api/v1/ingest/readings", body, content_type="application/json", headers=dev.sign(body))
    print(r.status_code, r.content[:300])
    assert r.status_code == 200
    assert r.json()["accepted"] == 500
    r = await client.post("/api/v1/ingest/readings", body, content_type="application/json", headers=dev.sign(body))
    assert r.json()["duplicates"] == 500
