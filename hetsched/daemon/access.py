"""The optional shared secret that guards loading and unloading models (``--admin-header NAME=VALUE``).

Triton restricts API groups the same way (``--http-restricted-api
model-repository:NAME=VALUE``): the request must carry the header (HTTP) or
metadata entry (gRPC) with that value.  Inference and health stay open.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass

from hetsched.errors import AccessDeniedError, UsageError


@dataclass(frozen=True)
class AdminSecret:
    header: str  # lower case: HTTP headers are case-insensitive and gRPC metadata keys are lower case
    value: str

    @classmethod
    def parse(cls, text: str | None) -> AdminSecret | None:
        if not text:
            return None
        header, sep, value = text.partition("=")
        if not sep or not header.strip() or not value:
            raise UsageError(
                f"--admin-header {text!r} is not NAME=VALUE, e.g. --admin-header x-admin-key=s3cret"
            )
        return cls(header.strip().lower(), value)

    def check(self, headers: Mapping[str, str]) -> None:
        """Raise AccessDeniedError unless ``headers`` (any case of the name) carry the secret."""
        given = next((v for k, v in headers.items() if k.lower() == self.header), None)
        if given is None or not hmac.compare_digest(given.encode(), self.value.encode()):
            raise AccessDeniedError(
                f"loading and unloading models needs the header {self.header!r} with the "
                "server's secret (tritonclient: load_model(..., headers={...}))"
            )
