"""Settings read from the environment: DATABASE_URL keeps every libpq parameter, secrets from files."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import connection

from config.env import database_from_url, envsecret


def test_query_string_parameters_reach_options() -> None:
    entry = database_from_url(
        "postgres://app:p%40ss@db.example:6432/perfuse?sslmode=verify-full&sslrootcert=/etc/ca.pem"
        "&target_session_attrs=read-write&application_name=perfuse-web"
    )
    assert entry["HOST"] == "db.example"
    assert entry["PORT"] == "6432"
    assert entry["USER"] == "app"
    assert entry["PASSWORD"] == "p@ss"
    assert entry["OPTIONS"] == {
        "connect_timeout": 5,
        "sslmode": "verify-full",
        "sslrootcert": "/etc/ca.pem",
        "target_session_attrs": "read-write",
        "application_name": "perfuse-web",
    }


def test_url_connect_timeout_wins_over_the_default() -> None:
    entry = database_from_url("postgres://app@h/perfuse?connect_timeout=2", connect_timeout=9)
    assert entry["OPTIONS"]["connect_timeout"] == 2


def test_socket_directory_and_default_name() -> None:
    entry = database_from_url("postgresql://app@/?host=/var/run/postgresql")
    assert entry["NAME"] == "perfuse"
    assert entry["OPTIONS"]["host"] == "/var/run/postgresql"


@pytest.mark.parametrize("url", ["mysql://u@h/db", "redis://h:6379/0", "h:5432/db"])
def test_other_schemes_are_refused(url: str) -> None:
    with pytest.raises(ImproperlyConfigured, match="postgres://"):
        database_from_url(url)


@pytest.mark.django_db
def test_an_unsatisfiable_sslmode_is_enforced_not_dropped() -> None:
    """The test server speaks no TLS: sslmode=require from the URL must make libpq refuse, which it
    only can when the parameter reached the connection."""
    db = connection.settings_dict
    entry = database_from_url(
        f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}?sslmode=require&connect_timeout=3"
    )
    params = {"host": entry["HOST"], "port": entry["PORT"], "dbname": entry["NAME"], "user": entry["USER"]}
    with pytest.raises(psycopg.OperationalError, match="SSL"):
        psycopg.connect(**params, **entry["OPTIONS"]).close()
    # The same URL without it connects: the refusal above was the sslmode, nothing else.
    psycopg.connect(**params, **{k: v for k, v in entry["OPTIONS"].items() if k != "sslmode"}).close()


def test_secret_from_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "key"
    secret.write_text("s3cret\n")
    monkeypatch.setenv("PERFUSE_X_FILE", str(secret))
    monkeypatch.delenv("PERFUSE_X", raising=False)
    assert envsecret("PERFUSE_X") == "s3cret"
    monkeypatch.setenv("PERFUSE_X", "inline")
    with pytest.raises(ImproperlyConfigured, match="not both"):
        envsecret("PERFUSE_X")
