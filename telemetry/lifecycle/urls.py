from django.urls import path

from telemetry.lifecycle import views

urlpatterns = [
    path("lifecycle/holds/", views.holds_view, name="legal-holds"),
    path("lifecycle/holds/<int:hold_id>/release", views.hold_release_view, name="legal-hold-release"),
    path("lifecycle/retention/", views.retention_view, name="retention"),
    path("lifecycle/research/", views.research_view, name="research-exports"),
    path("lifecycle/research/<uuid:export_id>/<str:name>", views.research_file_view, name="research-file"),
]
