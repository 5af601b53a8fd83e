"""Feature labels: automatic ones from a dossier, user ones from a file, Neuronpedia's explanations.

- :func:`auto_label`: the recurring peak tokens of the top contexts and the most promoted token, e.g.
  ``‹pilots› → were`` (source ``"auto"``).
- :func:`read_labels`: a CSV (``node_id,label``, header optional) or JSON (``{node_id: label}``) file
  (source ``"user"``). Node ids are feature ids such as ``resid_3/f12``; a position (``@5``) is dropped,
  as labels belong to features.
- :func:`read_neuronpedia`: Neuronpedia explanation records — the JSON array or JSONL (``.gz`` too) of its
  explanation exports, each ``{"modelId", "layer", "index", "description", ...}``, or a feature as its API
  returns it (``{"modelId", "layer", "index", "explanations": [{"description", ...}]}``) (source
  ``"neuronpedia"``). Neuronpedia names a dictionary by a source id such as ``3-res-jb``, ``0-att-kk`` or
  ``5-mlp-sm``; :func:`submodule_for_source` maps the layer number and ``res``/``att``/``mlp`` to
  ``resid_3``/``attn_0``/``mlp_5``, and ``source_map`` overrides it.
- :func:`merge_labels`: a user label wins over Neuronpedia's, which wins over the automatic one.

Malformed files raise :class:`~featurecircuits.errors.UsageError` naming the file, the line (CSV, JSONL,
JSON syntax) or the entry (JSON), and what was expected.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError, located

try:
    from ..nodes import parse_node_id
except ImportError:  # releases where node ids are parsed in circuit.py
    from ..circuit import parse_node_id

__all__ = ["SOURCES", "Label", "auto_label", "feature_node_id", "merge_labels", "read_labels", "read_neuronpedia",
           "submodule_for_source"]

SOURCES = ("user", "neuronpedia", "auto")  # highest priority first
_EXPECTED = "expected lines 'node_id,label' with feature node ids such as resid_3/f12"
_NP_KINDS = {"res": "resid", "resid": "resid", "att": "attn", "attn": "attn", "mlp": "mlp"}
_NP_SOURCE = re.compile(r"^(?P<layer>\d+)-(?P<kind>[a-z]+)")


@dataclass(frozen=True)
class Label:
    text: str
    source: str  # "user", "neuronpedia", "auto"
    origin: str = ""  # the file and line (or entry) it came from

    def __post_init__(self):
        if self.source not in SOURCES:
            raise ValueError(f"unknown label source {self.source!r}; valid: {', '.join(SOURCES)}")

    def to_dict(self) -> dict:
        return {"text": self.text, "source": self.source, "origin": self.origin}


def feature_node_id(text: str) -> str:
    """``resid_3/f12@5`` → ``resid_3/f12``; ValueError for ids that are not features."""
    sub, part, feat, _ = parse_node_id(str(text).strip())
    if part != "act" or feat is None:
        raise ValueError(f"{text!r} is not a feature node id (expected e.g. resid_3/f12)")
    return f"{sub}/f{feat}"


def _short(token: str, limit: int = 20) -> str:
    token = token.strip() or repr(token)
    return token if len(token) <= limit else token[: limit - 1] + "…"


def auto_label(card: dict, *, max_tokens: int = 3) -> str | None:
    """``‹a|b› → c``: the most common peak tokens of the top contexts (enough to cover half of them, at most
    ``max_tokens``) and the most promoted token; None for a feature that never fired."""
    peaks = [ctx["tokens"][ctx["peak"]] for ctx in card.get("top_contexts") or []]
    if not peaks:
        return None
    chosen, covered = [], 0
    for token, n in Counter(_short(p) for p in peaks).most_common(max_tokens):
        chosen.append(token)
        covered += n
        if covered * 2 >= len(peaks):
            break
    text = "‹" + "|".join(chosen) + "›"
    promoted = card.get("promoted") or []
    return f"{text} → {_short(promoted[0]['token'])}" if promoted else text


def merge_labels(*layers: dict[str, Label]) -> dict[str, Label]:
    """One label per node: the highest-priority source (user > neuronpedia > auto); among equals, the
    later layer wins."""
    out: dict[str, Label] = {}
    rank = {s: i for i, s in enumerate(SOURCES)}
    for layer in layers:
        for node, label in layer.items():
            held = out.get(node)
            if held is None or rank[label.source] <= rank[held.source]:
                out[node] = label
    return out


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise FileNotFoundError(f"label file {path} does not exist")
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = gzip.decompress(raw)
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path}: not UTF-8 text ({exc.reason}); re-save the file as UTF-8") from None


def _parse_json(path: Path, text: str):
    try:
        return json.loads(text)
    except ValueError as exc:
        line = getattr(exc, "lineno", "?")
        raise located(f"{path}:{line}", f"not valid JSON ({getattr(exc, 'msg', exc)}); fix the syntax there") \
            from None


def _user_label(where: str, node: str, label, source: str = "user") -> tuple[str, Label]:
    try:
        node_id = feature_node_id(node)
    except ValueError as exc:
        raise located(where, f"{exc}; {_EXPECTED}") from None
    if not isinstance(label, str) or not label.strip():
        raise located(where, f"the label of {node_id} is empty or not text; {_EXPECTED}")
    return node_id, Label(label.strip(), source, where)


def _read_csv(path: Path, text: str) -> dict[str, Label]:
    out: dict[str, Label] = {}
    for lineno, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        if not row or all(not cell.strip() for cell in row):
            continue
        where = f"{path}:{lineno}"
        if len(row) != 2:
            raise located(where, f"{len(row)} columns; {_EXPECTED} (quote labels that contain commas)")
        if not out and row[0].strip().lower() in ("node_id", "node", "id") and row[1].strip().lower() == "label":
            continue  # the optional header
        node, label = _user_label(where, row[0], row[1])
        out[node] = label
    return out


def read_labels(path) -> dict[str, Label]:
    """User labels from a ``.json`` file (an object of node id → label) or a CSV file (anything else)."""
    path = Path(path)
    text = _read_text(path)
    if path.suffix.lower() != ".json":
        return _read_csv(path, text)
    data = _parse_json(path, text)
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a JSON object of node id → label, e.g. {{\"resid_3/f12\": \"plural "
                         f"subject\"}}, not a {type(data).__name__}")
    return dict(_user_label(f"{path}: entry {node!r}", node, label) for node, label in data.items())


def submodule_for_source(source: str, source_map: dict | None = None) -> str:
    """Our submodule for a Neuronpedia source id (``3-res-jb`` → ``resid_3``), ``source_map`` first."""
    if source_map and source in source_map:
        return source_map[source]
    m = _NP_SOURCE.match(str(source))
    kind = m and next((v for k, v in _NP_KINDS.items() if m["kind"].startswith(k)), None)
    if not kind:
        raise ValueError(f"cannot tell which submodule Neuronpedia source {source!r} is; pass "
                         f"source_map={{{str(source)!r}: 'resid_3'}} (or --neuronpedia-source {source}=resid_3)")
    return f"{kind}_{int(m['layer'])}"


def _np_records(path: Path, text: str):
    """(where, record) pairs from a JSON array/object or JSONL text."""
    stripped = text.lstrip()
    if stripped.startswith("["):
        data = _parse_json(path, text)
        yield from ((f"{path}: entry {i}", rec) for i, rec in enumerate(data))
    elif stripped.startswith("{") and not _is_jsonl(stripped):
        yield f"{path}: the object", _parse_json(path, text)
    else:
        for lineno, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    yield f"{path}:{lineno}", json.loads(line)
                except ValueError as exc:
                    raise located(f"{path}:{lineno}", f"not valid JSON ({exc}); one record per line") from None


def _is_jsonl(text: str) -> bool:
    first = text.split("\n", 1)[0]
    try:
        json.loads(first)
    except ValueError:
        return False
    return "\n" in text.strip()


def _np_entries(where: str, rec):
    """(source id, index, description, explainer) of one record (a feature may carry several)."""
    if not isinstance(rec, dict):
        raise located(where, f"expected an explanation object, not a {type(rec).__name__}")
    source = rec.get("layer", rec.get("source", rec.get("saeId")))
    index = rec.get("index")
    if source is None or index is None or not str(index).strip().isdigit():
        raise located(where, "an explanation needs 'layer' (the Neuronpedia source id, e.g. 3-res-jb) and a "
                             f"numeric 'index' (found keys: {', '.join(sorted(rec))})")
    texts = [(rec.get("description"), rec.get("explanationModelName"))] if "description" in rec else [
        (e.get("description"), e.get("explanationModelName")) for e in rec.get("explanations") or []
        if isinstance(e, dict)]
    for text, model in texts:
        if isinstance(text, str) and text.strip():
            yield str(source), int(str(index).strip()), text.strip(), model


def read_neuronpedia(path, *, source_map: dict | None = None, model_id: str | None = None) -> dict[str, Label]:
    """Neuronpedia explanations as labels (the first explanation per feature wins); ``model_id`` keeps only
    records of that Neuronpedia model (``modelId``)."""
    path = Path(path)
    out: dict[str, Label] = {}
    for where, rec in _np_records(path, _read_text(path)):
        if model_id is not None and isinstance(rec, dict) and rec.get("modelId") not in (None, model_id):
            continue
        for source, index, text, explainer in _np_entries(where, rec):
            try:
                sub = submodule_for_source(source, source_map)
            except ValueError as exc:
                raise located(where, str(exc)) from None
            origin = where + (f" ({explainer})" if explainer else "")
            out.setdefault(f"{sub}/f{index}", Label(text, "neuronpedia", origin))
    return out
