"""The access layer: who is asking, and what they may see and do.

Login with OTP and enrolment (views, forms), roles as Django groups (roles), ward scope and
capability checks (policy), staff sessions and logout everywhere (sessions), login lockout,
break-glass grants, identity reveal, the page guard (decorators), the HTTP and WebSocket session
guards (middleware, asgi) and staff accounts (staff). It sits above telemetry (it decides access
to telemetry's patients) and writes its acts to the audit trail (audit.trail); its tables live in
audit.models so their migrations stay in the audit app.

Import from the submodules; this package re-exports nothing, so importing one of them (roles,
from the app config and a migration) loads no models.
"""
