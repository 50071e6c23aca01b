from django.urls import path

from dashboard import api, views
from dashboard.flow import views as flow_views

urlpatterns = [
    path("", views.overview, name="overview"),
    path("patients/<slug:pseudonym>/", views.patient_chart, name="patient-chart"),
    path("ward/flow/", flow_views.flow_page, name="ward-flow"),
    path("ward/flow/admit", flow_views.flow_admit_view, name="ward-flow-admit"),
    path("ward/flow/patients/<slug:pseudonym>/<slug:act>", flow_views.flow_patient_view, name="ward-flow-act"),
    path("api/v1/patients/", api.PatientListView.as_view(), name="api-patients"),
    path("api/v1/patients/<slug:pseudonym>/series", api.SeriesView.as_view(), name="api-patient-series"),
    path("api/v1/patients/<slug:pseudonym>/annotations", api.AnnotationsView.as_view(), name="api-patient-annotations"),
]
