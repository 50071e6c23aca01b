"""The nginx front of deploy/nginx/: its templates rendered with this deployment's ports and paths.

deploy/nginx/perfuse.conf is the part a host's nginx includes in its http {} context (upstreams,
TLS, headers, the body cap); deploy/nginx/nginx.conf wraps it into a whole configuration for one
unprivileged nginx whose files all live in a state directory (the tests, `make run-tls`). The
templates use `${name}` (braced only) for our values, so nginx's own `$variables` pass
through untouched; a value the template names but the caller did not give is an error, not an
empty directive. Plumbing: no app imports (the certificate comes from telemetry.pki, through
the `proxy_setup` command).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from string import Template

from django.conf import settings

TEMPLATES = Path(settings.BASE_DIR) / "deploy" / "nginx"
HSTS_SECONDS = 63072000  # two years, as the HSTS preload list asks


@dataclass(frozen=True)
class Front:
    """What the rendered configuration needs to know about this deployment."""

    listen: str  # host:port of the TLS listener
    upstreams: tuple[str, ...]  # host:port of each Daphne
    certificate: Path
    certificate_key: Path
    state_dir: Path  # pid and logs (the standalone configuration)
    server_name: str = "localhost"
    static_root: Path | None = None  # served by nginx when given; else Django serves /static/
    max_body_bytes: int = field(default_factory=lambda: int(settings.PERFUSE_INGEST_MAX_BYTES))
    worker_processes: int = 1
    # nginx's temp files (request bodies above the buffer, large answers): its workers must reach
    # it, which an unprivileged worker cannot under a 0700 home or test directory.
    temp_dir: Path | None = None

    @property
    def access_log(self) -> Path:
        return self.state_dir / "access.log"


class _Braced(Template):
    """Only `${name}` is ours: nginx's `$variable` (no braces) passes through as it is."""

    # A string here is compiled by Template's own __init_subclass__ (typeshed types the result).
    pattern = r"""\$(?:\{(?P<braced>[a-z_][a-z0-9_]*)\}|(?P<escaped>\x00)|(?P<named>\x00)|(?P<invalid>\x00))"""  # type: ignore[assignment]


def _render(name: str, values: dict[str, str]) -> str:
    return _Braced((TEMPLATES / name).read_text()).substitute(values)


def site_config(front: Front) -> str:
    """deploy/nginx/perfuse.conf for `front` (the http {} part)."""
    if not front.upstreams:
        raise ValueError("at least one Daphne upstream is needed")
    static = ""
    if front.static_root is not None:
        static = f"    location /static/ {{\n        alias {front.static_root}/;\n        expires 1h;\n    }}\n"
    return _render(
        "perfuse.conf",
        {
            "upstream_servers": "\n".join(f"    server {u} max_fails=1 fail_timeout=5s;" for u in front.upstreams),
            "listen": front.listen,
            "server_name": front.server_name,
            "certificate": str(front.certificate),
            "certificate_key": str(front.certificate_key),
            "hsts_seconds": str(HSTS_SECONDS),
            "access_log": str(front.access_log),
            "max_body_bytes": str(front.max_body_bytes),
            "static_location": static,
        },
    )


def standalone_config(front: Front) -> str:
    """deploy/nginx/nginx.conf for `front`: a whole configuration including the site part."""
    return _render(
        "nginx.conf",
        {
            "state_dir": str(front.state_dir),
            "temp_dir": str(front.temp_dir or front.state_dir),
            "worker_processes": str(front.worker_processes),
        },
    )


def front_write(front: Front) -> Path:
    """Both files into the state directory (with nginx's temp directories); the nginx.conf path."""
    front.state_dir.mkdir(parents=True, exist_ok=True)
    temp = front.temp_dir or front.state_dir
    temp.mkdir(parents=True, exist_ok=True)
    # nginx's workers (an unprivileged user when the master runs as root) write temp files there.
    temp.chmod(0o755)
    (front.state_dir / "perfuse.conf").write_text(site_config(front))
    main = front.state_dir / "nginx.conf"
    main.write_text(standalone_config(front))
    return main
