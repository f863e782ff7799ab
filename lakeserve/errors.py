"""The one error root of lakeserve and its small hierarchy.

Third-party exceptions are wrapped where they enter (``raise ComponentError(...) from exc``),
so callers catch :class:`LakeserveError` and nothing else. A :class:`ScoringError` carries the
HTTP-style status and the error code that users of MLflow scoring servers and Databricks Model
Serving know; the transports (Kafka, HTTP) translate it at the edge and nowhere else.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from pydantic import ValidationError


class LakeserveError(Exception):
    """Root of every error lakeserve raises on purpose."""


class ConfigError(LakeserveError):
    """A setting is missing or breaks a rule; the message names the field."""


def format_validation_error(exc: ValidationError, source: Path | None = None, section: str | None = None) -> str:
    """One line per broken rule: ``endpoint.traffic_config: traffic percentages must sum to 100``.

    ``section``: the name of the tree's section that was validated on its own (``http``)."""
    where = f" in {source}" if source is not None else ""
    lines = [f"invalid settings{where}:"]
    for err in exc.errors(include_url=False):
        loc = ".".join([*([section] if section else []), *(str(p) for p in err["loc"])]) or "(root)"
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)


class ComponentError(LakeserveError):
    """A real component (Kafka, Spark, MLflow, Feast, Delta, Java, Maven) failed to start or answer."""

    def __init__(self, component: str, message: str) -> None:
        super().__init__(f"{component}: {message}")
        self.component = component


class CommitConflict(ComponentError):
    """A Delta commit lost to a concurrent one (another writer appended or changed the schema first)."""

    def __init__(self, message: str) -> None:
        super().__init__("delta", message)


class ScoringError(LakeserveError):
    """A request or record that cannot be scored; becomes an error result, never a crash."""

    status_code: ClassVar[int] = 500
    error_code: ClassVar[str] = "INTERNAL_ERROR"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(ScoringError):
    """The body is not a valid scoring request (bad JSON, unknown format, wrong shape)."""

    status_code = 400
    error_code = "BAD_REQUEST"


class InvalidInput(ScoringError):
    """The body parsed, but a value breaks the model signature or a rule (e.g. non-finite)."""

    status_code = 400
    error_code = "INVALID_PARAMETER_VALUE"


class NotFound(ScoringError):
    """An endpoint, served entity or entity key that does not exist."""

    status_code = 404
    error_code = "RESOURCE_DOES_NOT_EXIST"


class PayloadTooLarge(ScoringError):
    """The request is over the size cap (16 MB by default)."""

    status_code = 413
    error_code = "MAX_REQUEST_SIZE_EXCEEDED"


class ModelError(ScoringError):
    """The model raised while predicting. ``message`` is what the client sees (stable, no model
    internals); ``detail`` is the exception, for the log only."""

    status_code = 500
    error_code = "MODEL_ERROR"

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.detail = detail


class ScoringTimeout(ScoringError):
    """The record was not scored within its deadline."""

    status_code = 504
    error_code = "TIMEOUT"


class ResponseTooLarge(ScoringError):
    """The answer is over ``limits.max_response_bytes``, or the responses topic refused it for its size."""

    status_code = 500
    error_code = "MAX_RESPONSE_SIZE_EXCEEDED"


class ServiceUnavailable(ScoringError):
    """A component the request needs (the online store, a model runtime) is down; retry later."""

    status_code = 503
    error_code = "TEMPORARILY_UNAVAILABLE"


class Overloaded(ServiceUnavailable):
    """Too much work waits already (``http.max_queued``); retry after ``retry_after_s``."""

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class RateLimited(ScoringError):
    """The client is over its request rate (``http.rate_limit``); retry after ``retry_after_s``."""

    status_code = 429
    error_code = "REQUEST_LIMIT_EXCEEDED"

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
