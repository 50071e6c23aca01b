"""Query parameters PostgreSQL cannot store are refused with a JSON 400, never a 500."""

import pytest

from tests.factories import ward
from tests.personas import staff, verified_client

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    ("role", "url"),
    [
        ("clinician", "/api/v1/alarms/?patient=%00"),
        ("clinician", "/api/v1/alarms/?ward=a%00b"),
        ("clinician", "/api/v1/patients/?x%00=1"),
        ("compliance", "/api/v1/audit/events?user=%00"),
        ("compliance", "/audit/?action=%00"),
    ],
)
def test_nul_in_query_is_400_json_for_a_signed_in_user(role, url):
    w = ward()
    client = verified_client(staff(f"{role}-nul", role, [w.code]))
    r = client.get(url)
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "invalid_parameter"
