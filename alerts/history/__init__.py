"""Alarm history: its page, CSV export and JSON API are edge views (alerts/history/views.py);
its reads are alerts.selectors (`alarm_history`, `history_rows`)."""
