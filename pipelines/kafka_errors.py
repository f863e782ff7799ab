"""A broker that refuses the service's SASL credentials, said in one clear error instead of a retry loop.

kafka-python 3.0 retries a refused login until its bootstrap times out and then reports only
"Unable to bootstrap": the broker's SASL_AUTHENTICATION_FAILED answer arrives with the closing
of the connection, and the client drops it. :func:`check_login` therefore opens one connection
itself, before a consumer, producer or admin client is created, and calls a login the broker
cuts off after it answered the API-version handshake what it is: refused credentials.
"""

from __future__ import annotations

import logging
from typing import Any

from lakeserve.errors import ComponentError
from lakeserve.pipelines.kafka_settings import KafkaSettings

log = logging.getLogger(__name__)


def authentication_failed(kafka: KafkaSettings, bootstrap: str, detail: str = "") -> ComponentError:
    """The error of a refused login, naming the user, the mechanism, the broker and the fields to fix."""
    why = f" ({detail})" if detail else ""
    return ComponentError(
        "kafka",
        f"authentication failed for user {kafka.sasl_username!r} ({kafka.sasl_mechanism}) at {bootstrap}{why}: "
        "check kafka.sasl_username and kafka.sasl_password",
    )


def check_login(kafka: KafkaSettings, timeout_ms: int = 5000) -> None:
    """Raise :func:`authentication_failed` when the first bootstrap server refuses the SASL login.

    Without SASL it does nothing; a broker that cannot be reached, or a failure that is not a
    refused login, is left to the client that follows (it reports or retries it as before)."""
    if kafka.sasl_mechanism is None:
        return
    from kafka import errors
    from kafka.net.manager import KafkaConnectionManager
    from kafka.net.selector import NetworkSelector

    options = {**kafka.client_options(), "request_timeout_ms": timeout_ms}
    bootstrap = kafka.bootstrap_servers[0]
    net = NetworkSelector(**options)
    manager = KafkaConnectionManager(net, **options)
    try:
        node = manager.cluster.bootstrap_brokers()[0]
        conn = manager.get_connection(node.node_id, pop_on_close=False, refresh_metadata_on_err=False)
        net.poll(timeout_ms=timeout_ms, future=conn.init_future)
        exc: Any = conn.init_future.exception if conn.init_future.is_done else None
    except Exception as probe_failed:  # the probe itself broke: no verdict, the client decides
        log.debug("login probe of %s could not run: %s", bootstrap, probe_failed)
        return
    finally:
        manager.close()
        net.close()
    if isinstance(exc, errors.SaslAuthenticationFailedError):
        raise authentication_failed(kafka, bootstrap, str(exc))
    if isinstance(exc, errors.KafkaConnectionError) and conn.broker_version_data is not None:
        # the broker answered ApiVersions, then closed the connection during the SASL exchange
        raise authentication_failed(kafka, bootstrap, "the broker closed the connection during the SASL login")
    if exc is not None:
        log.debug("login probe of %s failed without a verdict on the credentials: %s", bootstrap, exc)
