"""Secrets are never printed: one redactor, fed from the settings and pyiceberg's catalog configuration.

Secrets reach K2 three ways: its own settings (``SecretStr``: the registry's basic auth, the
SASL password, a TLS key password), pyiceberg's catalog configuration (a REST ``token`` or
``credential``, ``s3.secret-access-key``, a password inside a ``uri``...), and the process
environment pyiceberg and the AWS libraries read (``AWS_SECRET_ACCESS_KEY``...). Each value
is registered with a :class:`Redactor`, which also masks the user info of any URL
(``scheme://user:password@host``). The redactor is applied where text leaves the process:
every log record (:func:`install_log_redaction`), every answer of the web views, the
Prometheus exposition, and the ``k2`` command's error lines.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["MASK", "Redactor", "credential_key", "install_log_redaction", "redactor_for"]

MASK = "***"
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][\w+.-]*://)(?P<user>[^\s/@:]*):(?P<password>[^\s/@]+)@")
_CREDENTIAL_PARTS = (
    "password",
    "secret",
    "token",
    "credential",
    "account-key",
    "account_key",
    "connection-string",
    "connection_string",
    "basic-auth",
    "basic_auth",
    "private-key",
)
_ENVIRONMENT = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "GOOGLE_APPLICATION_CREDENTIALS_JSON")
_SHORTEST = 4
"""Values shorter than this are not registered (masking every "ab" would garble the logs)."""


def credential_key(key: str) -> bool:
    """Whether a configuration key holds a credential (pyiceberg's ``s3.secret-access-key``, ``token``...)."""
    lowered = key.lower()
    return any(part in lowered for part in _CREDENTIAL_PARTS)


class Redactor:
    """Replaces every registered secret, and the password of any URL, with :data:`MASK`."""

    def __init__(self) -> None:
        self._secrets: set[str] = set()

    def add(self, *values: object) -> None:
        """Register secret values (a ``user:password`` pair registers its password too)."""
        for value in values:
            if value is None:
                continue
            text = str(value.get_secret_value() if hasattr(value, "get_secret_value") else value)
            if len(text) >= _SHORTEST:
                self._secrets.add(text)
            _, sep, password = text.partition(":")
            if sep and len(password) >= _SHORTEST and "/" not in text:
                self._secrets.add(password)

    def add_properties(self, properties: Mapping[str, object]) -> None:
        """Register the credentials of a configuration mapping, and the passwords inside its URLs."""
        for key, value in properties.items():
            if value is None:
                continue
            if credential_key(str(key)):
                self.add(value)
            for match in _USERINFO.finditer(str(value)):
                self.add(match.group("password"))

    def __call__(self, text: str) -> str:
        text = _USERINFO.sub(rf"\g<scheme>\g<user>:{MASK}@", text)
        for secret in sorted(self._secrets, key=len, reverse=True):
            if secret in text:
                text = text.replace(secret, MASK)
        return text

    def __len__(self) -> int:
        return len(self._secrets)


def redactor_for(settings: Any, environment: Mapping[str, str] | None = None) -> Redactor:
    """A redactor knowing every secret of ``settings``, of the configured catalog and of the environment."""
    from pyiceberg.utils.config import Config

    redactor = Redactor()
    for name, value in settings:
        if hasattr(value, "get_secret_value"):
            redactor.add(value)
        elif isinstance(value, str):
            for match in _USERINFO.finditer(value):
                redactor.add(match.group("password"))
        if name.endswith("password") and isinstance(value, str):
            redactor.add(value)
    catalog = Config().get_catalog_config(settings.catalog_name)
    if catalog is not None:
        redactor.add_properties(catalog)
    env = os.environ if environment is None else environment
    redactor.add(*(env.get(name) for name in _ENVIRONMENT))
    redactor.add_properties({k: v for k, v in env.items() if k.startswith("PYICEBERG_")})
    return redactor


_redact_logs: list[Callable[[str], str]] = []
"""The redactor log records go through (logging is one per process; so is this)."""


def install_log_redaction(redactor: Callable[[str], str]) -> None:
    """Redact every log record of the process as it is made: its message and its traceback.

    The record factory is wrapped once per process; a later call replaces the redactor it uses.
    """
    installed = bool(_redact_logs)
    _redact_logs[:] = [redactor]
    if installed:
        return
    previous = logging.getLogRecordFactory()
    formatter = logging.Formatter()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        redactor = _redact_logs[0]
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: leave it to logging to report
            return record
        clean = redactor(message)
        if clean != message:
            record.msg, record.args = clean, ()  # (), not None: mode's formatter wraps None in a tuple
        if record.exc_info and record.exc_info[0] is not None:
            record.exc_text = redactor(formatter.formatException(record.exc_info))
        return record

    logging.setLogRecordFactory(factory)
