"""Small in-memory fakes shipped with the scoring core, for pure-logic tests.

The product's own tests use real MLflow and Feast; these stand in where only the logic of the
core is under test (routing, assembly, error results), the way bytewax ships ``testing.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
import pyarrow as pa

from lakeserve.scoring.devices import Device
from lakeserve.scoring.models import PREDICTION, undeclared_params


@dataclass
class FakeServedModel:
    """A served model whose predictions come from ``fn``; records every frame it is given, and the
    params of each call in ``seen_params``. It declares the params named in ``param_defaults`` (any
    value passes; an undeclared param is refused as the MLflow model refuses it)."""

    name: str
    fn: Callable[[pd.DataFrame], pd.DataFrame | pd.Series]
    model_name: str = "fake_model"
    model_version: str = "1"
    input_schema: pa.Schema | None = None
    output_schema: pa.Schema | None = None
    feature_service: str | None = None
    entity_keys: Sequence[str] = ()
    device: Device = "cpu"
    param_defaults: Mapping[str, Any] = field(default_factory=dict)
    seen: list[pd.DataFrame] = field(default_factory=list)
    seen_params: list[dict[str, Any]] = field(default_factory=list)
    unloaded: bool = False

    def check_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        unknown = undeclared_params(self.name, params, list(self.param_defaults))
        if unknown is not None:
            raise unknown
        return {k: v for k, v in params.items() if v is not None}

    def predict(self, frame: pd.DataFrame, params: Mapping[str, Any] | None = None) -> pd.DataFrame:
        self.seen.append(frame.copy())
        self.seen_params.append({**self.param_defaults, **(params or {})})
        out = self.fn(frame)
        return out.to_frame(PREDICTION) if isinstance(out, pd.Series) else out

    def unload(self) -> None:
        self.unloaded = True


@dataclass
class ManualClock:
    """A clock the test moves by hand; ``now()`` is timezone-aware UTC."""

    current: datetime = field(default_factory=lambda: datetime(2024, 1, 1, tzinfo=UTC))

    def now(self) -> datetime:
        return self.current

    def advance(self, seconds: float) -> None:
        self.current += timedelta(seconds=seconds)
