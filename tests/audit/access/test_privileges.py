"""Django's own privileges grant nothing in Perfuse (issue 9 item 5): no /django-admin/, no
superuser bypass of a role's capabilities, and a deploy check about accounts with the flags."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.test import Client
from django_otp.plugins.otp_totp.models import TOTPDevice

from audit.access.checks import staff_flag_check
from audit.access.policy import user_can
from tests import personas

pytestmark = pytest.mark.django_db


def _verified(user):
    """The user as a verified request carries it (fresh: capabilities are cached per object)."""
    fresh = get_user_model().objects.get(pk=user.pk)
    fresh.is_verified = lambda: True
    return fresh


def test_there_is_no_django_admin():
    assert Client().get("/django-admin/").status_code == 404
    admin_user = get_user_model().objects.create_superuser("root", password=personas.PASSWORD)
    client = Client()
    client.force_login(admin_user)
    assert client.get("/django-admin/").status_code == 404


def test_a_superuser_flag_does_not_add_capabilities_to_a_role(ward_clinician):
    clinician = ward_clinician
    get_user_model().objects.filter(pk=clinician.pk).update(is_superuser=True, is_staff=True)
    user = _verified(clinician)
    assert user.has_perm("audit.view_audit_trail")  # what Django would have let through
    assert user_can(user, "view_ward_patients")
    assert not user_can(user, "view_audit_trail")
    assert not user_can(user, "edit_alarm_rules")


def test_a_superuser_without_a_role_can_do_nothing():
    root = get_user_model().objects.create_superuser("root", password=personas.PASSWORD)
    TOTPDevice.objects.create(user=root, name="authenticator", confirmed=True)
    assert not any(user_can(_verified(root), c) for c in ("view_ward_patients", "view_audit_trail", "manage_staff"))
    page = personas.verified_client(root).get("/audit/")
    assert page.status_code == 403


def test_a_permission_given_to_the_user_directly_is_no_role(device_admin):
    officer = device_admin
    officer.user_permissions.add(Permission.objects.get(codename="view_audit_trail"))
    assert not user_can(_verified(officer), "view_audit_trail")


def test_deploy_check_warns_about_active_staff_or_superuser_accounts(oncall_nurse):
    assert staff_flag_check(None) == []
    get_user_model().objects.create_superuser("root", password=personas.PASSWORD)
    get_user_model().objects.create_user("helpdesk", is_staff=True)
    get_user_model().objects.create_user("gone", is_superuser=True, is_active=False)
    [warning] = staff_flag_check(None)
    assert warning.id == "access.W001" and "helpdesk, root" in warning.msg and "gone" not in warning.msg


def test_add_staff_clears_the_flags():
    get_user_model().objects.create_superuser("root", password=personas.PASSWORD)
    personas.staff("root", "admin")
    user = get_user_model().objects.get(username="root")
    assert (user.is_staff, user.is_superuser) == (False, False)
    assert staff_flag_check(None) == []
