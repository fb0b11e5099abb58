"""ONNX export of a fitted model pipeline (where skl2onnx can convert it), with a parity check.

The ONNX graph takes one input per signature column (numeric/boolean as double,
categoricals as string), exactly the columns the joblib artifact takes, and
outputs the class probabilities. An export only counts when its probabilities
match the scikit-learn pipeline's on the given rows within ``tolerance``; the
registry lists ``onnx`` among a version's formats only then.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from churn.model.features import ModelSignature, to_model_input

log = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"


class OnnxExportError(RuntimeError):
    """The pipeline cannot be exported to ONNX, or the export disagrees with scikit-learn."""


@dataclass
class OnnxExport:
    """Where the ONNX file is and how closely it reproduces the scikit-learn probabilities."""

    path: str
    max_abs_diff: float
    rows_checked: int


_REGISTERED = False


def _register_missing_indicator() -> None:
    """Teach skl2onnx sklearn's MissingIndicator (IsNaN on the flagged columns, cast to the input type)."""
    global _REGISTERED
    if _REGISTERED:
        return
    from onnx import TensorProto
    from skl2onnx import update_registered_converter
    from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType
    from sklearn.impute import MissingIndicator

    def shape(operator) -> None:
        rows = operator.inputs[0].get_first_dimension()
        width = len(operator.raw_operator.features_)
        kind = DoubleTensorType if isinstance(operator.inputs[0].type, DoubleTensorType) else FloatTensorType
        operator.outputs[0].type = kind([rows, width])

    def convert(scope, operator, container) -> None:
        model = operator.raw_operator
        if not np.isnan(model.missing_values):
            raise NotImplementedError("MissingIndicator export supports missing_values=nan only")
        selected = scope.get_unique_variable_name("mi_cols")
        container.add_initializer(selected, TensorProto.INT64, [len(model.features_)],
                                  [int(i) for i in model.features_])
        picked = scope.get_unique_variable_name("mi_picked")
        container.add_node("Gather", [operator.inputs[0].full_name, selected], [picked], axis=1,
                           name=scope.get_unique_operator_name("MiGather"))
        flags = scope.get_unique_variable_name("mi_isnan")
        container.add_node("IsNaN", [picked], [flags], name=scope.get_unique_operator_name("MiIsNaN"))
        to = TensorProto.DOUBLE if isinstance(operator.inputs[0].type, DoubleTensorType) else TensorProto.FLOAT
        container.add_node("Cast", [flags], [operator.outputs[0].full_name], to=to,
                           name=scope.get_unique_operator_name("MiCast"))

    update_registered_converter(MissingIndicator, "SklearnMissingIndicator", shape, convert)

    from skl2onnx.operator_converters.imputer_op import convert_sklearn_imputer
    from skl2onnx.shape_calculators.imputer import calculate_sklearn_imputer_output_shapes
    from sklearn.impute import SimpleImputer

    def imputer_shape(operator) -> None:
        if not isinstance(operator.inputs[0].type, DoubleTensorType):
            calculate_sklearn_imputer_output_shapes(operator)
            return
        rows = operator.inputs[0].get_first_dimension()
        kept = int(np.sum(~np.isnan(operator.raw_operator.statistics_.astype(float))))
        kind = type(operator.inputs[0].type)
        operator.outputs[0].type = kind([rows, kept])

    def imputer_convert(scope, operator, container) -> None:
        # onnxruntime has no double Imputer kernel; Where(IsNaN(x), median, x) is exact in double.
        model = operator.raw_operator
        if not isinstance(operator.inputs[0].type, DoubleTensorType):
            convert_sklearn_imputer(scope, operator, container)
            return
        if not (isinstance(model.missing_values, float) and np.isnan(model.missing_values)):
            raise NotImplementedError("SimpleImputer export supports missing_values=nan only")
        stats = model.statistics_.astype(float)
        kept = np.flatnonzero(~np.isnan(stats))
        source = operator.inputs[0].full_name
        if len(kept) < len(stats):  # sklearn drops all-missing columns
            cols = scope.get_unique_variable_name("imp_cols")
            container.add_initializer(cols, TensorProto.INT64, [len(kept)], [int(i) for i in kept])
            picked = scope.get_unique_variable_name("imp_picked")
            container.add_node("Gather", [source, cols], [picked], axis=1,
                               name=scope.get_unique_operator_name("ImpGather"))
            source = picked
        fill = scope.get_unique_variable_name("imp_fill")
        container.add_initializer(fill, TensorProto.DOUBLE, [1, len(kept)], [float(v) for v in stats[kept]])
        isnan = scope.get_unique_variable_name("imp_isnan")
        container.add_node("IsNaN", [source], [isnan], name=scope.get_unique_operator_name("ImpIsNaN"))
        container.add_node("Where", [isnan, fill, source], [operator.outputs[0].full_name],
                           name=scope.get_unique_operator_name("ImpWhere"))

    update_registered_converter(SimpleImputer, "SklearnImputer", imputer_shape, imputer_convert)
    _REGISTERED = True


def onnx_inputs(frame: pd.DataFrame, signature: ModelSignature,
                input_names: list[str] | None = None) -> dict[str, np.ndarray]:
    """The ONNX feeds for a scoring frame: one (n, 1) array per signature column.

    ``input_names`` are the graph's inputs in signature order (numeric, boolean, categorical): skl2onnx
    renames columns that are not identifiers (``Account length`` -> ``Account_length``), so feeds are
    matched to the graph by position, never by the column's own name.
    """
    x = to_model_input(frame, signature)
    columns = signature.numeric + signature.boolean + list(signature.categorical)
    names = dict(zip(columns, input_names)) if input_names is not None else {c: c for c in columns}
    if len(names) != len(columns):
        raise OnnxExportError(f"the ONNX graph has {len(input_names or [])} inputs for {len(columns)} columns")
    feeds = {names[c]: x[c].to_numpy(dtype=np.float64).reshape(-1, 1) for c in signature.numeric + signature.boolean}
    feeds.update({names[c]: x[c].to_numpy(dtype=object).astype(str).reshape(-1, 1) for c in signature.categorical})
    return feeds


def to_onnx_bytes(model: Any, signature: ModelSignature) -> bytes:
    """Convert a fitted pipeline to a serialized ONNX model; OnnxExportError if skl2onnx cannot."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import DoubleTensorType, StringTensorType
    from skl2onnx.common.exceptions import MissingConverter, MissingShapeCalculator

    _register_missing_indicator()
    inputs = [(c, DoubleTensorType([None, 1])) for c in signature.numeric + signature.boolean]
    inputs += [(c, StringTensorType([None, 1])) for c in signature.categorical]
    final = model.steps[-1][1] if hasattr(model, "steps") else model
    # zipmap=False: probabilities as a plain (n, 2) tensor rather than a list of dicts.
    options = {id(final): {"zipmap": False}} if hasattr(final, "predict_proba") else None
    try:
        onx = convert_sklearn(model, initial_types=inputs, options=options)
    except (MissingConverter, MissingShapeCalculator, NotImplementedError, RuntimeError, TypeError,
            ValueError, AttributeError, KeyError) as exc:
        # skl2onnx reports unsupported steps with many exception types; all mean "not convertible".
        raise OnnxExportError(f"{type(exc).__name__}: {str(exc)[:300]}") from exc
    return onx.SerializeToString()


def onnx_probabilities(onnx_path: str | Path, frame: pd.DataFrame, signature: ModelSignature) -> np.ndarray:
    """P(churn) per row of ``frame`` computed by onnxruntime from the exported file."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    outputs = session.run(None, onnx_inputs(frame, signature, [i.name for i in session.get_inputs()]))
    proba = next(o for o in outputs if isinstance(o, np.ndarray) and o.ndim == 2 and o.shape[1] == 2)
    return proba[:, 1].astype(np.float64)


def export_onnx(model: Any, signature: ModelSignature, folder: str | Path, parity_rows: pd.DataFrame,
                tolerance: float = 1e-5) -> OnnxExport:
    """Write ``<folder>/model.onnx`` if convertible and within ``tolerance`` of scikit-learn on ``parity_rows``."""
    from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidArgument, InvalidGraph
    from onnxruntime.capi.onnxruntime_pybind11_state import NotImplemented as OrtNotImplemented

    path = Path(folder) / ONNX_FILE
    data = to_onnx_bytes(model, signature)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    try:
        onnx_proba = onnx_probabilities(tmp, parity_rows, signature)
    except (Fail, InvalidArgument, InvalidGraph, OrtNotImplemented, StopIteration, ValueError, KeyError) as exc:
        tmp.unlink(missing_ok=True)
        raise OnnxExportError(f"onnxruntime cannot run the exported graph: {exc}") from exc
    sk_proba = model.predict_proba(to_model_input(parity_rows, signature))[:, 1]
    diff = float(np.max(np.abs(onnx_proba - sk_proba))) if len(sk_proba) else 0.0
    if not diff < tolerance:
        tmp.unlink(missing_ok=True)
        raise OnnxExportError(f"ONNX probabilities differ from scikit-learn by up to {diff:.2e} (> {tolerance:g})")
    os.replace(tmp, path)
    log.info("ONNX export %s: max |p_onnx - p_sklearn| = %.2e on %s rows", path, diff, len(sk_proba))
    return OnnxExport(str(path), diff, len(sk_proba))
