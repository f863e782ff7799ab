"""Build a Feast ``FeatureStore`` from the ``feast`` settings section, with no YAML on disk.

SQLite online store by default, Redis when ``feast.online_store: redis``. The registry and the
SQLite file live in ``feast.repo_path``. ``import feast`` costs seconds, so it happens here, lazily.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from lakeserve.errors import ComponentError
from lakeserve.features.settings import FeastSettings

if TYPE_CHECKING:
    from feast import FeatureStore


def feature_store(settings: FeastSettings) -> FeatureStore:
    """A FeatureStore over the configured registry and online store."""
    from feast import FeatureStore
    from feast.repo_config import RepoConfig

    assert settings.repo_path is not None, "Settings resolves feast.repo_path"
    root = settings.repo_path
    root.mkdir(parents=True, exist_ok=True)
    config = RepoConfig(
        project=settings.project,
        provider="local",
        registry={"path": str(root / "registry.db"), "cache_ttl_seconds": 60},
        online_store=_online_store(settings),
        offline_store={"type": "file"},
        entity_key_serialization_version=3,
        repo_path=root,
    )
    try:
        return FeatureStore(config=config)
    except Exception as exc:  # feast raises many unrelated types while building a store
        raise ComponentError("feast", f"cannot open the feature store at {root}: {exc}") from exc


def apply_definitions(store: FeatureStore, objects: Sequence[Any]) -> None:
    """Register entities, feature views and services (idempotent, like ``feast apply``)."""
    try:
        store.apply(list(objects))
    except Exception as exc:
        raise ComponentError("feast", f"feast apply failed: {exc}") from exc


def _online_store(settings: FeastSettings) -> dict[str, Any]:
    if settings.online_store == "redis":
        return {"type": "redis", "connection_string": settings.redis_connection_string.get_secret_value()}
    assert settings.repo_path is not None
    return {"type": "sqlite", "path": str(settings.repo_path / "online_store.db")}
