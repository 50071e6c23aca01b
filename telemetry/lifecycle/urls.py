from django.urls import path

from telemetry.lifecycle import views

urlpatterns = [
    path("lifecycle/holds/", views.holds_view, name="legal-holds"),
    path("lifecycle/holds/<int:hold_id>/release", views.hold_release_view, name="legal-hold-release"),
    path("lifecycle/retention/", views.retention_view, name="retention"),
]
