from django.urls import path

from audit import api, views

urlpatterns = [
    path("audit/", views.audit_search, name="audit-search"),
    path("audit/export.csv", views.export_csv, name="audit-export-csv"),
    path("audit/export.fhir.json", views.export_fhir, name="audit-export-fhir"),
    path("audit/patients/<slug:pseudonym>/", views.patient_report, name="audit-patient-report"),
    path("audit/patients/<slug:pseudonym>/disclosures/", views.disclosures, name="audit-disclosures"),
    path("api/v1/audit/events", api.AuditEventsView.as_view(), name="api-audit-events"),
]
