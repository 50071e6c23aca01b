"""Forms of the device-administration pages."""

from __future__ import annotations

from django import forms


class CalibrationCorrectForm(forms.Form):
    gain = forms.FloatField(min_value=0.1, max_value=10.0, help_text="calibrated = gain * value + offset")
    offset = forms.FloatField(min_value=-100.0, max_value=100.0)
    reason = forms.CharField(max_length=300, help_text="why; kept with the calibration and the audit event")


class CalibrationForm(CalibrationCorrectForm):
    calibration_id = forms.CharField(label="Calibration id", max_length=64)
    effective_from = forms.DateTimeField(
        label="Effective from (UTC)",
        input_formats=["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d %H:%M:%S"],
        widget=forms.DateTimeInput(attrs={"type": "datetime-local", "step": "1"}),
    )

    field_order = ["calibration_id", "gain", "offset", "effective_from", "reason"]
