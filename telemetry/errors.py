"""The registry's one error: an act on devices, wards or patients that cannot be done as asked."""

from __future__ import annotations


class RegistryError(Exception):
    """A registry operation that cannot be done as asked (unknown ward, bad key file…).

    `code` is stable (unknown_ward, unknown_device, unknown_patient, not_admitted, …): the ward
    workflow shows a message for it and the ADT listener names the HL7 field it concerns."""

    def __init__(self, message: str, *, code: str = "invalid") -> None:
        super().__init__(message)
        self.code = code
