"""Ward-workflow routes for the authorization matrix (tests/authz_registry.py): the page, and each
act both as its confirmation step (no `confirm`: a read, audited as ward.flow.confirm) and
confirmed (the act, audited by its service). Allowed: clinicians and on-call staff of the
patient's ward (or of the admitting ward)."""

from __future__ import annotations

from typing import Any

from tests.authz_registry import Route

CARE = frozenset({"clinician", "oncall"})


def _devices(world: Any) -> dict[str, str]:
    """A free device `dev-spare` on the clinicians' ward, and `dev-worn` measuring their patient."""
    from telemetry.stays import device_associate
    from tests import factories

    factories.device("ward-a", device_id="dev-spare")
    factories.device("ward-a", device_id="dev-worn")
    device_associate(pseudonym=world.patient, device_id="dev-worn")
    return {}


def _act(name: str, act: str, data: dict[str, str]) -> list[Route]:
    path = "/ward/flow/patients/{patient}/" + act
    common: dict[str, Any] = {"patient_data": True, "ward_scoped": True, "setup": _devices}
    return [
        Route(f"flow {name} confirmation", "page", "POST", path, CARE, data=data, **common),
        Route(f"flow {name}", "page", "POST", path, CARE, data={**data, "confirm": "yes"}, **common),
    ]


ADMIT = {"ward_code": "ward-a", "bed": "3"}

ROUTES: list[Route] = [
    Route("flow page", "page", "GET", "/ward/flow/", CARE),
    Route("flow admit confirmation", "page", "POST", "/ward/flow/admit", CARE, ward_scoped=True, data=ADMIT),
    Route("flow admit", "page", "POST", "/ward/flow/admit", CARE, ward_scoped=True, data={**ADMIT, "confirm": "yes"}),
    *_act("associate", "associate", {"device_id": "dev-spare"}),
    *_act("swap", "swap", {"old_device_id": "dev-worn", "new_device_id": "dev-spare"}),
    *_act("release", "release", {"device_id": "dev-worn"}),
    *_act("transfer", "transfer", {"ward_code": "ward-b", "bed": "9"}),
    *_act("discharge", "discharge", {}),
]
