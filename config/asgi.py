"""ASGI entry point: Django for HTTP, Channels for WebSockets."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.dev")

from django.core.asgi import get_asgi_application

django_asgi_app = get_asgi_application()

from django.conf import settings  # noqa: E402

if settings.PERFUSE_SERVE_STATIC:
    # Daphne serves no static files by itself; in the demo Django serves static/ (production:
    # the proxy serves STATIC_ROOT after collectstatic).
    from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler

    django_asgi_app = ASGIStaticFilesHandler(django_asgi_app)

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from audit.access.asgi import SessionGuardMiddleware  # noqa: E402
from config.heap import heap_freeze  # noqa: E402
from config.logs import CorrelationMiddleware  # noqa: E402
from config.metrics import WebSocketGauge  # noqa: E402
from config.net import ProxyHeadersGate  # noqa: E402
from config.origins import OriginGuard  # noqa: E402
from config.routing import websocket_urlpatterns  # noqa: E402
from telemetry.asgi import IngestRouter  # noqa: E402

# CorrelationMiddleware: a request id on every log line of the request or socket (config/logs.py).
application = CorrelationMiddleware(
    ProtocolTypeRouter(
        {
            # Device ingest skips Django's middleware (measured; see telemetry/asgi.py).
            # ProxyHeadersGate: X-Forwarded-* and X-Request-ID only from PERFUSE_TRUSTED_PROXIES (config/net.py).
            "http": ProxyHeadersGate(IngestRouter(django_asgi_app)),
            # SessionGuardMiddleware: OTP verification and idle expiry for sockets (audit/access/asgi.py).
            # WebSocketGauge: the open-connections gauge of /metrics (config/metrics.py).
            # OriginGuard: the page's origin must be exactly ours, scheme and port included (config/origins.py).
            "websocket": WebSocketGauge(
                ProxyHeadersGate(
                    OriginGuard(AuthMiddlewareStack(SessionGuardMiddleware(URLRouter(websocket_urlpatterns))))
                )
            ),
        }
    )
)

# Everything imported and built so far lives as long as the process: out of the cyclic GC's full
# collections, which otherwise stop the event loop for 70-120 ms every few seconds under ingest
# load (config/heap.py, docs/benchmarks.md).
heap_freeze()
