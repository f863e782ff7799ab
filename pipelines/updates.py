"""Zero-downtime endpoint updates: new models load in the background, the swap happens between
micro-batches, and a failed load leaves the old config serving.

Two things trigger an update:

* ``lakeserve endpoint update FILE`` validates the new endpoint, checks that every version it
  names resolves in the registry, and writes it to the endpoint's control file
  (``<state_dir>/endpoints/<name>.yaml``, replaced atomically);
* an alias moved in the MLflow registry (``champion`` now names another version).

Every worker polls both every ``poll_interval_s``. It loads only models whose version changed,
reuses the others, and hands the result to the delivery loop, which swaps it in before its next
micro-batch. A change is compared with the newest prepared config (the pending update while the
loop has not taken it, e.g. an idle REST server), so one move is loaded once, not at every poll;
a pending update that a newer one replaces before it was swapped in has its own loads unloaded.
The outcome (applied, or failed and why) is written to the control file's
``.status.json`` beside it, which ``lakeserve endpoint status`` and tests read.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import ValidationError

from lakeserve.errors import ConfigError, LakeserveError, format_validation_error
from lakeserve.pipelines.settings import ServiceSettings
from lakeserve.scoring.core import ScoringCore
from lakeserve.scoring.models import MlflowServedModel, ServedModel, model_summary, resolve_version
from lakeserve.scoring.settings import EndpointSettings, MlflowSettings, ServedEntity

log = logging.getLogger(__name__)

Loader = Callable[[ServedEntity], ServedModel]
T = TypeVar("T")


@dataclass(frozen=True)
class Update:
    endpoint: EndpointSettings
    models: Mapping[str, ServedModel]


def control_file(state_dir: Path, endpoint_name: str) -> Path:
    return state_dir / "endpoints" / f"{endpoint_name}.yaml"


def read_endpoint_file(path: Path) -> EndpointSettings:
    """An endpoint config from YAML: either the endpoint itself or a settings file's ``endpoint``."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read endpoint file {path}: {exc}") from None
    if isinstance(data, dict) and "endpoint" in data:
        data = data["endpoint"]
    if isinstance(data, dict) and "config" in data:  # the Databricks REST shape {name, config: {...}}
        data = {"name": data.get("name"), **data["config"]}
    try:
        return EndpointSettings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, path).replace("invalid settings", "invalid endpoint")) from None


def publish(endpoint: EndpointSettings, state_dir: Path, mlflow: MlflowSettings) -> Path:
    """Validate ``endpoint`` against the registry and write it where running workers look."""
    for entity in endpoint.served_entities:
        resolve_version(entity, mlflow)  # ConfigError now rather than a failed load later
    path = control_file(state_dir, endpoint.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".yaml.tmp")
    tmp.write_text(yaml.safe_dump(endpoint.model_dump(mode="json"), sort_keys=False))
    os.replace(tmp, path)
    return path


def read_status(state_dir: Path, endpoint_name: str) -> dict[str, object] | None:
    path = control_file(state_dir, endpoint_name).with_suffix(".status.json")
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return None


class EndpointUpdater:
    """Watches the control file and the registry; prepares updates off the scoring thread."""

    def __init__(
        self,
        endpoint: EndpointSettings,
        models: Mapping[str, ServedModel],
        state_dir: Path,
        mlflow: MlflowSettings,
        loader: Loader,
        poll_interval_s: float = 2.0,
    ) -> None:
        self.current = Update(endpoint, dict(models))
        self.state_dir, self.mlflow, self.loader, self.poll_interval_s = state_dir, mlflow, loader, poll_interval_s
        self._file_stamp = self._stamp()
        self._pending: Update | None = None
        self._lock = threading.Lock()

    def take_pending(self) -> Update | None:
        """The prepared update, if any (called by the delivery loop between micro-batches)."""
        with self._lock:
            update, self._pending = self._pending, None
        return update

    def applied(self, update: Update, retired: Mapping[str, ServedModel]) -> None:
        """Record the swap and unload the models the new config no longer uses."""
        self._unload(retired, keep=[update])
        self.current = update
        self._write_status("applied", None)

    def refused(self, update: Update, error: Exception) -> None:
        """Record that a prepared update could not be swapped in; unload the models it loaded."""
        self._unload(update.models, keep=[self.current])
        self._write_status("failed", str(error))

    def _unload(self, models: Mapping[str, ServedModel], keep: list[Update]) -> None:
        """Unload ``models`` but those ``keep`` or the pending update (which may reuse them) hold."""
        with self._lock:
            holders = [*keep, *([self._pending] if self._pending is not None else [])]
        in_use = {id(m) for u in holders for m in u.models.values()}
        for model in models.values():
            if id(model) not in in_use:
                model.unload()

    def watch(self, stop: threading.Event) -> None:
        """Poll until ``stop``; run it in a daemon thread."""
        while not stop.wait(self.poll_interval_s):
            try:
                self.check()
            except Exception as exc:  # keep watching; the old config keeps serving
                log.exception("endpoint update check failed")
                self._write_status("failed", f"{type(exc).__name__}: {exc}")

    def check(self) -> Update | None:
        """Prepare an update if the control file or an alias changed; returns it (or None)."""
        endpoint = self._wanted_endpoint()
        if endpoint is None:
            return None
        try:
            update = Update(endpoint, self._load(endpoint))
        except LakeserveError as exc:
            log.error("endpoint update refused, old config keeps serving: %s", exc)
            self._write_status("failed", str(exc))
            return None
        with self._lock:
            superseded, self._pending = self._pending, update
        if superseded is not None:  # prepared, never swapped in: its own loads would leak
            self._unload(superseded.models, keep=[self.current])
        return update

    def _newest(self) -> Update:
        """What the service will serve once the loop takes what is prepared."""
        with self._lock:
            return self._pending or self.current

    def _wanted_endpoint(self) -> EndpointSettings | None:
        stamp = self._stamp()
        if stamp != self._file_stamp:
            self._file_stamp = stamp
            try:
                return read_endpoint_file(control_file(self.state_dir, self.current.endpoint.name))
            except ConfigError as exc:
                self._write_status("failed", str(exc))
                return None
        newest = self._newest()
        moved = [
            e
            for e in newest.endpoint.served_entities
            if e.alias and resolve_version(e, self.mlflow) != newest.models[e.name].model_version
        ]
        return newest.endpoint if moved else None

    def _load(self, endpoint: EndpointSettings) -> dict[str, ServedModel]:
        """The models of ``endpoint``: those the pending or current config already holds, reused."""
        models: dict[str, ServedModel] = {}
        candidates = [self._newest(), self.current]
        for entity in endpoint.served_entities:
            version = resolve_version(entity, self.mlflow)
            reusable = (
                held.models[entity.name]
                for held in candidates
                if entity.name in held.models
                and held.models[entity.name].model_name == entity.entity_name
                and held.models[entity.name].model_version == version
                and held.endpoint.entity(entity.name).workload_type == entity.workload_type
            )
            held_model = next(reusable, None)
            models[entity.name] = held_model if held_model is not None else self.loader(entity)
        return models

    def _stamp(self) -> tuple[int, int] | None:
        try:
            st = control_file(self.state_dir, self.current.endpoint.name).stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def _write_status(self, state: str, error: str | None) -> None:
        path = control_file(self.state_dir, self.current.endpoint.name).with_suffix(".status.json")
        path.parent.mkdir(parents=True, exist_ok=True)
        now = datetime.now(UTC)
        status = {
            "state": state,
            "error": error,
            "at": now.isoformat(),
            "at_epoch": now.timestamp(),
            "pid": os.getpid(),
            "serving": {n: f"{m.model_name}/{m.model_version}" for n, m in self.current.models.items()},
        }
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(status))
        os.replace(tmp, path)


def load_models(settings: ServiceSettings, endpoint: EndpointSettings) -> dict[str, ServedModel]:
    return {e.name: MlflowServedModel.load(e, settings.mlflow) for e in endpoint.served_entities}


def new_updater(
    settings: ServiceSettings, endpoint: EndpointSettings, models: Mapping[str, ServedModel]
) -> EndpointUpdater:
    """The updater that watches this endpoint's control file and aliases for a service serving ``models``."""
    return EndpointUpdater(
        endpoint,
        models,
        settings.stack.state_dir,
        settings.mlflow,
        lambda entity: MlflowServedModel.load(entity, settings.mlflow),
    )


def apply_pending_update(
    updater: EndpointUpdater, core: ScoringCore, prepare: Callable[[Update], T]
) -> tuple[Update, T] | None:
    """Swap the updater's prepared update into ``core``, if there is one; call between micro-batches.

    ``prepare`` builds what the caller must install with the new models (its row format); it
    runs before the swap, so a ConfigError from it or from the swap refuses the update and the
    old config keeps serving. Returns the update and what ``prepare`` built, or None. Shared by
    the Kafka loop and the REST server, so both follow ``lakeserve endpoint update`` and aliases.
    """
    update = updater.take_pending()
    if update is None:
        return None
    try:
        prepared = prepare(update)
        retired = core.swap(update.models, update.endpoint).models
    except ConfigError as exc:
        log.error("endpoint update refused, old config keeps serving: %s", exc)
        updater.refused(update, exc)
        return None
    updater.applied(update, retired)
    log.info("endpoint %s now serves %s", update.endpoint.name, model_summary(update.models))
    return update, prepared
