from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView

urlpatterns = [
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("", include("telemetry.urls")),
    path("", include("audit.urls")),
    path("", include("audit.access.urls")),
    path("", include("alerts.urls")),
    path("fhir/R4/", include("dashboard.fhir.urls")),
    path("", include("dashboard.urls")),
]

handler400 = "dashboard.views.error_400"
handler403 = "dashboard.views.error_403"
handler404 = "dashboard.views.error_404"
handler500 = "dashboard.views.error_500"
