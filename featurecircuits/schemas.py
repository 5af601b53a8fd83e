"""One schema per file type we read, validated with pydantic: task lines (JSONL) and circuit JSON.

Every error is a :class:`~featurecircuits.errors.UsageError` naming the file, the line (tasks) or the JSON
path (circuits, ``$.nodes[3].score``) and what was expected. Dictionary configs are validated by the
dictionary loaders. Torch-free.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
)

from .errors import UsageError

__all__ = ["CircuitFile", "TaskLine", "finite_json", "json_path", "nonfinite", "nulls_for_nonfinite", "parse_json",
           "read_text", "validate_circuit", "validate_task_line"]


def read_text(path: Path, what: str) -> str:
    """A file's text as UTF-8, with errors that name the file."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{what} {path} is a directory, not a file")
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[:exc.start].count(b"\n") + 1
        raise UsageError(f"{path}:{line}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset "
                         f"{exc.start}); {what}s must be UTF-8") from None
    except OSError as exc:
        raise UsageError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def parse_json(text: str, where: str) -> Any:
    """``json.loads`` with errors that name ``where`` (and the line/column), deep nesting included."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{where}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except RecursionError:
        raise UsageError(f"{where}: JSON nested too deeply to read") from None


def nonfinite(obj: Any, path: str = "$") -> tuple[str, float] | None:
    """The JSON path and value of the first NaN or infinity in a JSON-able object (None when there is none)."""
    if isinstance(obj, float):
        return None if math.isfinite(obj) else (path, obj)
    if isinstance(obj, dict):
        items = ((f"{path}.{k}" if str(k).isidentifier() else f"{path}[{json.dumps(str(k))}]", v)
                 for k, v in obj.items())
    elif isinstance(obj, (list, tuple)):
        items = ((f"{path}[{i}]", v) for i, v in enumerate(obj))
    else:
        return None
    for where, value in items:
        found = nonfinite(value, where)
        if found is not None:
            return found
    return None


def nulls_for_nonfinite(obj: Any) -> Any:
    """A JSON-able object with every NaN or infinity replaced by null (for values that may be undefined, such
    as a faithfulness whose denominator is 0), so that it is strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: nulls_for_nonfinite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [nulls_for_nonfinite(v) for v in obj]
    return obj


def finite_json(obj: Any, where: str, **options) -> str:
    """``json.dumps`` of an object holding finite numbers only (strict JSON has no NaN or infinity); a
    ValueError naming ``where`` and the field otherwise."""
    found = nonfinite(obj)
    if found is not None:
        raise ValueError(f"{where}: {found[0]} is {found[1]}, and JSON holds finite numbers only; nothing was written")
    return json.dumps(obj, allow_nan=False, **options)


def json_path(loc: tuple) -> str:
    out = "$"
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def _describe(err: dict) -> str:
    """One pydantic error as 'what was expected, what was found'."""
    kind, got = err["type"], err.get("input")
    if kind == "missing":
        return "required field is missing"
    shown = json.dumps(got)[:60] if isinstance(got, (str, int, float, bool, type(None))) else type(got).__name__
    if kind.endswith("_type") or kind in ("model_type", "dict_type", "list_type"):
        return f"expected {_EXPECTED.get(kind, kind.replace('_type', ''))}, got {shown}"
    msg = err["msg"].removeprefix("Value error, ")
    return f"{msg[0].lower()}{msg[1:]} (got {shown})"


_EXPECTED = {"string_type": "a string", "float_type": "a number", "int_type": "an integer",
             "model_type": "a JSON object", "dict_type": "a JSON object", "list_type": "a JSON array",
             "bool_type": "true or false", "finite_number": "a finite number"}


def _first_error(exc: ValidationError) -> tuple[str, str]:
    err = exc.errors(include_url=False)[0]
    more = len(exc.errors()) - 1
    return json_path(err["loc"]), _describe(err) + (f" (and {more} more problem{'s' * (more > 1)})" if more else "")


# --------------------------------------------------------------------------------------------------
# Task lines

def _nonblank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value


class TaskLine(BaseModel):
    """One JSONL line of a task: the four Sparse Feature Circuits fields plus optional metadata."""

    model_config = ConfigDict(extra="allow")

    clean_prefix: StrictStr
    patch_prefix: StrictStr
    clean_answer: StrictStr
    patch_answer: StrictStr
    template: StrictStr | None = None
    variant: StrictStr | None = None
    split: Literal["discovery", "evaluation"] | None = None  # else fixed by a hash of the pair (splits.py)

    _nonblank = field_validator("clean_prefix", "patch_prefix", "clean_answer", "patch_answer")(_nonblank)


def validate_task_line(obj: Any, where: str) -> dict:
    """The line's object, checked; ``where`` is ``file:line``."""
    if not isinstance(obj, dict):
        kind = "null" if obj is None else "an array" if isinstance(obj, list) else type(obj).__name__
        raise UsageError(f"{where}: expected a JSON object with clean_prefix, patch_prefix, clean_answer, "
                         f"patch_answer; got {kind}")
    try:
        TaskLine.model_validate(obj)
    except ValidationError as exc:
        path, what = _first_error(exc)
        raise UsageError(f"{where}: field {path[2:]}: {what}") from None
    if obj["clean_answer"] == obj["patch_answer"]:
        raise UsageError(f"{where}: clean_answer and patch_answer are both {obj['clean_answer']!r}; the metric "
                         "(their logit difference) would be 0")
    if obj["clean_prefix"] == obj["patch_prefix"]:
        raise UsageError(f"{where}: clean_prefix and patch_prefix are the same ({obj['clean_prefix']!r}); "
                         "patching would change nothing")
    return obj


# --------------------------------------------------------------------------------------------------
# Circuits

Number = StrictFloat  # ints are accepted, strings and booleans are not


def _finite(value):
    if value is not None and not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


class CircuitNode(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: StrictStr
    score: Number
    kind: StrictStr | None = None
    submodule: StrictStr | None = None
    layer: StrictInt | None = None
    position: StrictInt | None = Field(default=None, ge=0)
    feature: StrictInt | None = Field(default=None, ge=0)

    _finite = field_validator("score")(_finite)


class CircuitEdge(BaseModel):
    model_config = ConfigDict(extra="allow")

    source: StrictStr
    target: StrictStr
    weight: Number

    _finite = field_validator("weight")(_finite)


class DictionaryRecord(BaseModel):
    model_config = ConfigDict(extra="allow")

    format: StrictStr
    path: StrictStr
    hash: StrictStr


class CircuitMetadata(BaseModel):
    """The metadata fields later steps read; others are kept as they are."""

    model_config = ConfigDict(extra="allow")

    model: StrictStr | None = None
    family: StrictStr | None = None
    n_layers: StrictInt | None = None
    d_model: StrictInt | None = None
    submodules: list[StrictStr] | None = None
    dictionaries: StrictStr | None = None  # the spec the circuit was found with
    dictionary_sources: dict[StrictStr, DictionaryRecord] | None = None
    dictionary_sizes: dict[StrictStr, StrictInt] | None = None


class CircuitFile(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    schema_: StrictStr = Field(alias="schema")
    version: StrictInt
    metadata: CircuitMetadata = CircuitMetadata()
    nodes: list[CircuitNode]
    edges: list[CircuitEdge]


def validate_circuit(data: Any, where: str, *, schema: str, version: int) -> None:
    """Check a circuit's JSON object; ``where`` names the file."""
    if not isinstance(data, dict):
        kind = "null" if data is None else "an array" if isinstance(data, list) else type(data).__name__
        raise UsageError(f"{where}: expected a JSON object (a featurecircuits circuit), got {kind}")
    if data.get("schema") != schema:
        raise UsageError(f"{where}: $.schema: expected {schema!r}, got {data.get('schema')!r} (not a featurecircuits "
                         "circuit)")
    if data.get("version") != version:
        raise UsageError(f"{where}: $.version: circuit schema version {data.get('version')!r} is not supported; this "
                         f"featurecircuits reads version {version}")
    try:
        CircuitFile.model_validate(data)
    except ValidationError as exc:
        path, what = _first_error(exc)
        raise UsageError(f"{where}: {path}: {what}") from None
    found = nonfinite(data)
    if found is not None:
        raise UsageError(f"{where}: {found[0]}: must be a finite number, got {found[1]} (NaN and Infinity are not "
                         "JSON numbers)")
