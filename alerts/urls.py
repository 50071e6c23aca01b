from django.urls import path

from alerts import api, roster_views, views
from alerts.history import views as history

urlpatterns = [
    path("alarms/", views.console, name="alarm-console"),
    path("alarms/<int:alarm_id>/", views.explain, name="alarm-explain"),
    path("alarms/rules/", views.rules, name="alarm-rules"),
    path("alarms/oncall/", roster_views.roster, name="alarm-oncall"),
    path("alarms/fatigue/", views.fatigue, name="alarm-fatigue"),
    path("alarms/fatigue.csv", views.fatigue, name="alarm-fatigue-csv"),
    path("alarms/history/", history.history_page, name="alarm-history"),
    path("alarms/history.csv", history.history_csv, name="alarm-history-csv"),
    path("api/v1/alarms/history", history.history_api, name="api-alarm-history"),
    path("api/v1/alarms/", api.alarm_list, name="api-alarms"),
    path("api/v1/alarms/pauses", api.alarm_pause, name="api-alarm-pause"),
    path("api/v1/alarms/audio-pause", api.alarm_audio_pause, name="api-alarm-audio-pause"),
    path("api/v1/alarms/<int:alarm_id>", api.alarm_detail, name="api-alarm"),
    path("api/v1/alarms/<int:alarm_id>/acknowledge", api.alarm_acknowledge, name="api-alarm-acknowledge"),
    path("api/v1/alarms/<int:alarm_id>/accept", api.alarm_accept, name="api-alarm-accept"),
    path("api/v1/alarms/<int:alarm_id>/decline", api.alarm_decline, name="api-alarm-decline"),
]
