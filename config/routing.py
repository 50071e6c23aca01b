"""WebSocket routes of every app, gathered in one place."""

from alerts.routing import websocket_urlpatterns as alerts_ws
from audit.access.routing import websocket_urlpatterns as audit_ws
from dashboard.routing import websocket_urlpatterns as dashboard_ws

websocket_urlpatterns = [*dashboard_ws, *alerts_ws, *audit_ws]
