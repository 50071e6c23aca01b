from django.urls import include, path

from telemetry import api, views

urlpatterns = [
    path("", include("telemetry.lifecycle.urls")),
    path("api/v1/ingest/readings", api.ingest_readings, name="ingest-readings"),
    path("api/v1/ingest/gateway", api.ingest_gateway, name="ingest-gateway"),
    path("devices/", views.devices, name="devices"),
    path("devices/keys/<str:key_id>/revoke", views.device_key_revoke_view, name="device-key-revoke"),
    path("devices/<str:device_id>/calibrations", views.device_calibrations_view, name="device-calibrations"),
    path(
        "devices/<str:device_id>/calibrations/<str:calibration_id>/correct",
        views.calibration_correct_view,
        name="calibration-correct",
    ),
]
