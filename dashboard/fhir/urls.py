from django.urls import path, re_path

from dashboard.fhir import views

urlpatterns = [
    path("metadata", views.metadata, name="fhir-metadata"),
    path("Patient/<slug:pseudonym>", views.patient, name="fhir-patient"),
    path("Observation", views.observation_search, name="fhir-observation-search"),
    path("Observation/<str:observation_id>", views.observation, name="fhir-observation"),
    path("Provenance", views.provenance_search, name="fhir-provenance-search"),
    path("Device/<str:device_id>", views.device, name="fhir-device"),
    path("DeviceMetric", views.device_metric_search, name="fhir-devicemetric-search"),
    path("Group/<slug:ward>/$export", views.group_export, name="fhir-group-export"),
    path("$export-status/<uuid:export_id>", views.export_status, name="fhir-export-status"),
    path("$export-file/<uuid:export_id>/<str:resource_type>.ndjson", views.export_file, name="fhir-export-file"),
    re_path(r"^(?P<rest>.*)$", views.unknown, name="fhir-unknown"),
]
