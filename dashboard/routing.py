from django.urls import path

from dashboard import consumers

websocket_urlpatterns = [
    path("ws/patients/<slug:pseudonym>/live", consumers.PatientLiveConsumer.as_asgi()),
    path("ws/ward/live", consumers.WardLiveConsumer.as_asgi()),
]
