"""The replica's settings without a replica server: the deploy warning for a replica reached in
clear, and that without DATABASE_REPLICA_URL every replica-tolerant read stays on the primary
(tests/config/test_replica.py runs the real thing against a streaming standby)."""

from __future__ import annotations

import pytest
from django.db import DEFAULT_DB_ALIAS

from config.env import database_from_url
from config.replica import on_replica, read_alias, replica_configured, replica_pick
from telemetry.checks import replica_in_clear, replica_tls_check


@pytest.mark.parametrize(
    ("url", "in_clear"),
    [
        ("postgres://app@10.0.0.12:5432/perfuse", "10.0.0.12"),
        ("postgres://app@replica.example/perfuse?sslmode=prefer", "replica.example"),
        ("postgres://app@replica.example/perfuse?sslmode=verify-full&sslrootcert=/ca.pem", None),
        ("postgres://app@replica.example/perfuse?sslmode=require", None),
        ("postgres://app@127.0.0.1:5433/perfuse", None),
        ("postgres://app@localhost/perfuse", None),
        ("postgres://app@%2Frun%2Fpostgresql/perfuse", None),
    ],
)
def test_a_replica_off_loopback_must_insist_on_tls(url: str, in_clear: str | None) -> None:
    assert replica_in_clear(database_from_url(url)) == in_clear


def test_the_deploy_check_warns_only_about_a_configured_replica() -> None:
    assert replica_tls_check(None) == []  # the suite runs without DATABASE_REPLICA_URL


@pytest.mark.django_db
def test_without_a_replica_every_read_is_the_primarys() -> None:
    assert not replica_configured()
    assert replica_pick() == DEFAULT_DB_ALIAS
    assert on_replica(read_alias) == DEFAULT_DB_ALIAS
    assert read_alias() == DEFAULT_DB_ALIAS
