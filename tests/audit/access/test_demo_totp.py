import pytest
from django.core.management import CommandError, call_command
from django.test import override_settings
from django_otp.plugins.otp_totp.models import TOTPDevice

from audit.access.roles import CLINICIAN
from audit.access.staff import staff_upsert

pytestmark = pytest.mark.django_db


def test_prints_a_code_the_device_accepts(capsys):
    staff_upsert(username="demo-doc", role=CLINICIAN, ward_codes=[], password="x" * 12, validate_password=False)
    with override_settings(PERFUSE_DEMO_TOOLS=True):
        call_command("demo_totp", "demo-doc")
    code = capsys.readouterr().out.strip()
    assert len(code) == 6
    assert TOTPDevice.objects.get(user__username="demo-doc").verify_token(code)


def test_refused_without_demo_tools():
    staff_upsert(username="demo-doc", role=CLINICIAN, ward_codes=[], password="x" * 12, validate_password=False)
    with override_settings(PERFUSE_DEMO_TOOLS=False), pytest.raises(CommandError, match="disabled"):
        call_command("demo_totp", "demo-doc")
