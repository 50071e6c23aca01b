from django.urls import path

from audit import api, views
from audit.access import views as access_views

urlpatterns = [
    path("accounts/", access_views.account_view, name="accounts"),
    path("accounts/login/", access_views.login_view, name="accounts-login"),
    path("accounts/enroll/", access_views.enroll_view, name="accounts-enroll"),
    path("accounts/recovery-codes/", access_views.recovery_codes_view, name="accounts-recovery-codes"),
    path("accounts/logout/", access_views.logout_view, name="accounts-logout"),
    path("accounts/logout/everywhere/", access_views.logout_everywhere_view, name="accounts-logout-everywhere"),
    path("accounts/session/ping", access_views.session_ping_view, name="accounts-session-ping"),
    path("audit/", views.audit_search, name="audit-search"),
    path("audit/export.csv", views.export_csv, name="audit-export-csv"),
    path("audit/export.fhir.json", views.export_fhir, name="audit-export-fhir"),
    path("audit/patients/<slug:pseudonym>/", views.patient_report, name="audit-patient-report"),
    path("audit/patients/<slug:pseudonym>/disclosures/", views.disclosures, name="audit-disclosures"),
    path("audit/break-glass/", views.break_glass, name="audit-break-glass"),
    path("audit/break-glass/<int:grant_id>/end", views.break_glass_close, name="audit-break-glass-end"),
    path("api/v1/patients/<slug:pseudonym>/identity", api.IdentityView.as_view(), name="api-patient-identity"),
    path("api/v1/audit/events", api.AuditEventsView.as_view(), name="api-audit-events"),
]
