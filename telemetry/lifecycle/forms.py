"""Forms of the lifecycle pages: legal holds and research exports."""

from __future__ import annotations

from typing import Any

from django import forms

TIME_FORMATS = ["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d"]


class HoldForm(forms.Form):
    pseudonym = forms.SlugField(label="Patient (pseudonym)", max_length=40, required=False)
    ward = forms.SlugField(label="or ward (code)", max_length=40, required=False)
    reason = forms.CharField(max_length=300, help_text="the matter or order the hold serves; audited")

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if bool(data.get("pseudonym")) == bool(data.get("ward")):
            raise forms.ValidationError("Name either a patient or a ward.")
        return data


class ReleaseForm(forms.Form):
    reason = forms.CharField(max_length=300, help_text="why the hold ends; audited")


class ResearchExportForm(forms.Form):
    ward = forms.SlugField(label="Ward (code)", max_length=40)
    start = forms.DateTimeField(
        label="From (UTC)", input_formats=TIME_FORMATS, widget=forms.DateTimeInput(attrs={"type": "datetime-local"})
    )
    end = forms.DateTimeField(
        label="To (UTC)", input_formats=TIME_FORMATS, widget=forms.DateTimeInput(attrs={"type": "datetime-local"})
    )
    purpose = forms.CharField(
        max_length=300, help_text="the study and its approval; audited as the disclosure's purpose"
    )
