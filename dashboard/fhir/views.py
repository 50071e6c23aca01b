"""FHIR R4 endpoints under /fhir/R4/ (contract section 5, docs/fhir.md).

Plain Django views, not DRF: the answers are FHIR JSON (`application/fhir+json`) and every
error is an OperationOutcome, never the API's {"error"} body or an HTML page. Access goes through
the access layer like the section-3 APIs: `patient_read` for a patient's data, `device_read`,
`ward_export_read` and `export_read` for devices and exports, each attempt audited once (an
allowed read in the transaction that precedes serving it; a refusal after, by `_answered`).
Bad parameters are 400s with stable codes (FhirError), not audited, like dashboard.api's.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import functools
import logging
import urllib.parse
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import transaction
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse

from audit.access.identity import identity_reveal
from audit.access.policy import (
    AccessDecision,
    Period,
    access_refusal,
    actor_from_request,
    device_read,
    export_read,
    patient_read,
    user_is_verified,
)
from audit.access.refusals import refusal_audit
from config.api_errors import FHIR_JSON, outcome_response
from config.live import iso
from config.refusal import Refusal
from config.replica import on_replica
from dashboard.api import DEFAULT_SPAN, MAX_SPAN, MAX_TIME, MIN_TIME
from dashboard.fhir import exports, resources, selectors
from dashboard.fhir.capability import capability_statement
from dashboard.fhir.ids import BucketId, RawId, observation_id_parse
from dashboard.models import FhirExport
from telemetry.codes import metric_for_code
from telemetry.models import Patient
from telemetry.selectors import Resolution
from telemetry.units import METRICS

log = logging.getLogger(__name__)

View = Callable[..., HttpResponse]
DEFAULT_COUNT = 100
MAX_COUNT = 1000
NDJSON = "application/fhir+ndjson"
OUTPUT_FORMATS = frozenset({NDJSON, "application/ndjson", "ndjson"})
REVEAL_HEADER = "X-Perfuse-Reveal-Purpose"
_ONE_US = dt.timedelta(microseconds=1)


class FhirError(Exception):
    """A client error that is no access decision (a bad parameter): answered, not audited."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail


def fhir_response(body: dict[str, Any], *, status: int = 200, content_type: str = FHIR_JSON) -> HttpResponse:
    return HttpResponse(orjson.dumps(body), status=status, content_type=content_type)


def _answered(methods: tuple[str, ...]) -> Callable[[View], View]:
    """Allow `methods`; answer FhirError and (audited) Refusal as OperationOutcome."""

    def decorate(view: View) -> View:
        @functools.wraps(view)
        def answered(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            if request.method not in methods:
                response = outcome_response(405, "method_not_allowed", f"{request.method} is not supported here")
                response["Allow"] = ", ".join(methods)
                return response
            try:
                return view(request, *args, **kwargs)
            except FhirError as error:
                return outcome_response(error.status, error.code, error.detail)
            except Refusal as refusal:
                refusal.facts.setdefault("path", request.path[:200])
                refusal_audit(refusal, actor_from_request(request))
                return outcome_response(refusal.status, refusal.code, str(refusal.detail))
            except Exception:
                # A bug, not the request's content: logged with its traceback, answered in FHIR
                # (a FHIR client must never parse Django's HTML error page).
                log.exception("FHIR %s %s failed", request.method, request.path)
                return outcome_response(500, "internal_error", "the server failed to answer; it is logged")

        return answered

    return decorate


def _base(request: HttpRequest) -> str:
    return request.build_absolute_uri("/fhir/R4/")


# ---- metadata ----------------------------------------------------------------------------------


@_answered(("GET",))
def metadata(request: HttpRequest) -> HttpResponse:
    """The CapabilityStatement. No patient data, so not audited; a verified session all the same
    (contract section 3: every staff API needs one)."""
    if not (user_is_verified(request.user) and request.user.is_active):
        raise access_refusal(request.user, action="fhir.metadata", detail="Sign in first.")
    return fhir_response(capability_statement(base=_base(request), now=dt.datetime.now(dt.UTC)))


# ---- Patient -----------------------------------------------------------------------------------


def _read(request: HttpRequest, pseudonym: str, action: str, detail: dict[str, Any]) -> Patient:
    return _decided(request, pseudonym, action, detail)[0]


def _decided(
    request: HttpRequest, pseudonym: str, action: str, detail: dict[str, Any]
) -> tuple[Patient, AccessDecision]:
    with transaction.atomic():
        return patient_read(
            user=request.user, actor=actor_from_request(request), pseudonym=pseudonym, action=action, detail=detail
        )


def _allowed_span(decision: AccessDecision, start: dt.datetime, end: dt.datetime) -> Period | None:
    """The part of [start, end) the reader may see. Staff of a ward the patient left see only
    their stays' times (docs/patient-flow.md); a search covers the latest of those stays that
    meets the span, so the time between two of their stays is never served."""
    if decision.periods is None:
        return start, end
    parts = [(max(start, s), min(end, e)) for s, e in decision.periods if s < end and start < e]
    return max(parts) if parts else None


def _observation_allowed(decision: AccessDecision, found: selectors.FoundObservation, key: RawId | BucketId) -> bool:
    if isinstance(key, RawId):
        return decision.within(key.sample_time)
    return decision.within(key.start, key.end - key.start)


@_answered(("GET",))
def patient(request: HttpRequest, pseudonym: str) -> HttpResponse:
    """The pseudonym as identifier; with `X-Perfuse-Reveal-Purpose`, name, MRN and birth date
    too, revealed (and audited, or refused) by audit.access.identity like the chart's reveal."""
    found = _read(request, pseudonym, "patient.fhir.read", {})
    view = resources.PatientView(found.pseudonym, found.discharged_at is None)
    purpose = request.headers.get(REVEAL_HEADER)
    if purpose is not None:
        identity = identity_reveal(actor=actor_from_request(request), user=request.user, patient=found, purpose=purpose)
        view = resources.PatientView(
            found.pseudonym, view.active, name=identity.name, mrn=identity.mrn, date_of_birth=identity.date_of_birth
        )
    return fhir_response(resources.patient_resource(view, mrn_system=settings.PERFUSE_FHIR_MRN_SYSTEM))


# ---- Observation -------------------------------------------------------------------------------

_PREFIXES = ("ge", "gt", "le", "lt", "eq")


def _instant(text: str, name: str) -> tuple[dt.datetime, dt.datetime]:
    """[low, high) of a FHIR date or dateTime value: a whole UTC day for a date, else the instant."""
    text = text.strip().replace(" ", "+")  # an unencoded "+" arrives as a space
    try:
        if len(text) == 10:
            day = dt.date.fromisoformat(text)
            low = dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)
            return low, low + dt.timedelta(days=1)
        value = dt.datetime.fromisoformat(text) if len(text) <= 40 else None
    except ValueError:
        value = None
    if value is None or value.tzinfo is None:
        raise FhirError(400, "invalid_date", f"{name} must be a date (YYYY-MM-DD) or a dateTime with a UTC offset")
    if not MIN_TIME <= value <= MAX_TIME:
        raise FhirError(400, "invalid_date", f"{name} is outside the years 1000..9000")
    value = value.astimezone(dt.UTC)
    return value, value + _ONE_US


def search_span(values: list[str], *, now: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    """The [start, end) the `date` parameters select; like the history API, one hour before the
    end (default now) when there is no lower bound, at most MAX_SPAN."""
    start: dt.datetime | None = None
    end: dt.datetime | None = None
    for raw in values:
        prefix = raw[:2] if raw[:2] in _PREFIXES else "eq"
        low, high = _instant(raw[2:] if raw[:2] in _PREFIXES else raw, "date")
        if prefix in ("ge", "gt", "eq"):
            bound = low if prefix != "gt" else high
            start = bound if start is None else max(start, bound)
        if prefix in ("le", "lt", "eq"):
            bound = high if prefix != "lt" else low
            end = bound if end is None else min(end, bound)
    end = end or now
    start = start or end - DEFAULT_SPAN
    if start >= end:
        raise FhirError(400, "invalid_range", "the date parameters select no time")
    if end - start > MAX_SPAN:
        raise FhirError(400, "range_too_long", f"at most {MAX_SPAN.days} days per search; use $export for more")
    return start, end


def search_metrics(raw: str | None) -> list[str]:
    """The metrics a `code` parameter names (token list: `system|code`, `code`); all without one."""
    if raw is None or raw == "":
        return list(METRICS)
    wanted: set[str] = set()
    for token in raw.split(","):
        system, bar, code = token.partition("|")
        wanted.update(
            metric_for_code(system=system or None, code=code) if bar else metric_for_code(system=None, code=token)
        )
    return [m for m in METRICS if m in wanted]


def _count(raw: str | None) -> int:
    if raw is None or raw == "":
        return DEFAULT_COUNT
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 5 and 1 <= int(raw) <= MAX_COUNT):
        raise FhirError(400, "invalid_count", f"_count must be an integer from 1 to {MAX_COUNT}")
    return int(raw)


def _cursor_text(offset: int, resolutions: dict[str, Resolution]) -> str:
    raw = orjson.dumps({"o": offset, "r": resolutions})
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _cursor(raw: str | None, metrics: list[str]) -> tuple[int, dict[str, Resolution] | None]:
    """(offset, pinned resolutions) of a `next` link's cursor; (0, None) on a first page."""
    if raw is None or raw == "":
        return 0, None
    try:
        data = orjson.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    except (binascii.Error, ValueError, orjson.JSONDecodeError):
        data = None
    pinned = data.get("r") if isinstance(data, dict) else None
    offset = data.get("o") if isinstance(data, dict) else None
    if (
        not isinstance(offset, int)
        or not 0 <= offset <= 10**7
        or not isinstance(pinned, dict)
        or sorted(pinned) != sorted(metrics)
        or not all(v in ("raw", "1m", "1h") for v in pinned.values())
    ):
        raise FhirError(400, "invalid_cursor", "_cursor is not one of this search's pages")
    return offset, {m: pinned[m] for m in metrics}


def _patient_param(raw: str | None) -> str:
    if not raw:
        raise FhirError(400, "patient_required", "patient is required (Observation search is per patient)")
    return raw.removeprefix("Patient/")


@_answered(("GET",))
def observation_search(request: HttpRequest) -> HttpResponse:
    params = request.GET
    now = dt.datetime.now(dt.UTC)
    pseudonym = _patient_param(params.get("patient"))
    metrics = search_metrics(params.get("code"))
    start, end = search_span(params.getlist("date"), now=now)
    count = _count(params.get("_count"))
    offset, pinned = _cursor(params.get("_cursor"), metrics)
    found, decision = _decided(
        request,
        pseudonym,
        "patient.fhir.observations",
        {"start": iso(start), "end": iso(end), "metrics": metrics, "offset": offset},
    )
    allowed = _allowed_span(decision, start, end)
    if allowed is None:
        bundle = resources.searchset(
            [], base=_base(request), total=0, self_url=request.build_absolute_uri(), next_url=None
        )
        return fhir_response(bundle)
    start, end = allowed
    # The search reads the replica when one may answer (config.replica): both parts in one go.
    page = on_replica(
        lambda: selectors.observation_search(
            patient=found,
            resolutions=pinned or selectors.search_resolutions(patient=found, metrics=metrics, start=start, end=end),
            start=start,
            end=end,
            offset=offset,
            count=count,
        )
    )
    resolutions = page.resolutions
    next_url = None
    if offset + count < page.total:
        query: list[tuple[str, str]] = [("patient", pseudonym)]
        if params.get("code"):
            query.append(("code", params["code"]))
        query += [("date", f"ge{iso(start)}"), ("date", f"lt{iso(end)}"), ("_count", str(count))]
        query.append(("_cursor", _cursor_text(offset + count, resolutions)))
        next_url = f"{_base(request)}Observation?{urllib.parse.urlencode(query)}"
    bundle = resources.searchset(
        page.resources, base=_base(request), total=page.total, self_url=request.build_absolute_uri(), next_url=next_url
    )
    return fhir_response(bundle)


def _observation(
    request: HttpRequest, observation_id: str, action: str
) -> tuple[selectors.FoundObservation, RawId | BucketId]:
    """The Observation an id names, its patient's read decided and audited (an id naming no
    patient's data is refused like an unknown patient: no oracle)."""
    key = observation_id_parse(observation_id)
    if key is None:
        raise FhirError(404, "not_found", "not a Perfuse Observation id")
    found = selectors.observation_lookup(key)
    _, decision = _decided(
        request, found.patient.pseudonym if found.patient else "", action, {"observation": observation_id}
    )
    if not _observation_allowed(decision, found, key):
        # Outside the reader's stays (a ward the patient left): as if it did not exist.
        raise FhirError(404, "not_found", "no such Observation")
    return found, key


@_answered(("GET",))
def observation(request: HttpRequest, observation_id: str) -> HttpResponse:
    found, key = _observation(request, observation_id, "patient.fhir.observation")
    resource = selectors.observation_resource(found, key)
    if resource is None:
        raise FhirError(404, "not_found", "no such Observation (the bucket holds no readings)")
    return fhir_response(resource)


@_answered(("GET",))
def provenance_search(request: HttpRequest) -> HttpResponse:
    target = request.GET.get("target", "")
    if not target.startswith("Observation/"):
        raise FhirError(400, "target_required", "target must be Observation/{id}")
    found, key = _observation(request, target.removeprefix("Observation/"), "patient.fhir.provenance")
    resource = selectors.provenance_of(found, key)
    entries = [resource] if resource is not None else []
    bundle = resources.searchset(
        entries, base=_base(request), total=len(entries), self_url=request.build_absolute_uri(), next_url=None
    )
    return fhir_response(bundle)


# ---- Device, DeviceMetric ----------------------------------------------------------------------


@_answered(("GET",))
def device(request: HttpRequest, device_id: str) -> HttpResponse:
    with transaction.atomic():
        found = device_read(
            user=request.user, actor=actor_from_request(request), device_id=device_id, action="device.fhir.read"
        )
    return fhir_response(resources.device_resource(selectors.device_view(found)))


@_answered(("GET",))
def device_metric_search(request: HttpRequest) -> HttpResponse:
    source = request.GET.get("source", "")
    if not source.startswith("Device/"):
        raise FhirError(400, "source_required", "source must be Device/{id}")
    with transaction.atomic():
        found = device_read(
            user=request.user,
            actor=actor_from_request(request),
            device_id=source.removeprefix("Device/"),
            action="device.fhir.metrics",
        )
    entries = selectors.device_metrics(found)
    bundle = resources.searchset(
        entries, base=_base(request), total=len(entries), self_url=request.build_absolute_uri(), next_url=None
    )
    return fhir_response(bundle)


# ---- bulk export -------------------------------------------------------------------------------


def _export_types(raw: str | None) -> list[str]:
    if not raw:
        return list(exports.OUTPUT_TYPES)
    asked = [t.strip() for t in raw.split(",") if t.strip()]
    unknown = sorted(set(asked) - set(exports.OUTPUT_TYPES))
    if unknown or not asked:
        raise FhirError(400, "unsupported_type", f"_type may list {', '.join(exports.OUTPUT_TYPES)}; not {unknown}")
    return [t for t in exports.OUTPUT_TYPES if t in asked]


def _since(raw: str | None) -> dt.datetime | None:
    if not raw:
        return None
    low, _ = _instant(raw, "_since")
    if len(raw.strip()) == 10:
        raise FhirError(400, "invalid_since", "_since must be an instant with a UTC offset")
    return low


def _status_url(request: HttpRequest, export_id: Any) -> str:
    return request.build_absolute_uri(f"/fhir/R4/$export-status/{export_id}")


@_answered(("GET",))
def group_export(request: HttpRequest, ward: str) -> HttpResponse:
    """Bulk Data kick-off: 202 with Content-Location (the status URL) once the job is queued."""
    if "respond-async" not in request.headers.get("Prefer", ""):
        raise FhirError(400, "respond_async_required", "send Prefer: respond-async (Bulk Data kick-off)")
    output_format = request.GET.get("_outputFormat")
    if output_format and output_format not in OUTPUT_FORMATS:
        raise FhirError(400, "unsupported_format", f"_outputFormat must be {NDJSON}")
    types, since = _export_types(request.GET.get("_type")), _since(request.GET.get("_since"))
    try:
        job = exports.export_request(
            user=request.user,
            actor=actor_from_request(request),
            ward_code=ward,
            types=types,
            since=since,
            request_url=request.build_absolute_uri(),
            now=dt.datetime.now(dt.UTC),
        )
    except exports.ExportBusy:
        raise FhirError(
            429, "too_many_exports", f"at most {settings.PERFUSE_FHIR_EXPORT_MAX_ACTIVE} exports at once"
        ) from None
    response = fhir_response(resources.information_outcome("export queued"), status=202)
    response["Content-Location"] = _status_url(request, job.pk)
    return response


def _job(export_id: Any) -> FhirExport | None:
    return FhirExport.objects.select_related("ward").filter(pk=export_id).first()


def _owned(request: HttpRequest, export_id: Any, action: str, **detail: str) -> FhirExport | None:
    """The caller's own export, the act audited (or refused: someone else's is a 404)."""
    job = _job(export_id)
    with transaction.atomic():
        export_read(
            user=request.user,
            actor=actor_from_request(request),
            requester_id=job.requester_id if job else None,
            ward_id=job.ward_id if job else None,
            action=action,
            detail={"export": str(export_id), **detail},
        )
        if action == "fhir.export.cancelled" and job is not None:
            exports.export_cancel(job=job)
    return job


def _manifest(request: HttpRequest, job: FhirExport) -> dict[str, Any]:
    return {
        "transactionTime": iso(job.transaction_time),
        "request": job.request_url,
        "requiresAccessToken": True,  # the files need the requester's session
        "output": [
            {
                "type": t,
                "url": request.build_absolute_uri(f"/fhir/R4/$export-file/{job.pk}/{t}.ndjson"),
                "count": n,
            }
            for t, n in exports.export_outputs(job)
        ],
        "error": [],
    }


@_answered(("GET", "DELETE"))
def export_status(request: HttpRequest, export_id: Any) -> HttpResponse:
    """Polling: 202 with X-Progress while queued, 200 with the manifest when done; DELETE cancels."""
    if request.method == "DELETE":  # Django's CSRF check ran first (config.api_errors.csrf_failure)
        _owned(request, export_id, "fhir.export.cancelled")
        return fhir_response(resources.information_outcome("export cancelled and deleted"), status=202)
    job = _owned(request, export_id, "fhir.export.status")
    assert job is not None  # export_read refuses a missing job
    if job.state == FhirExport.State.QUEUED:
        response = fhir_response(resources.information_outcome("export in progress"), status=202)
        response["X-Progress"] = exports.export_progress(job)
        response["Retry-After"] = "2"
        return response
    if job.state == FhirExport.State.FAILED:
        return outcome_response(500, "export_failed", f"the export failed: {job.error}")
    response = HttpResponse(orjson.dumps(_manifest(request, job)), content_type="application/json")
    if job.expires_at is not None:
        response["Expires"] = job.expires_at.strftime("%a, %d %b %Y %H:%M:%S GMT")
    return response


async def _file_body(export_id: Any, resource_type: str) -> AsyncIterator[bytes]:
    """The file's chunks one at a time, so a large export is never held in memory whole."""
    ids = await sync_to_async(exports.export_chunk_ids)(export_id=export_id, resource_type=resource_type)
    for chunk_id in ids:
        body = await sync_to_async(exports.export_chunk_body)(chunk_id)
        if body is not None:
            yield body.encode()


@_answered(("GET",))
def export_file(request: HttpRequest, export_id: Any, resource_type: str) -> HttpResponse:
    job = _owned(request, export_id, "fhir.export.downloaded", type=resource_type[:40])
    assert job is not None
    if job.state != FhirExport.State.DONE or resource_type not in dict(exports.export_outputs(job)):
        raise FhirError(404, "not_found", "no such file in this export")
    response = StreamingHttpResponse(_file_body(job.pk, resource_type), content_type=NDJSON)
    return response  # type: ignore[return-value]


@_answered(("GET", "POST", "PUT", "PATCH", "DELETE"))
def unknown(request: HttpRequest, rest: str) -> HttpResponse:
    raise FhirError(404, "not_supported", f"{request.method} /fhir/R4/{rest[:100]} is not implemented (see metadata)")
