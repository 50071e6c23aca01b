from django.urls import path

from telemetry import api

urlpatterns = [
    path("api/v1/ingest/readings", api.ingest_readings, name="ingest-readings"),
]
