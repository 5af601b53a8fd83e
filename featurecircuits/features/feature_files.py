"""Feature files for circuit-tracer's viewer and Neuronpedia: one JSON file per feature.

The fields are those of circuit-tracer 0.5.0's own model of a feature file
(``circuit_tracer.frontend.feature_models.Model``) and what its viewer code reads
(``frontend/assets/feature_examples/*.js``, ``attribution_graph/render-act-histogram.js``):

- ``transcoder_id`` (str) and ``index`` (int): here ``<submodule>@<dictionary hash>`` and the number the
  graph's node carries in ``feature`` (the file is ``features/<scan>/<index>.json``, the path the viewer
  fetches for a node of a graph whose ``metadata.scan`` is ``<scan>``);
- ``examples_quantiles``: ``[{quantile_name, examples: [{tokens, tokens_acts_list, train_token_ind,
  is_repeated_datapoint}]}]``: "Top activations" first, then one entry per activation band (highest
  first), then "Random firings"; ``train_token_ind`` is the index of the firing token;
- ``top_logits``/``bottom_logits`` (token strings: the direct-path promoted/suppressed tokens);
- ``act_min``/``act_max``: the range of the colour scale and of the histogram's x axis. ``act_min`` is 0 (the
  histogram's bins start at 0 and a token that does not fire is 0), ``act_max`` the largest activation seen;
- ``histogram``: counts of equal bins from 0 (our streaming bins, cut after the maximum's bin, so the last
  bin ends at most one bin width above ``act_max``: the viewer's "current activation" marker can be off by
  less than one bin);
- ``quantile_values``: the activations at the 1st … 100th percentile of firings (read off the histogram,
  linear within a bin), which the viewer uses to print a node's percentile;
- ``activation_frequency``: firings per token.

Our own fields (``fc_id``, ``label``, ``label_source``, ``density``, ``corpus``) ride along; the viewer and
the pydantic model ignore them.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import UsageError
from ..fileio import atomic_write_text
from ..nodes import parse_node_id

__all__ = ["EXAMPLE_FIELDS", "FEATURE_FIELDS", "feature_file", "quantile_values", "write_feature_files"]

# circuit-tracer 0.5.0's feature model: field → JSON type (tests check our files against it)
FEATURE_FIELDS = {"transcoder_id": str, "index": int, "examples_quantiles": list, "top_logits": list,
                  "bottom_logits": list, "act_min": float, "act_max": float, "quantile_values": list,
                  "histogram": list, "activation_frequency": float}
EXAMPLE_FIELDS = {"tokens": list, "tokens_acts_list": list, "train_token_ind": int, "is_repeated_datapoint": bool}


def quantile_values(histogram: dict, act_max: float) -> list[float]:
    """Activations at percentiles 1 … 100 of the firings, from equal bins (linear within a bin)."""
    counts = histogram["counts"]
    total = sum(counts)
    if not total:
        return [0.0] * 100
    width, out, seen, b = histogram["bin_width"], [], 0, 0
    for p in range(1, 101):
        target = total * p / 100
        while b < len(counts) - 1 and seen + counts[b] < target:
            seen += counts[b]
            b += 1
        inside = (target - seen) / counts[b] if counts[b] else 1.0
        out.append(min(act_max, (b + min(1.0, inside)) * width))
    out[-1] = act_max
    return out


def _example(ctx: dict) -> dict:
    return {"tokens": list(ctx["tokens"]), "tokens_acts_list": [float(a) for a in ctx["acts"]],
            "train_token_ind": int(ctx["peak"]), "is_repeated_datapoint": bool(ctx["repeated"])}


def feature_file(card: dict, *, index: int, transcoder_id: str) -> dict:
    """The viewer's feature file of one card (:meth:`Dossiers.card`)."""
    quantiles = [{"quantile_name": "Top activations", "examples": [_example(c) for c in card["top_contexts"]]}]
    quantiles += [{"quantile_name": band["name"], "examples": [_example(c) for c in band["examples"]]}
                  for band in card["quantile_samples"]]
    if card["random_samples"]:
        quantiles.append({"quantile_name": "Random firings", "examples": [_example(c) for c in card["random_samples"]]})
    return {
        "transcoder_id": transcoder_id, "index": int(index), "examples_quantiles": quantiles,
        "top_logits": [t["token"] for t in card["promoted"] or []],
        "bottom_logits": [t["token"] for t in card["suppressed"] or []],
        "act_min": 0.0, "act_max": float(card["act_max"]),
        "quantile_values": quantile_values(card["histogram"], float(card["act_max"])),
        "histogram": [float(c) for c in card["histogram"]["counts"]],
        "activation_frequency": float(card["density"]),
        "fc_id": card["node_id"], "label": card["label"], "label_source": card["label_source"],
        "density": card["density"], "corpus": card["corpus"],
    }


def _scan_folder(out_dir: Path, scan: str) -> Path:
    parts = [p for p in str(scan).split("/") if p]
    if not parts or any(p in (".", "..") for p in parts):
        raise UsageError(f"scan {scan!r} cannot name a folder; give the model id the graph's metadata.scan holds")
    return out_dir.joinpath("features", *parts)


def _graph_indices(graph) -> tuple[str, dict[str, int]]:
    """(scan, feature node id → file index) of an exported attribution graph (dict or file)."""
    data = json.loads(Path(graph).read_text()) if not isinstance(graph, dict) else graph
    out: dict[str, int] = {}
    for node in data.get("nodes", []):
        fc_id = node.get("fc_id")
        if not fc_id or fc_id == "logit":
            continue
        sub, part, feat, _ = parse_node_id(fc_id)
        if part == "act" and feat is not None:
            out[f"{sub}/f{feat}"] = int(node["feature"])
    return str(data.get("metadata", {}).get("scan", "")), out


def _default_indices(dossiers, node_ids, layer_rows, feature_stride) -> dict[str, int]:
    """Index = row of the submodule × stride + feature, numbered as the attribution-graph export numbers
    rows when given none: the model's submodules in execution order (z_l only where the dossiers have one)."""
    if layer_rows is None:
        if dossiers.model is None:
            raise UsageError("feature files need the graph's numbering: pass graph=<exported graph JSON> or "
                             "layer_rows=/feature_stride=, or attach the model to the dossiers")
        names = [s.name for s in dossiers.model.all_submodules if s.kind != "z" or s.name in dossiers.states]
        layer_rows = {name: i for i, name in enumerate(names)}
    stride = feature_stride or max(int(d["width"]) for d in dossiers.metadata["dictionaries"].values())
    out = {}
    for node in node_ids:
        sub, part, feat, _ = parse_node_id(node)
        if part == "act" and feat is not None and sub in dossiers.states:
            out[f"{sub}/f{feat}"] = layer_rows[sub] * stride + feat
    return out


def write_feature_files(dossiers, out_dir, node_ids=None, *, graph=None, scan: str | None = None,
                        layer_rows: dict[str, int] | None = None, feature_stride: int | None = None) -> list[Path]:
    """Write ``<out_dir>/features/<scan>/<index>.json`` for every feature node of ``graph`` (an exported
    attribution graph: its ``fc_id``/``feature`` pairs and ``metadata.scan`` give the names) or of
    ``node_ids`` (numbered by ``layer_rows`` and ``feature_stride``); returns the paths written."""
    if graph is not None:
        graph_scan, indices = _graph_indices(graph)
        scan = scan or graph_scan
    elif node_ids is not None:
        indices = _default_indices(dossiers, node_ids, layer_rows, feature_stride)
    else:
        raise UsageError("give the feature nodes: graph=<exported graph JSON> or node_ids=[...]")
    if not scan:
        raise UsageError("feature files live under features/<scan>/: give scan= (the graph's metadata.scan)")
    folder = _scan_folder(Path(out_dir), scan)
    folder.mkdir(parents=True, exist_ok=True)
    missing = sorted({n.split("/")[0] for n in indices} - set(dossiers.states))
    if missing:
        raise UsageError(f"no dossiers for {', '.join(missing)} (dossiers cover {', '.join(dossiers.states)}); "
                         "build them with these dictionaries")
    written = []
    for node, card in dossiers.cards(list(indices)).items():
        meta = dossiers.metadata["dictionaries"][card["submodule"]]
        data = feature_file(card, index=indices[node], transcoder_id=f"{card['submodule']}@{meta['hash']}")
        path = folder / f"{indices[node]}.json"
        atomic_write_text(path, json.dumps(data, ensure_ascii=False))
        written.append(path)
    return written
