"""Masking of secrets wherever settings or locations are printed or logged.

:func:`redact_uri` masks the credentials of one location: the password of ``user:password@``
(``postgresql://user:pw@host/db``, ``redis://:pw@host``, ``s3://KEY:SECRET@bucket``) and the value
of secret-looking parameters (``?password=``, ``token=``, ``sig=``, ... also ``,password=`` in
Redis connection strings). :func:`redact` walks a dumped settings tree: ``SecretStr`` values, the
values of secret-named keys and every value under ``storage_options`` become :data:`MASK`, and
every other string goes through :func:`redact_uri`. :func:`redact_text` masks every location in
free text (an error message), and :class:`RedactingFilter` does so for each log record of the
handler it is added to (the CLI adds it to its handlers). Nothing here imports lakeserve.
"""

from __future__ import annotations

import logging
import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

MASK = "***"
_SECRET_WORDS = ("password", "passwd", "pwd", "secret", "token", "credential", "api_key", "apikey",
                 "access_key", "private_key", "session_key", "sig", "signature", "sas")  # fmt: skip
_SECRET_PARAM = re.compile(r"(?i)(^|[?&,;\s])([\w.-]*(?:" + "|".join(_SECRET_WORDS) + r")[\w.-]*)=([^&,;\s]*)")
_SECRET_KEY = re.compile(r"(?i)(password|passwd|secret|credential|api_?key|private_key|access_key|sasl_password)")
_MASKED_SECTIONS = ("storage_options",)
_LOCATION = re.compile(r"[A-Za-z][\w+.-]*://[^\s'\"<>]+")
_LOOSE_USERINFO = re.compile(r"^([A-Za-z][\w+.-]*://)([^:/?#@]*):[^@]*@")


def redact_uri(value: str) -> str:
    """``value`` with the password of its ``user:password@`` part and secret parameters masked."""
    masked = _SECRET_PARAM.sub(lambda m: f"{m.group(1)}{m.group(2)}={MASK}", value)
    return _mask_userinfo(masked)


def _mask_userinfo(value: str) -> str:
    """``scheme://user:MASK@host...``; a password with an unescaped ``/``, ``?`` or ``#`` (which
    URL parsers take for the path) is masked too, at the cost of over-masking such a path."""
    if "://" not in value or "@" not in value:
        return value
    try:
        parts = urlsplit(value)
    except ValueError:
        parts = None
    if parts is not None and "@" in parts.netloc:
        userinfo, _, host = parts.netloc.rpartition("@")
        if ":" not in userinfo:
            return value
        return urlunsplit(parts._replace(netloc=f"{userinfo.split(':', 1)[0]}:{MASK}@{host}"))
    return _LOOSE_USERINFO.sub(lambda m: f"{m.group(1)}{m.group(2)}:{MASK}@", value, count=1)


def redact(tree: Any, key: str = "") -> Any:
    """A copy of a dumped settings tree with every secret masked (see the module docstring)."""
    if isinstance(tree, dict):
        if key in _MASKED_SECTIONS:
            return {k: MASK for k in tree}
        return {k: redact(v, str(k)) for k, v in tree.items()}
    if isinstance(tree, list | tuple):
        return [redact(v, key) for v in tree]
    if type(tree).__name__ in ("SecretStr", "SecretBytes"):
        return MASK
    if isinstance(tree, str):
        if _SECRET_KEY.search(key) and tree:
            return MASK
        return redact_uri(tree)
    return tree


def redact_text(text: str) -> str:
    """``text`` with every ``scheme://...`` location in it and every secret parameter masked."""
    return _SECRET_PARAM.sub(
        lambda m: f"{m.group(1)}{m.group(2)}={MASK}", _LOCATION.sub(lambda m: redact_uri(m[0]), text)
    )


class RedactingFilter(logging.Filter):
    """Masks credentials in the message of each record (formatted once, here)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = redact_text(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True
