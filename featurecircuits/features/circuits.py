"""Dossiers meet circuits: find the dossiers of a circuit's dictionaries, read label files, and put each
feature node's label (with its source) on the circuit and its card on the page.

A user label (CSV ``node_id,label`` or JSON node id → label) wins over a Neuronpedia explanation, which wins
over the automatic label of the node's dossier; the node records which (``label_source``)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from ..errors import UsageError
from .cache import default_cache_root
from .dossier import MANIFEST, Dossiers, dictionary_hash
from .labels import Label, merge_labels, read_labels, read_neuronpedia

__all__ = ["annotate", "cached_folder", "compact_card", "find_dossiers", "load_dossiers", "read_label_file"]

log = logging.getLogger(__name__)

CARD_CONTEXTS, CARD_SAMPLES, CARD_TOKENS = 6, 2, 6  # what a page's card keeps of a dossier's card


def _covers(meta: dict, model_name: str, hashes: dict[str, str]) -> bool:
    have = {k: v.get("hash") for k, v in (meta.get("dictionaries") or {}).items()}
    return (meta.get("model") or {}).get("name") == model_name and all(have.get(k) == h for k, h in hashes.items())


def cached_folder(model_name: str, hashes: dict[str, str], *, cache_root=None) -> Path | None:
    """The folder of the most recently built cached dossiers of this model and these dictionaries (their
    weight hashes, as circuits record them), whatever corpus they were built on; None when there are none."""
    root = Path(cache_root) if cache_root is not None else default_cache_root()
    if not root.is_dir() or not hashes:
        return None
    found = []
    for manifest in root.glob(f"*/{MANIFEST}"):
        try:
            meta = json.loads(manifest.read_text())["metadata"]
        except (OSError, ValueError, KeyError):
            continue
        if _covers(meta, model_name, hashes):
            found.append((manifest.stat().st_mtime, manifest.parent))
    return max(found)[1] if found else None


def find_dossiers(model, dictionaries: dict, *, cache_root=None) -> Dossiers | None:
    """The most recently built cached dossiers of this model and these dictionaries, or None."""
    hashes = {name: dictionary_hash(ae) for name, ae in (dictionaries or {}).items()}
    folder = cached_folder(str(model.name), hashes, cache_root=cache_root)
    if folder is None:
        return None
    log.info("dossiers: using the cached %s", folder)
    return Dossiers.load(folder, model=model, dictionaries=dictionaries)


def load_dossiers(folder, model, dictionaries: dict) -> Dossiers:
    """Dossiers saved in ``folder`` (``featurecircuits features --out``), checked against the dictionaries."""
    folder = Path(folder)
    if not (folder / MANIFEST).is_file():
        raise UsageError(f"--features {folder}: no dossiers there (no {MANIFEST}); build them with "
                         "`featurecircuits features --out DIR`")
    return Dossiers.load(folder, model=model, dictionaries=dictionaries)


def read_label_file(path) -> dict[str, Label]:
    """User labels (CSV or a JSON object of node id → label) or a Neuronpedia explanations export (a JSON
    array of explanation records), told apart by their content."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            data = None  # read_labels names the problem
        if isinstance(data, list) or (isinstance(data, dict) and "explanations" in data):
            return read_neuronpedia(path)
    return read_labels(path)


def annotate(circuit, dossiers: Dossiers | None = None, labels: dict[str, Label] | None = None) -> dict[str, dict]:
    """Set ``label`` and ``label_source`` on the circuit's feature nodes (from ``labels`` and the dossiers'
    automatic labels); returns the dossier card of every feature node (keyed by node id; none without
    dossiers)."""
    if dossiers is not None and labels:
        dossiers.add_labels(labels)
    cards = dossiers.cards(circuit.nodes) if dossiers is not None else {}
    given = merge_labels({_feature(n): lab for n, lab in (labels or {}).items()})
    for node in circuit.nodes:
        ref = circuit.ref(node)
        if ref.kind != "feature":
            continue
        card = cards.get(node)
        label = Label(card["label"], card["label_source"]) if card and card.get("label") else \
            given.get(ref.summed().id)
        if label is not None:
            circuit.graph.nodes[node]["label"] = label.text
            circuit.graph.nodes[node]["label_source"] = label.source
    return cards


def _feature(node: str) -> str:
    from ..nodes import NodeRef

    return NodeRef.parse(node).summed().id


def _context(ctx: dict) -> dict:
    return {k: ctx[k] for k in ("tokens", "acts", "peak", "act")}


def compact_card(card: dict) -> dict:
    """What a page shows of a card: label and its source, density, histogram, the strongest contexts, a few
    lower-band samples, promoted and suppressed tokens, and whether the corpus was the task's prompts."""
    samples = [dict(name=b["name"], examples=[_context(c) for c in b["examples"][:CARD_SAMPLES]])
               for b in card.get("quantile_samples") or []]
    return {"label": card.get("label"), "label_source": card.get("label_source"), "density": card.get("density"),
            "n_tokens": card.get("n_tokens"), "act_max": card.get("act_max"), "histogram": card.get("histogram"),
            "contexts": [_context(c) for c in card.get("top_contexts") or [] if not c.get("repeated")][:CARD_CONTEXTS],
            "samples": samples, "promoted": (card.get("promoted") or [])[:CARD_TOKENS],
            "suppressed": (card.get("suppressed") or [])[:CARD_TOKENS],
            "task_prompts": bool(card.get("corpus_is_task_prompts")),
            "corpus": (card.get("corpus") or {}).get("kind")}
