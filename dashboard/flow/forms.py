"""The ward workflow's forms. Device ids come from a text field a barcode scanner types into (it
sends the code and Enter, which submits the form); the confirmation step repeats the fields."""

from __future__ import annotations

from typing import Any

from django import forms

# A scanner's keyboard input: no autocomplete, autocorrect or capitalisation may alter the code.
SCAN_ATTRS = {
    "autocomplete": "off",
    "autocapitalize": "off",
    "autocorrect": "off",
    "spellcheck": "false",
    "enterkeyhint": "go",
    "placeholder": "scan or type the device id",
    "class": "scan",
}


def _device_field(label: str, *, required: bool = True) -> forms.CharField:
    return forms.CharField(label=label, max_length=64, required=required, widget=forms.TextInput(attrs=SCAN_ATTRS))


class AdmitForm(forms.Form):
    ward_code = forms.SlugField(label="Ward", max_length=40)
    bed = forms.CharField(label="Bed", max_length=40, required=False)
    device_id = _device_field("Device", required=False)
    mrn = forms.CharField(label="MRN", max_length=40, required=False, help_text="Kept in the restricted identity map")
    name = forms.CharField(label="Name", max_length=200, required=False)


class DeviceForm(forms.Form):
    device_id = _device_field("Device")


class SwapForm(forms.Form):
    old_device_id = forms.CharField(label="Replace", max_length=64)
    new_device_id = _device_field("New device")


class TransferForm(forms.Form):
    ward_code = forms.SlugField(label="To ward", max_length=40)
    bed = forms.CharField(label="Bed", max_length=40, required=False)


class DischargeForm(forms.Form):
    pass


def form_errors(form: forms.Form) -> str:
    """One line for the page's message: the first error of each field."""
    errors: dict[str, Any] = form.errors
    return "; ".join(f"{name}: {messages[0]}" for name, messages in errors.items())
