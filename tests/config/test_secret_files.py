"""Secrets from files: every secret-like setting is read by envsecret (NAME or NAME_FILE), the
operating docs list exactly those, and production settings take each one from a file."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = sorted((ROOT / "config" / "settings").glob("*.py"))
# A key, password, token or secret; or a URL of a server that authenticates with a password.
SECRET_LIKE = re.compile(r"(SECRET|PASSWORD|TOKEN|_KEY$|^DATABASE_\w*URLS?$|^REDIS_\w*URLS?$|^PERFUSE_WEBHOOK_URL$)")
# Names that match but hold a file path, not the secret itself.
PATHS = {"PERFUSE_HL7_TLS_KEY", "PERFUSE_HL7_ORU_TLS_KEY"}


def env_reads() -> list[tuple[str, str, str]]:
    """(file, reader, variable) for every env*("NAME", ...) call in the settings modules."""
    reads = []
    for path in SETTINGS:
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id.startswith("env")
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
            ):
                reads.append((path.name, node.func.id, node.args[0].value))
    return reads


def documented_secrets() -> set[str]:
    text = (ROOT / "docs" / "operations.md").read_text()
    section = text.split("### Secrets from files", 1)[1].split("\n#", 1)[0]
    return set(re.findall(r"^\| `([A-Z0-9_]+)` \| `\1_FILE` \|$", section, re.M))


def test_secret_like_settings_are_read_through_envsecret() -> None:
    reads = env_reads()
    secret_like = [(f, reader, name) for f, reader, name in reads if SECRET_LIKE.search(name) and name not in PATHS]
    assert {"SECRET_KEY", "DATABASE_URL", "REDIS_URL", "PERFUSE_SMTP_PASSWORD"} <= {n for _, _, n in secret_like}
    assert [(f, reader, name) for f, reader, name in secret_like if reader != "envsecret"] == []


def test_operations_doc_lists_every_secret() -> None:
    read_as_secret = {name for _, reader, name in env_reads() if reader == "envsecret"}
    assert documented_secrets() == read_as_secret


def test_production_settings_take_every_secret_from_files(tmp_path: Path) -> None:
    values = {
        "SECRET_KEY": "k" * 60,
        "PERFUSE_AUDIT_CHECKPOINT_KEY": "a" * 40,
        "DATABASE_URL": "postgres://perfuse_app:db%40pass@127.0.0.1:6543/perfuse?sslmode=verify-full",
        "REDIS_URL": "redis://:redis-pass@127.0.0.1:6390/3",
        "PERFUSE_SMTP_PASSWORD": "smtp-pass",
        "PERFUSE_WEBHOOK_SECRET": "hook-secret",
        "PERFUSE_WEBHOOK_URL": "https://pager.invalid/hook/t0ken",
        "DATABASE_REPLICA_URL": "postgres://perfuse_app:rep%40pass@127.0.0.1:6544/perfuse?sslmode=verify-full",
        "REDIS_URLS": "redis://:shard-a@127.0.0.1:6391/0,redis://:shard-b@127.0.0.1:6392/0",
        "PERFUSE_RATELIMIT_REDIS_URL": "redis://:limits@127.0.0.1:6393/0",
    }
    assert set(values) == documented_secrets()
    env = {k: v for k, v in os.environ.items() if k not in values and not k.endswith("_FILE")}
    for name, value in values.items():
        (tmp_path / name).write_text(value + "\n")  # a trailing newline, as editors and `echo` leave
        env[f"{name}_FILE"] = str(tmp_path / name)
    env["DJANGO_SETTINGS_MODULE"] = "config.settings.production"
    script = (
        "import json; from django.conf import settings as s; db = s.DATABASES['default']; print(json.dumps({"
        "'SECRET_KEY': s.SECRET_KEY, 'PERFUSE_AUDIT_CHECKPOINT_KEY': s.PERFUSE_AUDIT_CHECKPOINT_KEY,"
        "'db': [db['USER'], db['PASSWORD'], db['PORT'], db['OPTIONS']['sslmode']],"
        "'REDIS_URL': s.REDIS_URL, 'cache': s.CACHES['default']['LOCATION'],"
        "'channels': s.CHANNEL_LAYERS['default']['CONFIG']['hosts'][0],"
        "'PERFUSE_SMTP_PASSWORD': s.PERFUSE_SMTP_PASSWORD, 'PERFUSE_WEBHOOK_SECRET': s.PERFUSE_WEBHOOK_SECRET,"
        "'PERFUSE_WEBHOOK_URL': s.PERFUSE_WEBHOOK_URL,"
        "'replica': [s.DATABASES['replica'][k] for k in ('USER', 'PASSWORD', 'PORT')],"
        "'shards': sorted(set(s.CHANNEL_LAYERS['default']['CONFIG']['hosts']))}))"
    )
    answer = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert answer.returncode == 0, answer.stderr
    seen = json.loads(answer.stdout)
    assert seen == {
        "SECRET_KEY": values["SECRET_KEY"],
        "PERFUSE_AUDIT_CHECKPOINT_KEY": values["PERFUSE_AUDIT_CHECKPOINT_KEY"],
        "db": ["perfuse_app", "db@pass", "6543", "verify-full"],
        "REDIS_URL": values["REDIS_URL"],
        # The channel layer spreads over REDIS_URLS; the cache (lockout) is on the limits' server.
        "cache": values["PERFUSE_RATELIMIT_REDIS_URL"],
        "channels": "redis://:shard-a@127.0.0.1:6391/0",
        "shards": sorted(values["REDIS_URLS"].split(",")),
        "replica": ["perfuse_app", "rep@pass", "6544"],
        "PERFUSE_SMTP_PASSWORD": "smtp-pass",
        "PERFUSE_WEBHOOK_SECRET": "hook-secret",
        "PERFUSE_WEBHOOK_URL": values["PERFUSE_WEBHOOK_URL"],
    }
