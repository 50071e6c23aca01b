from __future__ import annotations

from django import forms

from audit.models import BreakGlassGrant


class LoginForm(forms.Form):
    username = forms.CharField(max_length=150, widget=forms.TextInput(attrs={"autocomplete": "username"}))
    password = forms.CharField(
        max_length=256, strip=False, widget=forms.PasswordInput(attrs={"autocomplete": "current-password"})
    )
    otp_token = forms.CharField(
        label="Authenticator code or recovery code",
        max_length=16,
        required=False,
        widget=forms.TextInput(attrs={"autocomplete": "one-time-code", "inputmode": "numeric"}),
    )


class EnrollForm(forms.Form):
    otp_token = forms.CharField(
        label="Code from your authenticator app",
        max_length=8,
        widget=forms.TextInput(attrs={"autocomplete": "one-time-code", "inputmode": "numeric", "autofocus": True}),
    )


class BreakGlassForm(forms.Form):
    pseudonym = forms.SlugField(max_length=40, label="Patient pseudonym")
    reason = forms.ChoiceField(choices=BreakGlassGrant.Reason.choices)
    purpose = forms.CharField(
        min_length=10,
        max_length=500,
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text="Why you need this patient's data now. Recorded in the audit trail.",
    )
    minutes = forms.IntegerField(min_value=1, initial=60, label="Duration (minutes)")
