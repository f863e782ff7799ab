"""The served-model runtime: one interface, its MLflow implementation, and input conformance.

A :class:`ServedModel` is one served entity, loaded: it names the registered model and
version it runs, the input columns its MLflow signature declares (as an Arrow schema, which
the inference table reuses), the feature service it reads (recorded with the model as
``metadata={"lakeserve": {"feature_service": ..., "entity_keys": [...]}}``), and predicts a
frame of prediction columns from a frame of inputs and a request's ``params``. The params are
checked first (:meth:`ServedModel.check_params`) against the params schema of the model's
signature: a param the model does not declare, or a value of the wrong type or shape, is an
``INVALID_PARAMETER_VALUE`` (400) naming the param; a null value is as if the param were not
sent (the model's default applies); an empty or absent params object always passes.

:func:`conform` checks an assembled input frame against that schema record by record: a
missing required column or value, or a value of the wrong type or out of the type's range (no
silent wrap of an int32 or int64, no float32 overflow to infinity), is an
``INVALID_PARAMETER_VALUE`` (400) for that record only; the valid rows come back cast to the
declared types. An optional column that no record of the frame carries is null in every record,
as it is in the records that lack it when another record carries it.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pandas as pd
import pyarrow as pa

from lakeserve.errors import ComponentError, ConfigError, InvalidInput, ModelError
from lakeserve.scoring.devices import Device, placed, placement, require_cuda
from lakeserve.scoring.settings import EndpointSettings, MlflowSettings, ServedEntity

if TYPE_CHECKING:
    from mlflow.pyfunc import PyFuncModel
    from mlflow.types.schema import ParamSchema, ParamSpec

PREDICTION = "prediction"  # the column of a single-output model

# MLflow signature column types (DataType names) as Arrow types.
_ARROW_TYPES: dict[str, pa.DataType] = {
    "boolean": pa.bool_(),
    "integer": pa.int32(),
    "long": pa.int64(),
    "float": pa.float32(),
    "double": pa.float64(),
    "string": pa.string(),
    "binary": pa.binary(),
    "datetime": pa.timestamp("us", tz="UTC"),
}


class ServedModel(Protocol):
    """One served entity, loaded and ready to predict."""

    @property
    def name(self) -> str: ...  # the served entity's name (what routes name)
    @property
    def model_name(self) -> str: ...
    @property
    def model_version(self) -> str: ...
    @property
    def input_schema(self) -> pa.Schema | None: ...  # None: no signature, request fields as sent
    @property
    def output_schema(self) -> pa.Schema | None: ...  # prediction columns; None: not declared
    @property
    def feature_service(self) -> str | None: ...
    @property
    def entity_keys(self) -> Sequence[str]: ...
    @property
    def device(self) -> Device: ...  # where it runs (lakeserve.scoring.devices)

    def check_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """A request's params as the model takes them (``{}`` for none); InvalidInput (400) naming
        a param the model does not declare or a value its params schema refuses."""
        ...

    def predict(self, frame: pd.DataFrame, params: Mapping[str, Any] | None = None) -> pd.DataFrame:
        """Prediction columns, one row per input row (``PREDICTION`` for one output); ``params``
        as :meth:`check_params` returned them."""
        ...

    def unload(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Conformed:
    """An input frame checked against a schema: one error or None per input row, and the rows
    without error (in order, index reset) cast to the schema's types, ready to predict."""

    frame: pd.DataFrame
    errors: list[InvalidInput | None]


def conform(frame: pd.DataFrame, schema: pa.Schema | None) -> Conformed:
    """Check every row of ``frame`` against ``schema``; keep only the schema's columns, cast."""
    if schema is None:
        return Conformed(frame=frame.reset_index(drop=True), errors=[None] * len(frame))
    errors: list[InvalidInput | None] = [None] * len(frame)
    columns: dict[str, pd.Series[Any]] = {}
    for f in schema:
        column = frame[f.name] if f.name in frame.columns else pd.Series([None] * len(frame), index=frame.index)
        present = f.name in frame.columns or f.nullable  # an optional column no record sent is all null
        bad = _bad_rows(column, f, present=present)
        for pos in np.flatnonzero(bad.to_numpy()):
            errors[pos] = errors[pos] or InvalidInput(_message(column.iloc[pos], f, present))
        columns[f.name] = column
    good = np.array([e is None for e in errors], dtype=np.bool_)
    out = pd.DataFrame(columns, index=frame.index)
    cast = pd.DataFrame({f.name: _cast(out[f.name][good], f.type) for f in schema})
    return Conformed(frame=cast.reset_index(drop=True), errors=errors)


def _bad_rows(column: pd.Series[Any], f: pa.Field, present: bool) -> pd.Series[bool]:
    if not present:
        return pd.Series(True, index=column.index)
    null = column.isna()
    wrong = ~null & ~_type_ok(column, f.type)
    return wrong | (null & (not f.nullable))


def _message(value: Any, f: pa.Field, present: bool) -> str:
    if not present:
        return f"missing input column {f.name!r} ({f.type})"
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return f"missing value for required input column {f.name!r} ({f.type})"
    plain = value.item() if isinstance(value, np.generic) else value
    shown = repr(plain) if len(repr(plain)) <= 60 else repr(plain)[:57] + "..."
    numeric = pa.types.is_integer(f.type) or pa.types.is_floating(f.type)
    if numeric and _is_number(value) and _is_whole_or_float(value):
        return f"input column {f.name!r} expects {f.type}, got {shown} (out of range)"
    return f"input column {f.name!r} expects {f.type}, got {type(value).__name__} {shown}"


def _is_whole_or_float(value: Any) -> bool:
    """A number of the right kind for a numeric column (so what is wrong is its range)."""
    return bool(isinstance(value, int | np.integer) or (isinstance(value, float | np.floating) and np.isfinite(value)))


def _type_ok(column: pd.Series[Any], t: pa.DataType) -> pd.Series[bool]:
    kind = column.dtype.kind
    if pa.types.is_integer(t):
        info = np.iinfo(t.to_pandas_dtype())
        if kind in "iu":
            if np.iinfo(column.dtype).min >= info.min and np.iinfo(column.dtype).max <= info.max:
                return pd.Series(True, index=column.index)  # every value of the column's own type fits
            return (column >= info.min) & (column <= info.max)
        if kind == "f":  # floats compare with the exclusive bound: 2**63 - 1 as a float is 2**63
            return ((column % 1 == 0) & (column >= info.min) & (column < float(info.max) + 1)) | column.isna()
        return column.map(lambda v: _is_integral(v) and info.min <= int(v) <= info.max).astype(bool)
    if pa.types.is_floating(t):
        limit = float(np.finfo(t.to_pandas_dtype()).max)
        if kind in "iuf":
            return (column.abs() <= limit) | column.isna() if kind == "f" or t.bit_width < 64 else _true(column)
        return column.map(lambda v: _is_number(v) and _fits(v, limit)).astype(bool)
    return column.map(_CHECKS.get(str(t), _anything)).astype(bool)


def _fits(value: Any, limit: float) -> bool:
    try:
        return abs(float(value)) <= limit
    except OverflowError:  # an integer beyond any float
        return False


def _true(column: pd.Series[Any]) -> pd.Series[bool]:
    return pd.Series(True, index=column.index)


def _is_integral(v: Any) -> bool:
    if isinstance(v, bool | np.bool_):
        return False
    return isinstance(v, int | np.integer) or (isinstance(v, float | np.floating) and float(v).is_integer())


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool | np.bool_)


def _is_timestamp(v: Any) -> bool:
    return isinstance(v, pd.Timestamp | np.datetime64) or (
        isinstance(v, str) and pd.notna(pd.to_datetime(v, errors="coerce", utc=True))
    )


def _anything(v: Any) -> bool:
    return True


_CHECKS: dict[str, Callable[[Any], bool]] = {
    "bool": lambda v: isinstance(v, bool | np.bool_),
    "string": lambda v: isinstance(v, str),
    "binary": lambda v: isinstance(v, bytes | str),
    "timestamp[us, tz=UTC]": _is_timestamp,
}


def _cast(column: pd.Series[Any], t: pa.DataType) -> pd.Series[Any]:
    """The valid values as the declared type; a nullable column keeps NaN (then stays float)."""
    if pa.types.is_timestamp(t):  # each value parsed on its own, as _is_timestamp checked it
        return pd.to_datetime(column, utc=True, format="mixed").dt.tz_localize(None)
    if column.isna().any() or pa.types.is_string(t) or pa.types.is_binary(t):
        return column
    return column.astype(t.to_pandas_dtype())


def arrow_input_schema(signature_inputs: Any) -> pa.Schema | None:
    """The Arrow schema of an MLflow signature's named column inputs; None for tensors or none."""
    if signature_inputs is None or signature_inputs.is_tensor_spec() or not signature_inputs.has_input_names():
        return None
    fields = []
    for spec in signature_inputs.inputs:
        t = _ARROW_TYPES.get(getattr(spec.type, "name", ""))
        if t is None:
            return None  # arrays, objects, maps: leave the check to MLflow
        fields.append(pa.field(str(spec.name), t, nullable=not spec.required))
    return pa.schema(fields)


def _output_schema(outputs: Any) -> pa.Schema | None:
    """Prediction columns from the output signature: named columns as declared, one unnamed as
    ``PREDICTION``; None when the signature declares no output or a tensor."""
    if outputs is None or outputs.is_tensor_spec():
        return None
    if outputs.has_input_names():
        return arrow_input_schema(outputs)
    types = [_ARROW_TYPES.get(getattr(spec.type, "name", "")) for spec in outputs.inputs]
    if len(types) == 1 and types[0] is not None:
        return pa.schema([pa.field(PREDICTION, types[0])])
    return None


def prediction_frame(raw: Any, rows: int, names: Sequence[str] = ()) -> pd.DataFrame:
    """A model's raw output as prediction columns; ``PREDICTION`` when there is one output."""
    if isinstance(raw, pd.DataFrame):
        out = raw.reset_index(drop=True)
        if out.shape[1] == 1:
            out.columns = [PREDICTION]
    elif isinstance(raw, pd.Series):
        out = pd.DataFrame({PREDICTION: raw.to_numpy()})
    else:
        array = np.asarray(raw)
        if array.ndim == 2 and array.shape[1] == 1:
            array = array[:, 0]
        if array.ndim == 1:
            out = pd.DataFrame({PREDICTION: array})
        else:
            labels = (
                list(names) if len(names) == array.shape[1] else [f"{PREDICTION}_{i}" for i in range(array.shape[1])]
            )
            out = pd.DataFrame(array.reshape(array.shape[0], -1), columns=labels)
    if len(out) != rows:
        raise ValueError(f"model returned {len(out)} predictions for {rows} rows")
    return out


def undeclared_params(entity: str, params: Mapping[str, Any], declared: Sequence[str]) -> InvalidInput | None:
    """The 400 for params that ``entity`` does not declare, naming them and the declared ones."""
    unknown = sorted(set(params) - set(declared))
    if not unknown:
        return None
    takes = f"it takes {sorted(declared)}" if declared else "it takes no params"
    return InvalidInput(f"served entity {entity!r} does not take param(s) {unknown}: {takes}")


def predict_isolating(
    model: ServedModel, frame: pd.DataFrame, params: Mapping[str, Any] | None = None
) -> tuple[pd.DataFrame, list[ModelError | None]]:
    """Predictions aligned with ``frame`` (NaN where failed) and one error or None per row; every
    call of the model takes the same ``params``.

    If the batch raises, its halves are retried, down to single rows, so one poison record fails
    alone instead of taking its batch with it. The stream and the batch job both score this way."""
    try:
        out = model.predict(frame, params)
        if len(out) != len(frame):
            raise ValueError(f"model returned {len(out)} predictions for {len(frame)} rows")
        return out.reset_index(drop=True), [None] * len(frame)
    except Exception as exc:  # the model is user code: wrapped where it enters
        if len(frame) == 1:
            # the client sees a stable message; the exception goes to the log with the request id (core)
            error = ModelError(f"served entity {model.name!r} failed on this record", f"{type(exc).__name__}: {exc}")
            return pd.DataFrame(index=range(1)), [error]
    half = len(frame) // 2
    first, first_errors = predict_isolating(model, frame.iloc[:half].reset_index(drop=True), params)
    second, second_errors = predict_isolating(model, frame.iloc[half:].reset_index(drop=True), params)
    return pd.concat([first, second], ignore_index=True), first_errors + second_errors


class MlflowServedModel:
    """A registered MLflow model at one version, loaded as a pyfunc."""

    def __init__(
        self,
        entity: ServedEntity,
        version: str,
        model: PyFuncModel,
        local_dir: str | None = None,
        device: Device = "cpu",
    ) -> None:
        self._entity = entity
        self._device: Device = device
        self._version = version
        self._model: PyFuncModel | None = model
        self._local_dir = local_dir
        meta = (model.metadata.metadata or {}).get("lakeserve", {})
        self._feature_service: str | None = meta.get("feature_service")
        self._entity_keys: tuple[str, ...] = tuple(meta.get("entity_keys", ()))
        signature = model.metadata.signature
        self._input_schema = arrow_input_schema(signature.inputs if signature else None)
        outputs = signature.outputs if signature else None
        self._output_names = [str(n) for n in outputs.input_names()] if outputs is not None else []
        self._output_schema = _output_schema(outputs)
        self._params_schema: ParamSchema | None = signature.params if signature else None

    @classmethod
    def load(cls, entity: ServedEntity, mlflow: MlflowSettings) -> MlflowServedModel:
        """Resolve the entity's alias or version in the registry and load the model; GPU checked first."""
        require_cuda(entity)
        version = resolve_version(entity, mlflow)
        local_dir = tempfile.mkdtemp(prefix=f"lakeserve-{entity.name}-")
        try:
            model, device = _load_pyfunc(entity, version, mlflow, local_dir)
        except BaseException:
            shutil.rmtree(local_dir, ignore_errors=True)
            raise
        return cls(entity, version, model, local_dir, device)

    @property
    def name(self) -> str:
        return self._entity.name

    @property
    def model_name(self) -> str:
        return self._entity.entity_name

    @property
    def model_version(self) -> str:
        return self._version

    @property
    def input_schema(self) -> pa.Schema | None:
        return self._input_schema

    @property
    def output_schema(self) -> pa.Schema | None:
        return self._output_schema

    @property
    def feature_service(self) -> str | None:
        return self._feature_service

    @property
    def entity_keys(self) -> Sequence[str]:
        return self._entity_keys

    @property
    def device(self) -> Device:
        return self._device

    def check_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Checked by MLflow's own ``ParamSpec.validate_type_and_shape``, value by value."""
        if not params:
            return {}
        specs = {p.name: p for p in self._params_schema.params} if self._params_schema is not None else {}
        unknown = undeclared_params(self.name, params, list(specs))
        if unknown is not None:
            raise unknown
        sent = {name: value for name, value in params.items() if value is not None}
        return {name: _param_value(self.name, specs[name], value) for name, value in sent.items()}

    def predict(self, frame: pd.DataFrame, params: Mapping[str, Any] | None = None) -> pd.DataFrame:
        if self._model is None:
            raise ComponentError("mlflow", f"served entity {self.name!r} was unloaded")
        raw = self._model.predict(frame, params=dict(params) if params else None)
        return prediction_frame(raw, len(frame), self._output_names)

    def unload(self) -> None:
        self._model = None
        if self._local_dir is not None:
            shutil.rmtree(self._local_dir, ignore_errors=True)
            self._local_dir = None


def _param_value(entity: str, spec: ParamSpec, value: Any) -> Any:
    """``value`` as the param ``spec`` takes it; InvalidInput naming the param if refused."""
    from mlflow.exceptions import MlflowException
    from mlflow.types.schema import ParamSpec as Spec

    try:
        return Spec.validate_type_and_shape(spec.name, value, spec.dtype, spec.shape)
    except (MlflowException, ValueError, TypeError):  # numpy raises on ragged lists before MLflow checks
        expected = str(getattr(spec.dtype, "name", spec.dtype))
        expected += "" if spec.shape is None else f" of shape {list(spec.shape)}"
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        raise InvalidInput(
            f"param {spec.name!r} of served entity {entity!r} expects {expected}, got {type(value).__name__} {shown}"
        ) from None


def resolve_version(entity: ServedEntity, mlflow: MlflowSettings) -> str:
    """The registry version an entity names (its alias resolved now; later moves need a reload)."""
    if entity.entity_version is not None:
        return entity.entity_version
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow.tracking_uri, registry_uri=mlflow.registry_uri)
    try:
        return str(client.get_model_version_by_alias(entity.entity_name, str(entity.alias)).version)
    except MlflowException as exc:
        raise ConfigError(
            f"served entity {entity.name!r}: alias {entity.alias!r} of model {entity.entity_name!r} "
            f"cannot be resolved: {exc.message}"
        ) from exc


def recorded_entity_keys(entity: ServedEntity, mlflow: MlflowSettings) -> list[str]:
    """The entity keys the entity's registered version records (``metadata={"lakeserve":
    {"entity_keys": [...]}}``), read from its MLmodel file alone: the model is not loaded."""
    from mlflow.artifacts import download_artifacts
    from mlflow.exceptions import MlflowException
    from mlflow.models import Model
    from mlflow.tracking import MlflowClient

    version = resolve_version(entity, mlflow)
    client = MlflowClient(tracking_uri=mlflow.tracking_uri, registry_uri=mlflow.registry_uri)
    try:
        source = client.get_model_version_download_uri(entity.entity_name, version)
        with tempfile.TemporaryDirectory(prefix="lakeserve-mlmodel-") as tmp:
            path = download_artifacts(
                artifact_uri=f"{source.rstrip('/')}/MLmodel", dst_path=tmp, tracking_uri=mlflow.tracking_uri
            )
            meta = Model.load(path).metadata or {}
    except (MlflowException, OSError) as exc:
        raise ComponentError(
            "mlflow", f"reading the metadata of {entity.entity_name}/{version} for served entity {entity.name!r}: {exc}"
        ) from exc
    return [str(k) for k in meta.get("lakeserve", {}).get("entity_keys", [])]


def routing_key(endpoint: EndpointSettings, mlflow: MlflowSettings) -> str | None:
    """The key the endpoint's traffic is sticky by, as the core picks it: ``traffic_config.sticky_key``,
    else the first entity key a routed model records (None: routed by request id)."""
    if endpoint.traffic_config.sticky_key is not None:
        return endpoint.traffic_config.sticky_key
    for route in endpoint.traffic_config.routes:
        keys = recorded_entity_keys(endpoint.entity(route.served_model_name), mlflow)
        if keys:
            return keys[0]
    return None


def _load_pyfunc(
    entity: ServedEntity, version: str, settings: MlflowSettings, local_dir: str
) -> tuple[PyFuncModel, Device]:
    """Download the version's artifacts through the settings' registry (no global URI), then load
    the model onto the entity's device (:func:`lakeserve.scoring.devices.placement`)."""
    from mlflow.artifacts import download_artifacts
    from mlflow.exceptions import MlflowException
    from mlflow.models import Model
    from mlflow.models.model import MODEL_CONFIG
    from mlflow.pyfunc import MAIN, load_model
    from mlflow.tracking import MlflowClient

    uri = f"models:/{entity.entity_name}/{version}"
    client = MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.registry_uri)
    try:
        source = client.get_model_version_download_uri(entity.entity_name, version)
        path = download_artifacts(artifact_uri=source, dst_path=local_dir, tracking_uri=settings.tracking_uri)
        pyfunc = Model.load(path).flavors.get("python_function", {})
        where = placement(entity, pyfunc.get(MAIN), pyfunc.get(MODEL_CONFIG))
        with placed(where):
            return load_model(path, model_config=where.model_config), where.device
    except (MlflowException, OSError, ImportError) as exc:
        raise ComponentError("mlflow", f"loading {uri} for served entity {entity.name!r} failed: {exc}") from exc


def model_summary(models: Mapping[str, ServedModel]) -> dict[str, str]:
    """``{served entity: "model_name/version"}``, for logs and health answers."""
    return {name: f"{m.model_name}/{m.model_version}" for name, m in models.items()}
