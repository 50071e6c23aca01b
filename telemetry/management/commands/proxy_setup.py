"""`manage.py proxy_setup STATE --listen H:P --upstream H:P …`: the nginx front's configuration.

The certificate is a server identity of the deployment CA (telemetry/pki.py, the CA `make run`
keeps in .data/pki), made once as `proxy.key`/`proxy.pem` for localhost and 127.0.0.1; clients
trust `ca.pem`. Prints `nginx -c …` and NAME=value lines for scripts/run.sh, or --json.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import CommandParser

from config.commands import ResultCommand
from config.proxy import Front, front_write
from telemetry.pki import PkiError, authority_create, identity_ensure

PROXY_IDENTITY = "proxy"


class Command(ResultCommand):
    help = (
        "Write the nginx front's configuration (deploy/nginx/) into STATE, with a server certificate "
        "from the deployment CA (PERFUSE_PKI_DIR or --pki-dir) made once."
    )
    errors = (PkiError, OSError, ValueError, KeyError)

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("state", type=Path, help="nginx's state directory (config, pid, logs, temp files)")
        parser.add_argument("--listen", required=True, help="host:port of the TLS listener")
        parser.add_argument("--upstream", action="append", required=True, help="host:port of a Daphne (repeat)")
        parser.add_argument("--pki-dir", type=Path, help="default: PERFUSE_PKI_DIR")
        parser.add_argument("--static-root", type=Path, help="serve /static/ from here (default: Django serves it)")
        parser.add_argument("--workers", type=int, default=1, help="nginx worker processes")
        parser.add_argument(
            "--temp-dir", type=Path, help="nginx's temp files (default: STATE; its workers must reach it)"
        )

    def act(self, options: dict[str, Any]) -> tuple[dict[str, Any], str]:
        pki_dir = options["pki_dir"] or (Path(settings.PERFUSE_PKI_DIR) if settings.PERFUSE_PKI_DIR else None)
        if pki_dir is None:
            raise PkiError("no PKI directory: give --pki-dir or set PERFUSE_PKI_DIR")
        authority = authority_create(pki_dir.resolve())
        key, cert = identity_ensure(authority, PROXY_IDENTITY, cn="localhost", server=True)
        state = options["state"].resolve()
        front = Front(
            listen=options["listen"],
            upstreams=tuple(options["upstream"]),
            certificate=cert,
            certificate_key=key,
            state_dir=state,
            static_root=options["static_root"].resolve() if options["static_root"] else None,
            worker_processes=options["workers"],
            temp_dir=options["temp_dir"].resolve() if options["temp_dir"] else None,
        )
        config = front_write(front)
        port = front.listen.rsplit(":", 1)[-1]
        env = {"PROXY_URL": f"https://localhost:{port}", "PROXY_CA_FILE": str(authority.ca_path)}
        result = {"config": str(config), "access_log": str(front.access_log), "env": env}
        return result, f"nginx -c {config}\n" + "\n".join(f"{name}={value}" for name, value in env.items())
