"""Where a circuit came from, as its metadata records it: the model, the dictionaries (by the exact spec they
were loaded with), the task and its examples. Exports and evaluations use exactly what is recorded, or fail
naming what is missing; they never guess."""

from __future__ import annotations

from pathlib import Path

from ..circuit import Circuit
from ..errors import UsageError
from ..registry import NO_DICTIONARIES


def task_spec(meta: dict) -> dict:
    """The circuit metadata's ``task`` as a dict: ``name`` (or ``generator``), ``n``, ``seed``, ``words``,
    ``file`` (or ``path``)."""
    task = meta.get("task")
    if isinstance(task, str):
        return {"file": task} if Path(task).suffix == ".jsonl" else {"name": task}
    return dict(task) if isinstance(task, dict) else {}


def dictionaries_spec(meta: dict) -> str | None:
    """The spec the circuit's dictionaries were loaded with (``none`` for a component-level circuit); None
    when the circuit does not record one (dictionaries built in memory, or an older featurecircuits)."""
    if meta.get("dictionaries"):
        return meta["dictionaries"]
    if "dictionary_sizes" in meta and not meta["dictionary_sizes"]:
        return NO_DICTIONARIES
    return None


def check_spec_present(spec: str, where: str = "the circuit") -> None:
    """Every local folder or file the recorded spec names still exists (else an error naming it)."""
    from ..dictionaries.spec import is_special, parse_spec

    if is_special(spec):
        return
    for part in parse_spec(spec):
        path = Path(part.target).expanduser()
        if path.is_absolute() and not path.exists():
            raise UsageError(f"{where} was found with dictionaries {spec!r}, but {path} no longer exists; restore "
                             "it, or pass --dictionaries with the same dictionaries elsewhere")


def circuit_dictionaries(circuit: Circuit, model, dictionaries="auto"):
    """(dictionaries, spec): ``dictionaries`` as given (loaded, or a spec), or with ``"auto"`` loaded from
    the spec the circuit records; checked to be the ones it was found with (by the hash of their weights)."""
    from ..dictionaries import load_dictionaries

    if not isinstance(dictionaries, str):
        spec = dictionaries_spec(circuit.metadata) or "given"
    else:
        spec = dictionaries_spec(circuit.metadata) if dictionaries == "auto" else dictionaries
        if spec is None:
            raise UsageError("the circuit does not record which dictionaries it was found with (built in memory, "
                             "or written by an older featurecircuits); pass --dictionaries")
        if dictionaries == "auto":
            check_spec_present(spec)
        dictionaries = None if spec == NO_DICTIONARIES else load_dictionaries(spec, model)
    if dictionaries:
        circuit.check_dictionaries(dictionaries)
    return dictionaries, spec


def circuit_model(circuit: Circuit, model=None):
    """``model`` (loaded, or a spec for ``load_model``), or the model the circuit records; checked to be it."""
    from ..models import load_model

    if model is None or isinstance(model, str):
        spec = model or circuit.metadata.get("model")
        if not spec:
            raise UsageError("the circuit's metadata names no model; pass --model")
        model = load_model(spec)
    circuit.check_model(model)
    return model


def dictionary_records(meta: dict) -> list[dict]:
    """The circuit's dictionaries as records a reader can check: submodule, format, name (the file or
    release they came from, without the local folders above it) and the hash of their weights."""
    out = []
    for sub, src in (meta.get("dictionary_sources") or {}).items():
        path = str(src.get("path") or "")
        name = "/".join(Path(path).parts[-3:]) if Path(path).is_absolute() else path
        out.append({"submodule": sub, "format": src.get("format"), "name": name, "hash": src.get("hash")})
    return out
