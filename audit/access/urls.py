from django.urls import path

from audit.access import api, views

urlpatterns = [
    path("accounts/", views.account_view, name="accounts"),
    path("accounts/login/", views.login_view, name="accounts-login"),
    path("accounts/enroll/", views.enroll_view, name="accounts-enroll"),
    path("accounts/recovery-codes/", views.recovery_codes_view, name="accounts-recovery-codes"),
    path("accounts/logout/", views.logout_view, name="accounts-logout"),
    path("accounts/logout/everywhere/", views.logout_everywhere_view, name="accounts-logout-everywhere"),
    path("accounts/session/ping", views.session_ping_view, name="accounts-session-ping"),
    path("accounts/display", views.display_mode_view, name="accounts-display"),
    path("audit/break-glass/", views.break_glass, name="audit-break-glass"),
    path("audit/break-glass/<int:grant_id>/end", views.break_glass_close, name="audit-break-glass-end"),
    path("api/v1/patients/<slug:pseudonym>/identity", api.IdentityView.as_view(), name="api-patient-identity"),
]
