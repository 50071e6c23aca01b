from django.urls import path

from audit.access.consumers import SessionConsumer

websocket_urlpatterns = [path("ws/session", SessionConsumer.as_asgi())]
