from django.urls import path

from dashboard import api, views

urlpatterns = [
    path("healthz", views.healthz, name="healthz"),
    path("", views.overview, name="overview"),
    path("patients/<slug:pseudonym>/", views.patient_chart, name="patient-chart"),
    path("api/v1/patients/", api.PatientListView.as_view(), name="api-patients"),
    path("api/v1/patients/<slug:pseudonym>/series", api.SeriesView.as_view(), name="api-patient-series"),
    path("api/v1/patients/<slug:pseudonym>/annotations", api.AnnotationsView.as_view(), name="api-patient-annotations"),
]
