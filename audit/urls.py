from django.urls import path

from audit import auth_views

urlpatterns = [
    path("accounts/login/", auth_views.login_view, name="accounts-login"),
    path("accounts/enroll/", auth_views.enroll_view, name="accounts-enroll"),
    path("accounts/recovery-codes/", auth_views.recovery_codes_view, name="accounts-recovery-codes"),
    path("accounts/logout/", auth_views.logout_view, name="accounts-logout"),
    path("accounts/logout/everywhere/", auth_views.logout_everywhere_view, name="accounts-logout-everywhere"),
    path("accounts/session/ping", auth_views.session_ping_view, name="accounts-session-ping"),
]
