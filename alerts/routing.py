from django.urls import path

from alerts.consumers import AlarmConsoleConsumer

websocket_urlpatterns = [
    path("ws/alarms/live", AlarmConsoleConsumer.as_asgi()),
]
