"""Export a circuit as the attribution-graph JSON that circuit-tracer's local viewer serves and
Neuronpedia accepts.

Attribution graphs are per prompt, so one example of the circuit's task is exported (chosen by its
index in the task's examples, in file order) with positions kept: its nodes are the circuit's nodes
(every position where the node's submodule and feature scored non-zero on that example), its scores and
edge weights come from scoring that one example with the circuit's method.

The file (``DIR/<slug>.json``) holds

- ``metadata``: ``slug``, ``scan`` (the model), ``transcoder_list`` (one line per dictionary: submodule, format,
  file or release name, hash of its weights),
  ``prompt_tokens``, ``prompt``, ``node_threshold``, ``schema_version``, ``info`` (who generated it) and a
  ``featurecircuits`` block (method, direction, answers, the layer and feature encodings below, …);
- ``qParams``: the viewer's saved state (nothing pinned);
- ``nodes``: ``node_id``, ``feature``, ``layer``, ``ctx_idx``, ``feature_type``, ``jsNodeId``, ``clerp``,
  ``token_prob``, ``is_target_logit``, ``run_idx``, ``reverse_ctx_idx``, ``influence``, ``activation``,
  plus our ``fc_id`` (the featurecircuits node id), ``fc_score`` (its score on this example) and
  ``fc_circuit_score`` (its score in the circuit, when the circuit has it);
- ``links``: ``source``, ``target`` (node ids) and ``weight``.

Encodings (``metadata.featurecircuits`` records them):

- ``layer``: the submodule's row in execution order — ``embed`` 0, then per layer l ``attn_l`` 3l+1,
  ``mlp_l`` 3l+2, ``resid_l`` 3l+3 (the model's submodules in order, so other layouts number the same
  way; a circuit with nodes on ``z_l`` (attention SAEs on ``hook_z``) gets a row for each such ``z_l``
  just before ``attn_l``, shifting the rows above; ``metadata.featurecircuits.layer_rows`` lists the
  rows); token embeddings are ``"E"`` and the metric's logit node is one row above the last submodule.
- ``feature``: ``layer * feature_stride + index`` for a dictionary feature (``feature_stride`` = the
  largest dictionary width), ``-1`` for an error term, ``-2`` for a component without a dictionary, the
  position for a token, the clean answer's token id for the logit node.
- ``node_id``: ``{layer}_{index}_{position}`` for features (index -1 for errors, -2 for components),
  ``E_{token id}_{position}`` for tokens, ``{layer}_{clean answer id}_{last position}`` for the logit.
- ``feature_type``: ``"sparse autoencoder"`` (features), ``"<kind> reconstruction error"`` (errors),
  ``"<kind> component"``, ``"embedding"`` (tokens), ``"logit"`` (the metric).

Our metric is a logit *difference*: it is one logit node, labelled with both answers and marked as the
target. Edges into it come from the last submodule's nodes with weight = their score (as in our
circuits); token nodes link to the embed row's nodes at their position with weight = those nodes' score.

Signs follow the viewers' convention: a link's weight is positive when its source promotes the target
(clean answer) logit, whatever the direction the circuit was scored in (under noising our scores are
multiplied by −1: ``metadata.featurecircuits.link_sign``). Nodes that score 0 on the example, links of
weight 0 and nodes left without any link are not exported.
"""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path

from ..circuit import Circuit
from ..fileio import atomic_write_text
from ..nodes import METRIC_NODE, NodeRef
from .example import example_circuit, load_example
from .provenance import circuit_dictionaries, circuit_model, dictionary_records, task_spec

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
# circuit-tracer's viewer shows feature cards (examples from features/<scan>/<index>.json) only for nodes of this
# type, so feature nodes take it when feature files are written beside the graph
VIEWER_FEATURE_TYPE = "cross layer transcoder"
# The fields the viewer reads, with their JSON types (see tests/test_export.py for the schema check).
METADATA_FIELDS = {"slug": str, "scan": str, "transcoder_list": list, "prompt_tokens": list, "prompt": str}
QPARAMS_FIELDS = {"pinnedIds": list, "supernodes": list, "linkType": str, "clickedId": str, "sg_pos": str}
NODE_FIELDS = {"node_id": str, "feature": int, "layer": str, "ctx_idx": int, "feature_type": str,
               "jsNodeId": str, "clerp": str, "token_prob": float, "is_target_logit": bool, "run_idx": int,
               "reverse_ctx_idx": int}
LINK_FIELDS = {"source": str, "target": str, "weight": float}


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "circuit"


def _token_text(tokenizer, token_id: int) -> str:
    """A token as the viewer shows it: decoded, with spaces and newlines made visible (escaped later by
    the viewer; nothing here is HTML)."""
    text = tokenizer.decode([token_id]) if tokenizer is not None else str(token_id)
    return text.replace("\n", "⏎").replace(" ", "␣") if text.strip() == "" else text


def export_rows(model, circuit: Circuit) -> list[str]:
    """Submodule rows in execution order: the default set, plus the ``z_l`` the circuit was scored on or has
    nodes in (from the circuit, not one example's graph, so that every export of a circuit numbers alike)."""
    used = {circuit.ref(n).submodule for n in circuit.nodes} | set(circuit.metadata.get("submodules") or [])
    return [s.name for s in model.all_submodules if s.kind != "z" or s.name in used]


def to_attribution_graph(graph: Circuit, *, rows: list[str], prompt: str, prompt_ids: list[int],
                      prompt_tokens: list[str], clean_answer: tuple[int, str], patch_answer: tuple[int, str],
                      slug: str, scan: str, transcoder_list: list[str] | None = None,
                      token_prob: float = 0.0, circuit_scores: dict[str, float] | None = None,
                      info: dict | None = None) -> dict:
    """The attribution-graph dict of a positional circuit ``graph`` (one example's scores and edges).

    ``rows``: submodule names in execution order (the ``layer`` numbering); ``prompt_ids``/
    ``prompt_tokens``: the example's clean prompt; ``clean_answer``/``patch_answer``: (token id, text);
    ``circuit_scores``: the source circuit's score per node id (written as ``fc_circuit_score``)."""
    row = {name: i for i, name in enumerate(rows)}
    n_pos = len(prompt_ids)
    sizes = graph.metadata.get("dictionary_sizes") or {}
    stride = max([int(v) for v in sizes.values()] or [1])
    logit_layer = len(rows)
    last = n_pos - 1
    nodes: list[dict] = []
    ids: dict[str, str] = {}

    def add(fc_id, node_id, *, feature, layer, ctx, ftype, clerp, score=None, **extra):
        entry = {"node_id": node_id, "feature": int(feature), "layer": str(layer), "ctx_idx": int(ctx),
                 "feature_type": ftype, "token_prob": 0.0, "is_target_logit": False, "run_idx": 0,
                 "reverse_ctx_idx": int(n_pos - 1 - ctx), "jsNodeId": node_id.replace("_", "-"),
                 "clerp": clerp, "influence": None, "activation": None, "fc_id": fc_id, "fc_score": score}
        entry.update(extra)
        nodes.append(entry)
        if fc_id is not None:
            ids[fc_id] = node_id
        return entry

    for pos, (tid, tok) in enumerate(zip(prompt_ids, prompt_tokens, strict=True)):
        add(None, f"E_{tid}_{pos}", feature=pos, layer="E", ctx=pos, ftype="embedding", clerp=tok)
    for n in graph.nodes:
        if graph.score(n) == 0:  # carries nothing on this example
            continue
        add(n, **_circuit_node(graph, n, row[graph.ref(n).submodule], stride, prompt_tokens),
            fc_circuit_score=(circuit_scores or {}).get(n))
    metric = graph.graph.nodes[METRIC_NODE]
    (cid, ctext), (pid, ptext) = clean_answer, patch_answer
    logit = add(METRIC_NODE, f"{logit_layer}_{cid}_{last}", feature=cid, layer=logit_layer, ctx=last,
                ftype="logit", clerp=f"logit “{ctext}” − logit “{ptext}” (logit difference)",
                score=metric.get("score"), is_target_logit=True, token_prob=float(token_prob),
                fc_patch_answer_id=int(pid))
    links = _links(graph, ids, row, prompt_ids)
    linked = {x for link in links for x in (link["source"], link["target"])} | {logit["node_id"]}
    nodes = [n for n in nodes if n["node_id"] in linked]  # no isolated nodes
    metadata = _graph_metadata(graph, rows, slug=slug, scan=scan, prompt=prompt, prompt_tokens=prompt_tokens,
                               transcoder_list=transcoder_list, info=info, answers=(clean_answer, patch_answer),
                               stride=stride)
    return {"metadata": metadata,
            "qParams": {"pinnedIds": [logit["node_id"]], "supernodes": [], "linkType": "both", "clickedId": "",
                        "sg_pos": ""},
            "nodes": nodes, "links": links}


def _circuit_node(graph: Circuit, n: str, layer: int, stride: int, prompt_tokens: list[str]) -> dict:
    """The exported fields of one circuit node (an error term, a component or a feature)."""
    sub, part, feat, pos = graph.ref(n)
    if pos is None:
        raise ValueError(f"node {n!r} has no position: export a circuit scored with aggregation 'none'")
    a = graph.graph.nodes[n]
    kind = sub.split("_")[0]
    common = {"layer": layer, "ctx": pos, "score": a["score"]}
    if part == "err":
        return {"node_id": f"{layer}_-1_{pos}", "feature": -1, "ftype": f"{kind} reconstruction error",
                "clerp": f"{sub} error term (x − x̂) at “{prompt_tokens[pos]}”", **common}
    if feat is None:
        return {"node_id": f"{layer}_-2_{pos}", "feature": -2, "ftype": f"{kind} component",
                "clerp": f"{sub} output at “{prompt_tokens[pos]}”", **common}
    contexts = a.get("top_contexts") or []
    return {"node_id": f"{layer}_{feat}_{pos}", "feature": layer * stride + feat, "ftype": "sparse autoencoder",
            "clerp": f"{sub}/f{feat}" + (f": fires on {contexts[0]}" if contexts else ""), **common}


def _links(graph: Circuit, ids: dict[str, str], row: dict[str, int], prompt_ids: list[int]) -> list[dict]:
    """The circuit's edges, plus each token feeding the embed row's nodes at its position (weight = the node's
    score), in the viewers' convention: sign × our weight, positive = promotes the target (clean) logit.
    Links of weight 0 are left out."""
    links = [{"source": ids[u], "target": ids[v], "weight": graph.sign * float(w)} for u, v, w in graph.edges
             if u in ids and v in ids]
    for n in graph.nodes:
        sub, _, _, pos = graph.ref(n)
        if row[sub] == 0 and n in ids:
            links.append({"source": f"E_{prompt_ids[pos]}_{pos}", "target": ids[n], "weight": graph.effect(n)})
    for link in links:
        if not math.isfinite(link["weight"]):
            raise ValueError(f"edge {link['source']} → {link['target']} has a non-finite weight")
    return [link for link in links if link["weight"] != 0]


def _graph_metadata(graph: Circuit, rows, *, slug, scan, prompt, prompt_tokens, transcoder_list, info, answers,
                    stride) -> dict:
    """The format's required metadata, with ours (method, answers, how layers and features are encoded)."""
    meta = graph.metadata
    (cid, ctext), (pid, ptext) = answers
    fc_meta = {
        "model": meta.get("model"), "method": meta.get("method"), "direction": meta.get("direction"),
        "metric": meta.get("metric"), "clean_answer": ctext, "patch_answer": ptext,
        "clean_answer_id": int(cid), "patch_answer_id": int(pid), "metric_base": meta.get("metric_base"),
        "metric_source": meta.get("metric_source"), "layer_rows": {str(i): r for i, r in enumerate(rows)},
        "logit_layer": len(rows), "feature_stride": stride, "n_nodes": len(graph), "n_edges": graph.n_edges,
        "dictionaries": meta.get("dictionaries"), "dictionary_records": dictionary_records(meta),
        "link_sign": graph.sign, "sign_convention": "link weight = link_sign × featurecircuits' edge weight (or, into "
        "the logit and from tokens, × the node's score): positive promotes the target (clean answer) logit",
    }
    return {"slug": slug, "scan": scan, "transcoder_list": list(transcoder_list or []),
            "prompt_tokens": list(prompt_tokens), "prompt": prompt, "node_threshold": meta.get("node_threshold"),
            "schema_version": SCHEMA_VERSION, "info": info or {"generator": {"name": "featurecircuits"}},
            "featurecircuits": fc_meta}


def _transcoder_list(meta: dict) -> list[str]:
    """One plain line per dictionary: submodule, format, file or release name, hash of its weights."""
    return [f"{r['submodule']}: {r['format']} {r['name']} (weights {r['hash']})" for r in dictionary_records(meta)]


def read_scores(data: dict) -> tuple[dict[str, float], dict[tuple[str, str], float]]:
    """Back from an exported graph: our node ids' scores and the weights of edges between them (the links'
    viewer-convention sign undone)."""
    sign = data["metadata"].get("featurecircuits", {}).get("link_sign", 1)
    by_id = {n["node_id"]: n.get("fc_id") for n in data["nodes"]}
    scores = {n["fc_id"]: n["fc_score"] for n in data["nodes"] if n.get("fc_id") is not None}
    weights = {(by_id[e["source"]], by_id[e["target"]]): sign * e["weight"] for e in data["links"]
               if by_id.get(e["source"]) is not None and by_id.get(e["target"]) is not None}
    return scores, weights


def write_graph_files(data: dict, out: str | Path) -> Path:
    """``DIR/<slug>.json`` and the ``DIR/graph-metadata.json`` index the local viewer lists graphs from
    (``{"graphs": [metadata, ...]}``, one entry per slug, replaced when written again)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    slug = data["metadata"]["slug"]
    path = out / f"{slug}.json"
    atomic_write_text(path, json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    index_path = out / "graph-metadata.json"
    index = {"graphs": []}
    if index_path.is_file():
        try:
            index = json.loads(index_path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{index_path} is not valid JSON ({exc.msg}); move it away and export again") from exc
    entry = {k: v for k, v in data["metadata"].items() if k != "featurecircuits"}
    index["graphs"] = [g for g in index.get("graphs", []) if g.get("slug") != slug] + [entry]
    atomic_write_text(index_path, json.dumps(index, indent=1, ensure_ascii=False) + "\n")
    return path


def _with_circuit_texts(data: dict, circuit: Circuit, *, viewer_cards: bool) -> None:
    """Each exported node gets the circuit's score of its (summed) node, and features their label as
    ``clerp`` (the viewer's label). With feature files beside the graph, feature nodes are typed as the viewer
    expects to show them (``cross layer transcoder``; ours is in ``fc_feature_type``)."""
    summed = circuit.metadata.get("aggregation") != "none"
    for node in data["nodes"]:
        if node.get("fc_id") in (None, METRIC_NODE):
            continue
        ref = NodeRef.parse(node["fc_id"])
        base = ref.summed().id if summed else node["fc_id"]
        if summed:  # the circuit's node is summed over positions
            node["fc_circuit_score"] = circuit.score(base) if base in circuit.graph else None
        label = circuit.label(base) if base in circuit.graph and ref.kind == "feature" else None
        if label:
            node["clerp"] = f"{ref.submodule}/f{ref.feature} ‹{label}›"
            node["fc_label_source"] = circuit.graph.nodes[base].get("label_source") or "top context"
        if viewer_cards and ref.kind == "feature":
            node["fc_feature_type"], node["feature_type"] = node["feature_type"], VIEWER_FEATURE_TYPE


def _dossiers(features, model, dictionaries):
    """``features``: Dossiers, a folder of them, "auto" (the cached dossiers of these dictionaries) or None."""
    from ..features.circuits import find_dossiers, load_dossiers

    if features is None or features == "none" or not dictionaries:
        return None
    if isinstance(features, str | Path):
        return find_dossiers(model, dictionaries) if features == "auto" else \
            load_dossiers(features, model, dictionaries)
    return features


def export_attribution_graph(circuit: Circuit, out: str | Path, *, example: int = 0, model=None,
                             dictionaries="auto", task=None, slug: str | None = None,
                             edge_threshold: float | None = None, features="auto", labels=None,
                             groups=None) -> Path:
    """Export ``circuit`` on one example of its task to ``out`` (see the module docstring).

    ``model``: a loaded model or a spec for ``load_model`` (default the circuit's ``model``);
    ``dictionaries``: loaded dictionaries, a spec, or "auto" (from the circuit's metadata);
    ``task``: a JSONL path, a task name or a generator dict (default the circuit's ``task``);
    ``edge_threshold``: keep edges with |weight| ≥ this on the example (default the circuit's);
    ``features``: dossiers (or a folder of them; "auto": cached ones of the circuit's dictionaries) whose
    cards are written as the viewer's feature files beside the graph; ``labels``: node id → Label (user
    labels win over the dossiers' automatic ones), written as each feature's ``clerp``; ``groups`` (name → node
    ids, :mod:`featurecircuits.groups`): written as the viewer's supernodes."""
    from ..groups import check_groups, supernodes

    if groups:
        check_groups(circuit, groups, where="groups")  # before the model loads
    model = circuit_model(circuit, model)
    dictionaries, _ = circuit_dictionaries(circuit, model, dictionaries)
    dossiers = _dossiers(features, model, dictionaries)
    if dossiers is not None or labels:
        from ..features.circuits import annotate

        annotate(circuit, dossiers, labels)
    data = _example_graph(circuit, model, dictionaries, task, example, slug, edge_threshold)
    _with_circuit_texts(data, circuit, viewer_cards=dossiers is not None)
    if groups:
        data["qParams"]["supernodes"] = supernodes(data["nodes"], groups)
    path = write_graph_files(data, out)
    if dossiers is not None:
        from ..features import write_feature_files

        write_feature_files(dossiers, out, graph=data)
    return path


def _example_graph(circuit: Circuit, model, dictionaries, task, example: int, slug, edge_threshold) -> dict:
    """The attribution-graph dict of one example of the circuit's task."""
    import torch

    from ..data import make_batch

    meta = circuit.metadata
    spec = task if task is not None else task_spec(meta)
    ex = load_example(spec, model, example)
    tok = model.tokenizer
    batch = make_batch(tok, [ex["clean_prefix"]], [ex["patch_prefix"]], [ex["clean_answer"]], [ex["patch_answer"]])
    graph = example_circuit(model, dictionaries, circuit, batch, edge_threshold=edge_threshold)
    ids = batch.clean[0].tolist()
    with torch.no_grad():
        logits = model.hf(input_ids=batch.clean.to(model.device)).logits[0, -1].float()
    prob = float(torch.softmax(logits, -1)[int(batch.clean_answer[0])])
    task_name = (spec.get("name") or spec.get("generator") or Path(str(spec.get("file") or
                 spec.get("path") or "task")).stem) if isinstance(spec, dict) else Path(str(spec)).stem
    from .. import __version__

    data = to_attribution_graph(
        graph, rows=export_rows(model, circuit), prompt=ex["clean_prefix"], prompt_ids=ids,
        prompt_tokens=[_token_text(tok, i) for i in ids],
        clean_answer=(int(batch.clean_answer[0]), ex["clean_answer"]),
        patch_answer=(int(batch.patch_answer[0]), ex["patch_answer"]),
        slug=slug or _slug(f"{model.name}-{task_name}-{graph.metadata.get('method', '')}-ex{example}"),
        scan=str(meta.get("model") or model.name), transcoder_list=_transcoder_list(meta),
        token_prob=prob, circuit_scores={n: circuit.score(n) for n in circuit.nodes},
        info={"generator": {"name": "featurecircuits", "version": __version__},
              "creator_name": "featurecircuits export", "example": example, "task": spec,
              "patch_prompt": ex["patch_prefix"]})
    data["metadata"]["node_threshold"] = meta.get("node_threshold")  # the circuit's, not the example's 0
    return data
