"""Staff sign-in (password + TOTP in one form), first-time MFA enrollment, logout, session ping,
the display-mode setting, and the break-glass page (request and end time-limited emergency
access to one patient).

Every attempt is audited: login.success / login.failure / login.locked / logout (a failed or
locked attempt through audit.access.refusals.refusal_audit, answered by the form). A user whose
password is right but who has no confirmed authenticator is not logged in: the session only
remembers "enrolling user X" for a few minutes, and the enrollment page logs them in after they
prove the new authenticator works.
"""

from __future__ import annotations

import datetime as dt
import functools
import time
from typing import Any

import qrcode
import qrcode.image.svg
from django.conf import settings
from django.contrib import messages
from django.contrib.auth import authenticate, get_user_model, login, logout
from django.contrib.auth.models import User
from django.contrib.auth.views import redirect_to_login
from django.db import transaction
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.safestring import mark_safe
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django_otp import login as otp_login
from django_otp import match_token, user_has_device
from django_otp.middleware import is_verified as otp_is_verified
from django_otp.models import Device
from django_otp.plugins.otp_static.models import StaticDevice, StaticToken
from django_otp.plugins.otp_totp.models import TOTPDevice

from audit.access.answers import refusal_pages
from audit.access.breakglass import REQUESTED, break_glass_end, break_glass_grant
from audit.access.context import role_home
from audit.access.decorators import staff_page
from audit.access.forms import BreakGlassForm, EnrollForm, LoginForm
from audit.access.lockout import Gate, login_gate, login_succeeded, second_factor_holds
from audit.access.middleware import LAST_ACTIVITY_KEY
from audit.access.policy import access_refusal, actor_from_request, user_is_verified
from audit.access.refusals import refusal_audit
from audit.access.sessions import (
    staff_session_forget,
    staff_session_register,
    user_logout_everywhere,
    user_sockets_close,
)
from audit.access.staff import StaffError, staff_display_mode_set, totp_secret_base32
from audit.models import BreakGlassGrant, StaffSession
from audit.trail import Actor, audit_record
from config.api_errors import error_response
from config.refusal import Refusal
from config.users import user_account

ENROLL_KEY = "perfuse_enroll"
ENROLL_SECONDS = 600
RECOVERY_CODES = 10


def _next_url(request: HttpRequest, default: str = "") -> str:
    target = request.POST.get("next") or request.GET.get("next") or ""
    if target and url_has_allowed_host_and_scheme(target, {request.get_host()}, require_https=request.is_secure()):
        return target
    return default


def _landing(target: str, user: User) -> str:
    """Where a sign-in ends: the page the user was sent away from, except the bare site root
    (where everyone starts, and which is the ward overview only care roles have): their role's
    home, so no role lands on a page it may not use."""
    return target if target and target != "/" else role_home(user)


def _failure(
    request: HttpRequest, form: LoginForm, actor: Actor, reason: str, user: User | None = None
) -> HttpResponse:
    attempt = Actor(
        user.pk if user is not None else None,
        form.cleaned_data["username"],
        actor.role,
        actor.source_address,
        actor.user_agent,
    )
    refusal_audit(Refusal(action="login.failure", reason=reason), attempt)  # answered by the form
    # One message for every failure: which factor was wrong is not disclosed.
    form.add_error(None, "Username, password or code is not right.")
    return render(request, "accounts/login.html", {"form": form, "next": _next_url(request)}, status=401)


def _start_session(request: HttpRequest, user: User, device: Device, actor: Actor) -> None:
    login(request, user, backend="django.contrib.auth.backends.ModelBackend")
    otp_login(request, device)
    # The OTP middleware ran before login; give this request's user what it would have set
    # (django-otp's attribute, not in User's type).
    user.is_verified = functools.partial(otp_is_verified, user)  # type: ignore[attr-defined]
    request.session[LAST_ACTIVITY_KEY] = time.time()
    request.session.save()
    staff_session_register(user_id=user.pk, session_key=request.session.session_key or "", actor=actor)


def _password_may_be_checked(gate: Gate, *, username: str, token: str) -> bool:
    """Not while this account is locked from this address; while it is locked wider (from other
    addresses, or this address for every account) only behind a one-time code that holds."""
    if gate.verdict == "second_factor_first":
        return second_factor_holds(username=username, token=token)
    return gate.verdict == "evaluate"


def _locked(request: HttpRequest, form: LoginForm, actor: Actor, gate: Gate) -> HttpResponse:
    username = form.cleaned_data["username"]
    refusal_audit(
        Refusal(
            action="login.locked",
            reason="locked",
            facts={"retry_after": gate.retry_after_seconds, "lock": gate.verdict},
        ),
        Actor(None, username, actor.role, actor.source_address, actor.user_agent),
    )
    minutes, seconds = divmod(gate.retry_after_seconds, 60)
    wait = f"{minutes} min {seconds} s" if minutes else f"{seconds} s"
    if gate.verdict == "locked":
        form.add_error(None, f"Too many failed sign-in attempts. Sign-in is paused for {wait}; try again after that.")
    else:
        form.add_error(
            None,
            "Too many failed sign-in attempts. Sign-in with a current code from your authenticator "
            f"still works; otherwise try again after {wait}.",
        )
    response = render(request, "accounts/login.html", {"form": form, "next": _next_url(request)}, status=429)
    response["Retry-After"] = str(gate.retry_after_seconds)
    return response


@require_http_methods(["GET", "POST"])
def login_view(request: HttpRequest) -> HttpResponse:
    if request.method == "GET":
        return render(request, "accounts/login.html", {"form": LoginForm(), "next": _next_url(request)})
    form = LoginForm(request.POST)
    if not form.is_valid():
        return render(request, "accounts/login.html", {"form": form, "next": _next_url(request)}, status=400)
    actor = actor_from_request(request)
    username = form.cleaned_data["username"]
    gate = login_gate(username=username, address=actor.source_address)
    if not _password_may_be_checked(gate, username=username, token=form.cleaned_data["otp_token"]):
        return _locked(request, form, actor, gate)
    user = authenticate(request, username=username, password=form.cleaned_data["password"])
    if user is None:
        return _failure(request, form, actor, "bad_credentials")
    if not user_has_device(user, confirmed=True):
        # Right password, no authenticator yet: enrollment proves one before any session exists.
        request.session.cycle_key()
        request.session[ENROLL_KEY] = {"user": user.pk, "at": time.time(), "next": _next_url(request)}
        audit_record(
            actor=Actor(user.pk, username, actor.role, actor.source_address, actor.user_agent),
            action="login.enrollment_required",
        )
        return redirect("accounts-enroll")
    with transaction.atomic():
        device = match_token(user, form.cleaned_data["otp_token"].replace(" ", ""))
    if device is None:
        return _failure(request, form, actor, "bad_otp", user)
    _start_session(request, user, device, actor)
    login_succeeded(username=username, address=actor.source_address)
    detail: dict[str, Any] = {"factor": "recovery_code" if isinstance(device, StaticDevice) else "totp"}
    if isinstance(device, StaticDevice):
        detail["recovery_codes_left"] = device.token_set.count()
    audit_record(actor=actor_from_request(request), action="login.success", detail=detail)
    return redirect(_landing(_next_url(request), user))


def _pending_user(request: HttpRequest) -> User | None:
    pending = request.session.get(ENROLL_KEY)
    if not isinstance(pending, dict) or time.time() - float(pending.get("at", 0)) > ENROLL_SECONDS:
        return None
    user_id = pending.get("user")
    if not isinstance(user_id, int):
        return None
    return get_user_model().objects.filter(pk=user_id, is_active=True).first()


def _qr_svg(url: str) -> str:
    image = qrcode.make(url, image_factory=qrcode.image.svg.SvgPathImage, box_size=8, border=2)
    return str(image.to_string(encoding="unicode"))


def _recovery_codes(user: User) -> list[str]:
    StaticDevice.objects.filter(user=user).delete()
    device = StaticDevice.objects.create(user=user, name="recovery codes", confirmed=True)
    codes = [StaticToken.random_token() for _ in range(RECOVERY_CODES)]
    StaticToken.objects.bulk_create([StaticToken(device=device, token=code) for code in codes])
    return codes


@require_http_methods(["GET", "POST"])
def enroll_view(request: HttpRequest) -> HttpResponse:
    user = _pending_user(request)
    if user is None:
        request.session.pop(ENROLL_KEY, None)
        return redirect("accounts-login")
    device = TOTPDevice.objects.filter(user=user, confirmed=False).order_by("-id").first()
    if device is None:
        device = TOTPDevice.objects.create(user=user, name="authenticator", confirmed=False)
    form = EnrollForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        actor = actor_from_request(request)
        with transaction.atomic():
            ok = device.verify_token(form.cleaned_data["otp_token"].replace(" ", ""))
            if ok:
                device.confirmed = True
                device.save(update_fields=["confirmed"])
                TOTPDevice.objects.filter(user=user, confirmed=False).delete()
                codes = _recovery_codes(user)
        if ok:
            _start_session(request, user, device, actor)
            next_url = _landing(request.session.pop(ENROLL_KEY, {}).get("next") or "", user)
            login_succeeded(username=user.get_username(), address=actor.source_address)
            audit_record(
                actor=actor_from_request(request), action="mfa.enrolled", detail={"recovery_codes": len(codes)}
            )
            audit_record(actor=actor_from_request(request), action="login.success", detail={"factor": "totp"})
            # Shown once, in this response only; only hashes of use remain (tokens are consumed).
            return render(request, "accounts/recovery_codes.html", {"codes": codes, "next": next_url})
        refusal_audit(
            Refusal(action="mfa.enroll_failed", reason="bad_otp"),
            Actor(user.pk, user.get_username(), "anonymous", actor.source_address, actor.user_agent),
        )
        form.add_error("otp_token", "That code did not match. Check the time on your phone and try the next code.")
    context = {
        "form": form,
        "qr_svg": mark_safe(_qr_svg(device.config_url)),  # noqa: S308 (generated locally from our own URL)
        "secret": totp_secret_base32(device),
        "username": user.get_username(),
    }
    return render(request, "accounts/enroll.html", context, status=200 if request.method == "GET" else 400)


@require_POST
def recovery_codes_view(request: HttpRequest) -> HttpResponse:
    """Replace the user's recovery codes (verified session only); shown once."""
    if not user_is_verified(request.user):
        return redirect("accounts-login")
    with transaction.atomic():
        codes = _recovery_codes(user_account(request.user))
        audit_record(actor=actor_from_request(request), action="mfa.recovery_codes_replaced")
    return render(request, "accounts/recovery_codes.html", {"codes": codes, "next": role_home(request.user)})


@require_GET
def account_view(request: HttpRequest) -> HttpResponse:
    """The user's own account: open sessions, recovery codes, log out everywhere."""
    if not user_is_verified(request.user):
        return redirect_to_login(request.get_full_path())
    sessions = StaffSession.objects.filter(user_id=request.user.pk or 0).order_by("-created_at")
    context = {"sessions": sessions, "current": request.session.session_key}
    return render(request, "accounts/account.html", context)


@require_POST
def logout_view(request: HttpRequest) -> HttpResponse:
    if request.user.is_authenticated:
        actor = actor_from_request(request)
        user_id = request.user.pk
        session_key = request.session.session_key
        with transaction.atomic():
            audit_record(actor=actor, action="logout")
            if session_key:
                staff_session_forget(session_key=session_key)
            user_sockets_close(user_id=user_id, session_key=session_key or None)
        logout(request)
    return redirect(settings.LOGOUT_REDIRECT_URL)


@require_POST
def logout_everywhere_view(request: HttpRequest) -> HttpResponse:
    if request.user.is_authenticated:
        user_logout_everywhere(user_id=request.user.pk, actor=actor_from_request(request))
        logout(request)
    return redirect(settings.LOGOUT_REDIRECT_URL)


@require_POST
def session_ping_view(request: HttpRequest) -> HttpResponse:
    """ "Stay signed in": the middleware already counted this request as activity."""
    if not request.user.is_authenticated:
        return error_response(401, "not_authenticated", "Your session has ended; sign in again.")
    return JsonResponse({"idle_seconds": settings.PERFUSE_SESSION_IDLE_SECONDS})


@require_POST
@refusal_pages()
def display_mode_view(request: HttpRequest) -> HttpResponse:
    """The topbar's display selector: keep the mode for this user and go back to the page."""
    if not user_is_verified(request.user):
        raise access_refusal(request.user, action="staff.display_mode_changed", detail="Sign in to change the display.")
    try:
        staff_display_mode_set(user=request.user, mode=request.POST.get("mode", ""), actor=actor_from_request(request))
    except StaffError as exc:
        messages.error(request, str(exc))
    return redirect(_next_url(request, "/"))


@require_http_methods(["GET", "POST"])
@staff_page("break_glass", "break_glass.form")
def break_glass(request: HttpRequest) -> HttpResponse:
    actor = actor_from_request(request)
    form = BreakGlassForm(request.POST or None, initial={"pseudonym": request.GET.get("patient", "")})
    if request.method == "POST":
        if form.is_valid():
            data = form.cleaned_data
            try:
                grant = break_glass_grant(
                    user=request.user,
                    actor=actor,
                    pseudonym=data["pseudonym"],
                    reason=data["reason"],
                    purpose=data["purpose"],
                    minutes=data["minutes"],
                )
            except Refusal as refusal:
                form.add_error(None, refusal.detail)
            else:
                messages.warning(
                    request,
                    f"Emergency access to {grant.patient.pseudonym} until "
                    f"{grant.expires_at:%H:%M} UTC. Everything you open is recorded as break-glass.",
                )
                return redirect(f"/patients/{grant.patient.pseudonym}/")
        else:
            refused = Refusal(
                action=REQUESTED,
                reason="invalid_form",
                subject=str(request.POST.get("pseudonym", ""))[:80],
                break_glass=True,
                facts={"fields": sorted(form.errors)},
            )
            refusal_audit(refused, actor)  # answered by the form's errors, not a 403 page
        status = 400
    else:
        audit_record(actor=actor, action="break_glass.form")
        status = 200
    grants = BreakGlassGrant.objects.filter(
        user_id=request.user.pk or 0, ended_at__isnull=True, expires_at__gt=dt.datetime.now(dt.UTC)
    ).select_related("patient")
    context = {"form": form, "grants": grants, "max_minutes": settings.PERFUSE_BREAK_GLASS_MAX_MINUTES}
    return render(request, "audit/break_glass.html", context, status=status)


@require_POST
@staff_page("break_glass", "break_glass.ended")
def break_glass_close(request: HttpRequest, grant_id: int) -> HttpResponse:
    grant = BreakGlassGrant.objects.select_related("patient").filter(id=grant_id, user_id=request.user.pk or 0).first()
    if grant is None:
        raise Refusal(
            action="break_glass.ended",
            reason="unknown_grant",
            code="not_found",
            status=404,
            detail="You hold no such grant.",
            facts={"grant": grant_id},
        )
    break_glass_end(grant=grant, actor=actor_from_request(request))
    messages.info(request, f"Emergency access to {grant.patient.pseudonym} ended.")
    return redirect("audit-break-glass")
