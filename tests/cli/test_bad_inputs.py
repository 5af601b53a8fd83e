"""A catalogue of bad and hostile inputs through the command line (issue 17).

Every case asserts the exit code, that the message names the culprit (file, line or JSON path, option),
that no traceback is printed, and that no input or earlier output changed. Most fail before any model is
loaded; the few that need the model (vocabulary, token lengths, layers, a circuit of another model) use the
organism.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from pathlib import Path

import pytest

from featurecircuits.cli import build_parser, main

REPO = Path(__file__).resolve().parents[2]

GOOD = [
    {"clean_prefix": "The athlete that the managers like", "patch_prefix": "The athletes that the managers like",
     "clean_answer": " is", "patch_answer": " are"},
    {"clean_prefix": "The doctor near the cars", "patch_prefix": "The doctors near the cars",
     "clean_answer": " was", "patch_answer": " were"},
]
LINE = json.dumps(GOOD[0])


def _circuit(**changes) -> dict:
    c = {"schema": "featurecircuits.circuit", "version": 1,
         "metadata": {"model": "organism", "family": "gpt_neox", "n_layers": 6, "d_model": 128,
                      "method": "relp", "submodules": ["embed"] + [f"{k}_{i}" for i in range(6)
                                                                   for k in ("attn", "mlp", "resid")]},
         "nodes": [{"id": "logit", "kind": "metric", "score": 1.5},
                   {"id": "resid_5/f3", "kind": "feature", "score": 0.5, "submodule": "resid_5", "layer": 5,
                    "position": None, "feature": 3},
                   {"id": "mlp_2/err", "kind": "error", "score": -0.2, "submodule": "mlp_2", "layer": 2}],
         "edges": [{"source": "resid_5/f3", "target": "logit", "weight": 0.5},
                   {"source": "mlp_2/err", "target": "resid_5/f3", "weight": 0.1}]}
    for path, value in changes.items():
        *head, last = path.split(".")
        target = c
        for key in head:
            target = target[int(key)] if key.isdigit() else target[key]
        if value is _DELETE:
            del target[int(last) if last.isdigit() else last]
        elif last.isdigit():
            target[int(last)] = value
        else:
            target[last] = value
    return c


_DELETE = object()


def _json(obj) -> str:
    return json.dumps(obj)


def _deep(n: int = 100_000) -> str:
    return "[" * n + "]" * n


# Files every case finds in its folder (written fresh per case): inputs and earlier outputs.
def _setup(t: Path) -> None:
    (t / "good.jsonl").write_text("".join(json.dumps(e) + "\n" for e in GOOD))
    (t / "circuit.json").write_text(json.dumps(_circuit()))
    (t / "earlier.json").write_text('{"an earlier": "output"}\n')
    (t / "earlier.html").write_text("<p>an earlier page</p>\n")
    (t / "dir").mkdir()
    (t / "full").mkdir()
    (t / "full" / "x.txt").write_text("x")
    (t / "modeldir").mkdir()
    (t / "link.jsonl").symlink_to(t / "good.jsonl")


# (kind, id, files to write {name: text or bytes}, argv with {t} for the folder, exit code, words the message
# must contain)
D = ["discover", "--out", "{t}/earlier.json"]  # an earlier output: must survive the failed run
E = ["evaluate", "--task", "{t}/good.jsonl"]
P = ["plot", "--out", "{t}/earlier.html"]

CASES = [
    # ---------------------------------------------------------------------------------------- tasks
    ("task", "missing-file", {}, D + ["--task", "{t}/nope.jsonl"], 2, ["nope.jsonl", "neither a file"]),
    ("task", "directory", {}, D + ["--task", "{t}/dir"], 2, ["dir", "is a directory"]),
    ("task", "unknown-name", {}, D + ["--task", "sva-xx"], 2, ["sva-xx", "ioi"]),
    ("task", "empty-file", {"t.jsonl": ""}, D + ["--task", "{t}/t.jsonl"], 2, ["t.jsonl", "no examples"]),
    ("task", "blank-lines", {"t.jsonl": "\n  \n\n"}, D + ["--task", "{t}/t.jsonl"], 2, ["t.jsonl", "no examples"]),
    ("task", "invalid-json", {"t.jsonl": LINE + "\n{oops\n"}, D + ["--task", "{t}/t.jsonl"], 2,
     ["t.jsonl:2", "not valid JSON"]),
    ("task", "array-line", {"t.jsonl": "[1, 2]\n"}, D + ["--task", "{t}/t.jsonl"], 2,
     ["t.jsonl:1", "expected a JSON object", "array"]),
    ("task", "null-line", {"t.jsonl": LINE + "\nnull\n"}, D + ["--task", "{t}/t.jsonl"], 2, ["t.jsonl:2", "null"]),
    ("task", "number-line", {"t.jsonl": "42\n"}, D + ["--task", "{t}/t.jsonl"], 2, ["t.jsonl:1", "int"]),
    ("task", "string-line", {"t.jsonl": '"hello"\n'}, D + ["--task", "{t}/t.jsonl"], 2, ["t.jsonl:1", "str"]),
    ("task", "missing-answer", {"t.jsonl": _json({k: v for k, v in GOOD[0].items() if k != "clean_answer"})},
     D + ["--task", "{t}/t.jsonl"], 2, ["t.jsonl:1", "clean_answer", "missing"]),
    ("task", "missing-prefix", {"t.jsonl": LINE + "\n" + _json({**GOOD[0], "patch_prefix": None} | {}) + "\n"},
     D + ["--task", "{t}/t.jsonl"], 2, ["t.jsonl:2", "patch_prefix", "string"]),
    ("task", "number-answer", {"t.jsonl": _json({**GOOD[0], "patch_answer": 3})}, D + ["--task", "{t}/t.jsonl"], 2,
     ["t.jsonl:1", "patch_answer", "expected a string"]),
    ("task", "bool-answer", {"t.jsonl": _json({**GOOD[0], "clean_answer": True})}, D + ["--task", "{t}/t.jsonl"],
     2, ["t.jsonl:1", "clean_answer"]),
    ("task", "object-prefix", {"t.jsonl": _json({**GOOD[0], "clean_prefix": {"a": 1}})},
     D + ["--task", "{t}/t.jsonl"], 2, ["t.jsonl:1", "clean_prefix"]),
    ("task", "empty-prefix", {"t.jsonl": _json({**GOOD[0], "clean_prefix": ""})}, D + ["--task", "{t}/t.jsonl"], 2,
     ["t.jsonl:1", "clean_prefix", "empty"]),
    ("task", "blank-prefix", {"t.jsonl": _json({**GOOD[0], "patch_prefix": "   "})}, D + ["--task", "{t}/t.jsonl"],
     2, ["t.jsonl:1", "patch_prefix", "empty"]),
    ("task", "empty-answer", {"t.jsonl": _json({**GOOD[0], "patch_answer": ""})}, D + ["--task", "{t}/t.jsonl"], 2,
     ["t.jsonl:1", "patch_answer", "empty"]),
    ("task", "equal-answers", {"t.jsonl": LINE + "\n" + _json({**GOOD[1], "patch_answer": " was"})},
     D + ["--task", "{t}/t.jsonl"], 2, ["t.jsonl:2", "clean_answer and patch_answer", "' was'"]),
    ("task", "equal-prompts", {"t.jsonl": _json({**GOOD[0], "patch_prefix": GOOD[0]["clean_prefix"]})},
     D + ["--task", "{t}/t.jsonl"], 2, ["t.jsonl:1", "clean_prefix and patch_prefix are the same"]),
    ("task", "not-utf8", {"t.jsonl": LINE.encode() + b"\n" + b'{"clean_prefix": "caf\xe9"}\n'},
     D + ["--task", "{t}/t.jsonl"], 2, ["t.jsonl:2", "UTF-8"]),
    ("task", "deeply-nested", {"t.jsonl": _deep() + "\n"}, D + ["--task", "{t}/t.jsonl"], 2,
     ["t.jsonl:1", "nested too deeply"]),
    ("task", "utf8-bom", {"t.jsonl": "\ufeff" + LINE + "\n"}, D + ["--task", "{t}/t.jsonl"], 2,
     ["t.jsonl:1", "not valid JSON"]),
    ("task", "bad-third-line", {"t.jsonl": LINE + "\n" + LINE + "\n" + _json({"clean_prefix": 1}) + "\n"},
     D + ["--task", "{t}/t.jsonl"], 2, ["t.jsonl:3", "clean_prefix"]),
    ("task", "bad-file-for-evaluate", {"t.jsonl": "[]\n"}, ["evaluate", "--task", "{t}/t.jsonl", "--circuit",
                                                            "{t}/circuit.json"], 2, ["t.jsonl:1"]),
    ("task", "bad-file-for-curve", {"t.jsonl": "null\n"}, ["curve", "--task", "{t}/t.jsonl", "--out",
                                                          "{t}/earlier.json"], 2, ["t.jsonl:1"]),
    ("task", "bad-file-for-compare", {"t.jsonl": "null\n"}, ["compare", "--task", "{t}/t.jsonl", "--out",
                                                            "{t}/cmp"], 2, ["t.jsonl:1"]),
    # these need the tokenizer, so the organism loads (no forward runs)
    ("task", "word-not-in-vocabulary", {"t.jsonl": _json({**GOOD[0], "clean_prefix": "The wombat that the "
                                                          "managers like"})},
     D + ["--task", "{t}/t.jsonl"], 2, ["t.jsonl", "vocabulary"]),
    ("task", "unequal-lengths", {"t.jsonl": _json({**GOOD[0], "patch_prefix": "The athletes that the managers"})},
     D + ["--task", "{t}/t.jsonl"], 2, ["t.jsonl", "clean prefix has 6 tokens", "patch prefix has 5"]),
    ("task", "multi-token-answer", {"t.jsonl": _json({**GOOD[0], "clean_answer": " is is"})},
     D + ["--task", "{t}/t.jsonl"], 2, ["t.jsonl", "single token"]),
    ("task", "more-examples-than-distinct", {}, D + ["--task", "sva-simple", "--n-examples", "41"], 2,
     ["--n-examples 41", "only 17 distinct pairs in its discovery split"]),
    ("task", "make-negative-n", {}, ["tasks", "make", "ioi", "--n", "-5", "--out", "{t}/earlier.json"], 2,
     ["--n", "≥ 1", "-5"]),
    ("task", "make-zero-n", {}, ["tasks", "make", "ioi", "--n", "0", "--out", "{t}/earlier.json"], 2, ["--n", "≥ 1"]),
    ("task", "make-n-not-a-number", {}, ["tasks", "make", "ioi", "--n", "ten", "--out", "{t}/x.jsonl"], 2,
     ["--n", "'ten'"]),
    ("task", "make-too-many", {}, ["tasks", "make", "sva-simple", "--n", "41", "--out", "{t}/earlier.json"], 2,
     ["only 40 distinct pairs"]),
    ("task", "make-unknown-task", {}, ["tasks", "make", "sva-x", "--out", "{t}/x.jsonl"], 2, ["sva-x"]),
    ("task", "make-unknown-words", {}, ["tasks", "make", "ioi", "--words", "klingon", "--out", "{t}/x.jsonl"], 2,
     ["klingon"]),
    # ------------------------------------------------------------------------------------- circuits
    ("circuit", "missing-file", {}, E + ["--circuit", "{t}/nope.json"], 2, ["nope.json", "does not exist"]),
    ("circuit", "directory", {}, E + ["--circuit", "{t}/dir"], 2, ["dir", "is a directory"]),
    ("circuit", "not-json", {"c.json": "{nodes: }"}, E + ["--circuit", "{t}/c.json"], 2, ["c.json", "not valid JSON"]),
    ("circuit", "empty-file", {"c.json": ""}, E + ["--circuit", "{t}/c.json"], 2, ["c.json", "not valid JSON"]),
    ("circuit", "array", {"c.json": "[]"}, E + ["--circuit", "{t}/c.json"], 2, ["c.json", "expected a JSON object"]),
    ("circuit", "null", {"c.json": "null"}, E + ["--circuit", "{t}/c.json"], 2, ["c.json", "null"]),
    ("circuit", "wrong-schema", {"c.json": _json(_circuit(schema="other"))}, E + ["--circuit", "{t}/c.json"], 2,
     ["c.json", "$.schema", "'other'"]),
    ("circuit", "wrong-version", {"c.json": _json(_circuit(version=99))}, E + ["--circuit", "{t}/c.json"], 2,
     ["c.json", "$.version", "99"]),
    ("circuit", "missing-nodes", {"c.json": _json(_circuit(nodes=_DELETE))}, E + ["--circuit", "{t}/c.json"], 2,
     ["c.json", "$.nodes", "missing"]),
    ("circuit", "missing-edges", {"c.json": _json(_circuit(edges=_DELETE))}, E + ["--circuit", "{t}/c.json"], 2,
     ["c.json", "$.edges", "missing"]),
    ("circuit", "node-without-id", {"c.json": _json(_circuit(**{"nodes.1.id": _DELETE}))},
     E + ["--circuit", "{t}/c.json"], 2, ["c.json", "$.nodes[1].id", "missing"]),
    ("circuit", "node-without-score", {"c.json": _json(_circuit(**{"nodes.2.score": _DELETE}))},
     E + ["--circuit", "{t}/c.json"], 2, ["c.json", "$.nodes[2].score", "missing"]),
    ("circuit", "string-score", {"c.json": _json(_circuit(**{"nodes.1.score": "0.5"}))},
     E + ["--circuit", "{t}/c.json"], 2, ["c.json", "$.nodes[1].score", "expected a number", '"0.5"']),
    ("circuit", "bool-score", {"c.json": _json(_circuit(**{"nodes.1.score": True}))},
     E + ["--circuit", "{t}/c.json"], 2, ["c.json", "$.nodes[1].score", "expected a number"]),
    ("circuit", "nan-score", {"c.json": _json(_circuit(**{"nodes.1.score": float("nan")}))},
     E + ["--circuit", "{t}/c.json"], 2, ["c.json", "$.nodes[1].score", "finite"]),
    ("circuit", "infinite-weight", {"c.json": _json(_circuit(**{"edges.0.weight": float("inf")}))},
     E + ["--circuit", "{t}/c.json"], 2, ["c.json", "$.edges[0].weight", "finite"]),
    ("circuit", "edge-without-weight", {"c.json": _json(_circuit(**{"edges.1.weight": _DELETE}))},
     E + ["--circuit", "{t}/c.json"], 2, ["c.json", "$.edges[1].weight", "missing"]),
    ("circuit", "edge-to-unknown-node", {"c.json": _json(_circuit(**{"edges.0.target": "attn_9"}))},
     E + ["--circuit", "{t}/c.json"], 2, ["c.json", "$.edges[0].target", "'attn_9'"]),
    ("circuit", "malformed-node-id", {"c.json": _json(_circuit(**{"nodes.2.id": "mlp_2/x"}))},
     E + ["--circuit", "{t}/c.json"], 2, ["c.json", "$.nodes[2].id", "malformed node id"]),
    ("circuit", "duplicate-node", {"c.json": _json(_circuit(**{"nodes.2.id": "resid_5/f3"}))},
     E + ["--circuit", "{t}/c.json"], 2, ["c.json", "$.nodes[2].id", "twice"]),
    ("circuit", "nodes-not-a-list", {"c.json": _json(_circuit(nodes={"a": 1}))}, E + ["--circuit", "{t}/c.json"], 2,
     ["c.json", "$.nodes", "JSON array"]),
    ("circuit", "node-is-null", {"c.json": _json(_circuit(**{"nodes.1": None}))}, E + ["--circuit", "{t}/c.json"], 2,
     ["c.json", "$.nodes[1]", "JSON object"]),
    ("circuit", "negative-feature", {"c.json": _json(_circuit(**{"nodes.1.feature": -3}))},
     E + ["--circuit", "{t}/c.json"], 2, ["c.json", "$.nodes[1].feature"]),
    ("circuit", "submodules-not-a-list", {"c.json": _json(_circuit(**{"metadata.submodules": "embed"}))},
     E + ["--circuit", "{t}/c.json"], 2, ["c.json", "$.metadata.submodules", "JSON array"]),
    ("circuit", "deeply-nested", {"c.json": '{"schema": "featurecircuits.circuit", "x": ' + _deep() + "}"},
     E + ["--circuit", "{t}/c.json"], 2, ["c.json", "nested too deeply"]),
    ("circuit", "not-utf8", {"c.json": b'{"schema": "\xff"}'}, E + ["--circuit", "{t}/c.json"], 2,
     ["c.json", "UTF-8"]),
    ("circuit", "another-model", {"c.json": _json(_circuit(**{"metadata.n_layers": 2}))},
     E + ["--circuit", "{t}/c.json"], 2, ["c.json", "another model"]),
    ("circuit", "unknown-submodule", {"c.json": _json(_circuit(**{"nodes.1.id": "resid_9/f3",
                                                                  "edges.0.source": "resid_9/f3",
                                                                  "edges.1.target": "resid_9/f3"}))},
     E + ["--circuit", "{t}/c.json"], 2, ["c.json", "resid_9"]),
    ("circuit", "feature-beyond-the-dictionary", {"c.json": _json(_circuit(**{"nodes.1.id": "resid_5/f99999",
                                                                              "edges.0.source": "resid_5/f99999",
                                                                              "edges.1.target": "resid_5/f99999"}))},
     E + ["--circuit", "{t}/c.json"], 2, ["c.json", "resid_5/f99999", "width 1024"]),
    ("circuit", "feature-without-dictionaries", {}, E + ["--circuit", "{t}/circuit.json", "--dictionaries", "none"],
     2, ["circuit.json", "resid_5/f3", "no dictionary"]),
    ("circuit", "plot-string-score", {"c.json": _json(_circuit(**{"nodes.1.score": "high"}))},
     P + ["--circuit", "{t}/c.json"], 2, ["c.json", "$.nodes[1].score"]),
    ("circuit", "plot-missing", {}, P + ["--circuit", "{t}/nope.json"], 2, ["nope.json"]),
    ("circuit", "export-bad", {"c.json": "[1]"}, ["export", "--circuit", "{t}/c.json", "--out", "{t}/exp"], 2,
     ["c.json", "expected a JSON object"]),
    # -------------------------------------------------------------------------------------- options
    ("option", "n-examples-0", {}, D + ["--task", "ioi", "--n-examples", "0"], 2, ["--n-examples", "≥ 1"]),
    ("option", "n-examples-beyond-the-file-is-said", {"t.jsonl": LINE + "\n" + LINE.replace("like", "see") + "\n"},
     ["evaluate", "--task", "{t}/t.jsonl", "--n-examples", "50", "--circuit", "{t}/nope.json"], 2,
     ["holds 2 pairs; --n-examples 50 uses all 2", "nope.json"]),
    ("option", "n-examples-negative", {}, D + ["--task", "{t}/good.jsonl", "--n-examples", "-5"], 2,
     ["--n-examples", "-5"]),
    ("option", "batch-size-0", {}, D + ["--task", "ioi", "--batch-size", "0"], 2, ["--batch-size", "≥ 1"]),
    ("option", "batch-size-negative", {}, E + ["--circuit", "{t}/circuit.json", "--batch-size", "-1"], 2,
     ["--batch-size", "-1"]),
    ("option", "ig-steps-0", {}, D + ["--task", "ioi", "--method", "ig", "--ig-steps", "0"], 2, ["--ig-steps"]),
    ("option", "top-k-negative", {}, D + ["--task", "ioi", "--top-k", "-1"], 2, ["--top-k", "≥ 0"]),
    ("option", "node-threshold-nan", {}, D + ["--task", "ioi", "--node-threshold", "nan"], 2,
     ["--node-threshold", "finite"]),
    ("option", "node-threshold-inf", {}, D + ["--task", "ioi", "--node-threshold", "inf"], 2, ["--node-threshold"]),
    ("option", "node-threshold-negative", {}, D + ["--task", "ioi", "--node-threshold", "-0.1"], 2,
     ["--node-threshold", "≥ 0"]),
    ("option", "edge-threshold-text", {}, D + ["--task", "ioi", "--edge-threshold", "abc"], 2,
     ["--edge-threshold", "'abc'"]),
    ("option", "unknown-method", {}, D + ["--task", "ioi", "--method", "shap"], 2, ["--method", "shap"]),
    ("option", "methods-empty-item", {}, ["curve", "--task", "ioi", "--methods", "relp,,atp", "--out",
                                          "{t}/earlier.json"], 2, ["--methods", "empty method name"]),
    ("option", "methods-unknown", {}, ["curve", "--task", "ioi", "--methods", "relp,foo", "--out",
                                       "{t}/earlier.json"], 2, ["--methods", "'foo'"]),
    ("option", "methods-repeated", {}, ["curve", "--task", "ioi", "--methods", "relp,relp", "--out",
                                        "{t}/earlier.json"], 2, ["--methods", "twice"]),
    ("option", "thresholds-empty-item", {}, ["curve", "--task", "ioi", "--thresholds", "0.1,,0.2", "--out",
                                             "{t}/earlier.json"], 2, ["--thresholds", "empty item"]),
    ("option", "thresholds-nan", {}, ["curve", "--task", "ioi", "--thresholds", "0.1,nan", "--out",
                                      "{t}/earlier.json"], 2, ["--thresholds", "finite"]),
    ("option", "rules-bad-value", {}, D + ["--task", "ioi", "--rules", "attention=xx"], 2, ["--rules", "'xx'"]),
    ("option", "rules-unknown-set", {}, D + ["--task", "ioi", "--rules", "lrp-magic"], 2, ["--rules", "lrp-magic"]),
    ("option", "direction", {}, D + ["--task", "ioi", "--direction", "sideways"], 2, ["--direction", "sideways"]),
    ("option", "start-layer-negative", {}, E + ["--circuit", "{t}/circuit.json", "--start-layer", "-1"], 2,
     ["--start-layer", "≥ 0"]),
    ("option", "start-layer-beyond-model", {}, E + ["--circuit", "{t}/circuit.json", "--start-layer", "99"], 2,
     ["--start-layer 99", "6 layers"]),
    ("option", "curve-start-layer-beyond-model", {}, ["curve", "--task", "ioi", "--start-layer", "6", "--out",
                                                      "{t}/earlier.json"], 2, ["--start-layer 6", "6 layers"]),
    ("option", "ablation", {}, E + ["--circuit", "{t}/circuit.json", "--ablation", "median"], 2,
     ["--ablation", "median"]),
    ("option", "compare-n-0", {}, ["compare", "--n", "0", "--out", "{t}/cmp"], 2, ["--n", "≥ 1"]),
    ("option", "compare-batch-size-0", {}, ["compare", "--batch-size", "0", "--out", "{t}/cmp"], 2,
     ["--batch-size"]),
    ("option", "compare-memory-budget-not-a-size", {}, ["compare", "--memory-budget", "4 parsecs", "--out",
                                                        "{t}/cmp"], 2, ["--memory-budget", "expected a size", "4GiB"]),
    ("option", "compare-memory-budget-too-small", {}, ["compare", "--n", "2", "--memory-budget", "1MiB", "--out",
                                                       "{t}/cmp"], 2, ["--memory-budget 1MiB is too small", "least"]),
    ("option", "features-memory-budget-too-small", {}, ["features", "--memory-budget", "1KB", "--out", "{t}/d"], 2,
     ["--memory-budget 1KiB is too small", "one row of 128 tokens", "give at least"]),
    ("option", "plot-top-k-negative", {}, P + ["--circuit", "{t}/circuit.json", "--top-k", "-1"], 2, ["--top-k"]),
    ("option", "plot-max-nodes-zero", {}, P + ["--circuit", "{t}/circuit.json", "--max-nodes", "0"], 2,
     ["--max-nodes"]),
    ("option", "plot-beyond-max-nodes", {}, P + ["--circuit", "{t}/circuit.json", "--max-nodes", "1"], 2,
     ["circuit.json has 2 nodes and 2 edges", "--top-k K", "--max-nodes N"]),
    ("option", "plot-groups-not-json", {"g.json": "{oops"},
     P + ["--circuit", "{t}/circuit.json", "--groups", "{t}/g.json"], 2, ["--groups", "g.json", "not valid JSON"]),
    ("option", "export-groups-missing", {}, ["export", "--circuit", "{t}/circuit.json", "--groups", "{t}/nope.json",
                                             "--out", "{t}/graphs"], 2, ["--groups", "nope.json", "cannot read it"]),
    ("option", "plot-groups-unknown-node", {"g.json": '{"s": ["resid_4/f9"]}'},
     P + ["--circuit", "{t}/circuit.json", "--groups", "{t}/g.json"], 2,
     ["group 's'", "resid_4/f9 not in the circuit"]),
    ("option", "plot-beyond-max-edges", {}, P + ["--circuit", "{t}/circuit.json", "--max-edges", "1"], 2,
     ["circuit.json has 2 nodes and 2 edges", "--edge-threshold W", "--max-edges M"]),
    ("option", "export-example-negative", {}, ["export", "--circuit", "{t}/circuit.json", "--example", "-1", "--out",
                                               "{t}/exp"], 2, ["--example"]),
    ("option", "plan-batch-0", {}, ["plan", "--model", "organism", "--batch", "0", "--tokens", "8"], 2, ["--batch"]),
    ("option", "demo-n-examples-0", {}, ["demo", "--n-examples", "0", "--out", "{t}/demo"], 2, ["--n-examples"]),
    ("option", "no-subcommand", {}, [], 2, ["COMMAND"]),
    ("option", "unknown-subcommand", {}, ["discovr"], 2, ["discovr"]),
    ("option", "train-without-out", {}, ["organism", "train"], 2, ["--out DIR is required", "--replace-shipped"]),
    ("option", "train-out-and-replace", {}, ["organism", "train", "--out", "{t}/new", "--replace-shipped"], 2,
     ["--replace-shipped"]),
    ("option", "resume-without-run", {}, D + ["--task", "{t}/good.jsonl", "--resume"], 2,
     ["--resume", "earlier.json.run"]),
    # --------------------------------------------------------------------------------------- models
    ("model", "missing-folder", {}, D + ["--task", "ioi", "--model", "{t}/nomodel"], 2, ["--model", "nomodel"]),
    ("model", "folder-without-config", {}, D + ["--task", "ioi", "--model", "{t}/modeldir"], 2,
     ["--model", "modeldir", "config.json"]),
    ("model", "a-file", {}, D + ["--task", "ioi", "--model", "{t}/good.jsonl"], 2, ["--model", "good.jsonl", "file"]),
    ("model", "missing-gguf", {}, D + ["--task", "ioi", "--model", "{t}/m.gguf"], 2, ["--model", "m.gguf"]),
    ("model", "evaluate-missing-folder", {}, E + ["--circuit", "{t}/circuit.json", "--model", "./no/such/model"], 2,
     ["./no/such/model"]),
    ("model", "compare-missing-folder", {}, ["compare", "--model", "{t}/nomodel", "--out", "{t}/cmp"], 2,
     ["nomodel"]),
    # ------------------------------------------------------------------------------ dictionaries (CLI)
    ("dictionaries", "missing-folder", {}, D + ["--task", "{t}/good.jsonl", "--dictionaries", "{t}/nodicts"], 2,
     ["nodicts"]),
    ("dictionaries", "empty-folder", {}, D + ["--task", "{t}/good.jsonl", "--dictionaries", "{t}/dir"], 2,
     ["dir"]),
    # -------------------------------------------------------------------------------------- outputs
    ("output", "out-is-the-task", {}, ["discover", "--task", "{t}/good.jsonl", "--out", "{t}/good.jsonl"], 2,
     ["--out", "good.jsonl", "overwrite the task file"]),
    ("output", "out-through-symlink-to-task", {}, ["discover", "--task", "{t}/good.jsonl", "--out",
                                                   "{t}/link.jsonl"], 2, ["--out", "overwrite the task file"]),
    ("output", "html-is-the-task", {}, D + ["--task", "{t}/good.jsonl", "--html", "{t}/good.jsonl"], 2,
     ["--html", "overwrite the task file"]),
    ("output", "out-equals-html", {}, D + ["--task", "ioi", "--html", "{t}/earlier.json"], 2,
     ["--html", "--out", "both name"]),
    ("output", "out-is-a-directory", {}, ["discover", "--task", "ioi", "--out", "{t}/dir"], 2,
     ["--out", "dir", "is a directory"]),
    ("output", "out-in-missing-folder", {}, ["discover", "--task", "ioi", "--out", "{t}/missing/c.json"], 2,
     ["--out", "missing", "does not exist"]),
    ("output", "out-under-a-file", {}, ["discover", "--task", "ioi", "--out", "{t}/good.jsonl/c.json"], 2,
     ["--out", "does not exist"]),
    ("output", "out-in-shipped-dictionaries", {}, ["discover", "--task", "ioi", "--out",
                                                   str(REPO / "dictionaries" / "organism" / "x.json")], 2,
     ["--out", "would write into the folder of the dictionaries"]),
    ("output", "out-is-the-shipped-model", {}, ["discover", "--task", "ioi", "--out",
                                                str(REPO / "models" / "organism" / "config.json")], 2,
     ["--out", "overwrite the organism model"]),
    ("output", "out-inside-the-given-dictionaries", {}, D + ["--task", "ioi", "--dictionaries", "{t}/full",
                                                          "--html", "{t}/full/x.txt"], 2,
     ["--html", "overwrite the dictionaries"]),
    ("output", "out-inside-saelens-dictionaries", {}, D + ["--task", "ioi", "--dictionaries", "saelens:{t}/full",
                                                        "--html", "{t}/full/new.html"], 2,
     ["--html", "would write into the folder of the dictionaries"]),
    ("output", "evaluate-out-is-the-circuit", {}, E + ["--circuit", "{t}/circuit.json", "--out", "{t}/circuit.json"],
     2, ["--out", "overwrite the circuit file"]),
    ("output", "evaluate-out-is-the-task", {}, E + ["--circuit", "{t}/circuit.json", "--out", "{t}/good.jsonl"], 2,
     ["--out", "overwrite the task file"]),
    ("output", "plot-out-is-the-circuit", {}, ["plot", "--circuit", "{t}/circuit.json", "--out", "{t}/circuit.json"],
     2, ["--out", "overwrite the circuit file"]),
    ("output", "curve-out-equals-html", {}, ["curve", "--task", "ioi", "--out", "{t}/earlier.json", "--html",
                                             "{t}/earlier.json"], 2, ["both name"]),
    ("output", "curve-out-is-a-directory", {}, ["curve", "--task", "ioi", "--out", "{t}/dir"], 2,
     ["--out", "is a directory"]),
    ("output", "tasks-make-out-is-a-directory", {}, ["tasks", "make", "ioi", "--out", "{t}/dir"], 2,
     ["--out", "is a directory"]),
    ("output", "tasks-make-missing-folder", {}, ["tasks", "make", "ioi", "--out", "{t}/missing/t.jsonl"], 2,
     ["--out", "does not exist"]),
    ("output", "compare-out-is-a-file", {}, ["compare", "--out", "{t}/earlier.json"], 2, ["--out", "is a file"]),
    ("output", "compare-would-overwrite-its-task", {"cmpdir/comparison.json": LINE + "\n"},
     ["compare", "--task", "{t}/cmpdir/comparison.json", "--out", "{t}/cmpdir"], 2, ["overwrite the task file"]),
    ("output", "demo-out-is-a-file", {}, ["demo", "--out", "{t}/earlier.json"], 2, ["--out", "is a file"]),
    ("output", "export-out-is-a-file", {}, ["export", "--circuit", "{t}/circuit.json", "--out", "{t}/earlier.json"],
     2, ["--out", "is a file"]),
    ("output", "run-dir-is-a-file", {}, D + ["--task", "ioi", "--run-dir", "{t}/good.jsonl"], 2,
     ["--run-dir", "is a file"]),
    ("output", "run-dir-holds-the-task", {}, D + ["--task", "{t}/good.jsonl", "--run-dir", "{t}"], 2,
     ["{t}", "not a featurecircuits run folder"]),
    ("output", "run-dir-inside-the-dictionaries", {}, D + ["--task", "ioi", "--dictionaries", "{t}/full",
                                                        "--run-dir", "{t}/full/run"], 2,
     ["--run-dir", "would write into the folder of the dictionaries"]),
    ("output", "run-dir-not-a-run-folder", {}, D + ["--task", "ioi", "--run-dir", "{t}/full"], 2,
     ["full", "not a featurecircuits run folder"]),
    ("output", "train-out-not-empty", {}, ["organism", "train", "--out", "{t}/full"], 2,
     ["--out", "full", "not an empty folder"]),
    ("output", "train-out-is-a-file", {}, ["organism", "train", "--out", "{t}/earlier.json"], 2, ["--out"]),
    ("option", "card-out-without-a-model", {}, ["organism", "card", "--out", "{t}/full"], 2,
     ["--out", "no model folder"]),
    ("dictionaries", "features-without-dictionaries", {}, ["features", "--dictionaries", "none", "--out", "{t}/d"],
     2, ["--dictionaries none", "give dictionaries"]),
    ("model", "features-model-not-a-model-folder", {}, ["features", "--model", "{t}/full", "--out", "{t}/d"], 2,
     ["--model"]),
]


# ------------------------------------------------------------------------------------------------------------------
# Issue 26 (reliability, second pass): run folders, checkpoints, dictionaries, degenerate tasks, numbers, blame.
# A files entry "*" is a function run on the case's folder at setup (run folders with real checkpoints, a held
# lock, links); "@cwd" runs the case from the case's folder.

HOLDERS: list = []  # run folders held (locked) in this process for a case, released after it


def _run_folder(t: Path, name: str = "earlier.json.run", command: str = "discover", units: int = 2):
    """An interrupted run folder with real checkpoints (as an interrupted run leaves it)."""
    import torch

    from featurecircuits.checkpoint import RunDir

    run = RunDir(t / name, {"command": command, "task": "t"})
    for i in range(units):
        run.save(f"nodes-{i}", {"totals": {"resid_0|act": torch.full((3,), float(i + 1))}})
    run.close()
    return t / name


def _tampered(how: str):
    def setup(t: Path) -> None:
        import torch

        run = _run_folder(t)
        first, second = run / "nodes-0.pt", run / "nodes-1.pt"
        data = second.read_bytes()
        if how == "swapped":  # nodes-0.pt copied over nodes-1.pt
            second.write_bytes(first.read_bytes())
        elif how == "sign-flipped":
            torch.save({"totals": {"resid_0|act": -torch.full((3,), 2.0)}}, second)
        elif how == "scaled":
            torch.save({"totals": {"resid_0|act": 1000 * torch.full((3,), 2.0)}}, second)
        elif how == "truncated":
            second.write_bytes(data[:len(data) // 2])
        else:
            second.write_bytes(b"")
    return setup


def _old_run_folder(t: Path) -> None:
    """A run folder written before checkpoints carried hashes (run.json was the key itself)."""
    (t / "earlier.json.run").mkdir()
    (t / "earlier.json.run" / "run.json").write_text(json.dumps({"command": "discover", "top_k": 5}))
    (t / "earlier.json.run" / "nodes-0.pt").write_bytes(b"old")


def _held(t: Path) -> None:
    """The run folder of a run going on (held in this process, as another process would hold it)."""
    from featurecircuits.checkpoint import RunDir

    HOLDERS.append(RunDir(t / "earlier.json.run", {"command": "discover"}))


def _dictionary_set(t: Path, *, leave_out: str = "", loop: bool = False) -> None:
    """The organism's dictionaries linked into {t}/dl, one submodule left out or a symlink loop in its place."""
    from featurecircuits.paths import DICTIONARY_ROOT

    (t / "dl").mkdir()
    for folder in sorted((DICTIONARY_ROOT / "organism").iterdir()):
        if folder.is_dir() and folder.name != leave_out:
            (t / "dl" / folder.name).symlink_to(folder)
    if loop:
        (t / "dl" / leave_out).symlink_to(t / "dl" / leave_out)


def _saelens(t: Path, factor: str) -> None:
    """A SAELens folder whose cfg.json gives a norm_scaling_factor (the weights are never read)."""
    folder = t / "sae" / "blocks.0.hook_resid_post"
    folder.mkdir(parents=True)
    (folder / "sae_weights.safetensors").write_bytes(b"never read")
    (folder / "cfg.json").write_text('{"architecture": "standard", "d_in": 128, "d_sae": 64, "normalize_activations": '
                                     '"expected_average_only_in", "norm_scaling_factor": ' + factor +
                                     ', "metadata": {"hook_name": "blocks.0.hook_resid_post"}}')


LONG = " ".join(["the"] * 130)
T = ["--task", "{t}/t.jsonl"]
C = ["--circuit", "{t}/c.json"]

SECOND_PASS = [
    # -------------------------------------------------------------------------------- run folders
    ("run", "interrupted-run-without-resume-or-restart", {"*": _run_folder}, D + ["--task", "{t}/good.jsonl"], 2,
     ["earlier.json.run holds an interrupted run", "a discover run (2 checkpoints", "--resume", "--restart"]),
    ("run", "curve-run-folder-given-to-discover", {"*": lambda t: _run_folder(t, "runs", "curve")},
     D + ["--task", "{t}/good.jsonl", "--run-dir", "{t}/runs"], 2,
     ["runs holds an interrupted run, a curve run", "--resume", "--restart"]),
    ("run", "curve-run-folder-resumed-by-discover", {"*": lambda t: _run_folder(t, "runs", "curve")},
     D + ["--task", "{t}/good.jsonl", "--run-dir", "{t}/runs", "--resume"], 2,
     ["runs holds a curve run", "not a discover run", "--restart"]),
    ("run", "run-folder-in-use", {"*": _held}, D + ["--task", "{t}/good.jsonl", "--restart"], 2,
     ["earlier.json.run is in use by process", "featurecircuits discover", "another folder"]),
    ("run", "run-folder-in-use-resume", {"*": _held}, D + ["--task", "{t}/good.jsonl", "--resume"], 2,
     ["earlier.json.run is in use by process"]),
    ("run", "curve-run-folder-in-use", {"*": _held},
     ["curve", "--task", "ioi", "--out", "{t}/c.json", "--run-dir", "{t}/earlier.json.run"], 2,
     ["earlier.json.run is in use by process"]),
    ("run", "checkpoint-swapped", {"*": _tampered("swapped")}, D + ["--task", "{t}/good.jsonl", "--resume"], 2,
     ["checkpoint {t}/earlier.json.run/nodes-1.pt has changed since it was saved", "--restart"]),
    ("run", "checkpoint-sign-flipped", {"*": _tampered("sign-flipped")}, D + ["--task", "{t}/good.jsonl", "--resume"],
     2, ["nodes-1.pt has changed since it was saved"]),
    ("run", "checkpoint-scaled", {"*": _tampered("scaled")}, D + ["--task", "{t}/good.jsonl", "--resume"], 2,
     ["nodes-1.pt has changed since it was saved"]),
    ("run", "checkpoint-truncated", {"*": _tampered("truncated")}, D + ["--task", "{t}/good.jsonl", "--resume"], 2,
     ["nodes-1.pt has changed since it was saved", "truncated"]),
    ("run", "checkpoint-empty", {"*": _tampered("empty")}, D + ["--task", "{t}/good.jsonl", "--resume"], 2,
     ["nodes-1.pt has changed since it was saved (0 bytes"]),
    ("run", "checkpoint-missing", {"*": lambda t: (_run_folder(t) / "nodes-1.pt").unlink()},
     D + ["--task", "{t}/good.jsonl", "--resume"], 2, ["nodes-1.pt is listed in", "missing"]),
    ("run", "run-folder-of-an-older-version", {"*": _old_run_folder}, D + ["--task", "{t}/good.jsonl", "--resume"],
     2, ["older featurecircuits", "--restart"]),
    ("run", "resume-and-restart", {}, D + ["--task", "{t}/good.jsonl", "--resume", "--restart"], 2,
     ["--restart", "not allowed with argument --resume"]),
    ("run", "restart-a-folder-that-is-not-a-run-folder", {}, D + ["--task", "ioi", "--run-dir", "{t}/full",
                                                                 "--restart"], 2,
     ["full", "not a featurecircuits run folder"]),
    # ---------------------------------------------------------------------------- dictionaries
    ("dictionaries", "symlink-loop-in-place-of-a-folder", {"*": lambda t: _dictionary_set(t, leave_out="mlp_3",
                                                                                           loop=True)},
     D + ["--task", "{t}/good.jsonl", "--dictionaries", "{t}/dl"], 2,
     ["{t}/dl/mlp_3", "dictionary folder of mlp_3", "symlink", "loop"]),
    ("dictionaries", "norm-scaling-factor-nan", {"*": lambda t: _saelens(t, "NaN")},
     D + ["--task", "{t}/good.jsonl", "--dictionaries", "saelens:{t}/sae"], 2,
     ["blocks.0.hook_resid_post/cfg.json", "norm_scaling_factor is nan", "finite number > 0"]),
    ("dictionaries", "norm-scaling-factor-zero", {"*": lambda t: _saelens(t, "0")},
     D + ["--task", "{t}/good.jsonl", "--dictionaries", "saelens:{t}/sae"], 2,
     ["cfg.json", "norm_scaling_factor is 0"]),
    ("dictionaries", "spec-without-a-target", {}, D + ["--task", "{t}/good.jsonl", "--dictionaries", "saelens:"], 2,
     ["--dictionaries 'saelens:'", "names no folder or release"]),
    # ----------------------------------------------------------------------------- degenerate tasks
    ("task", "answers-one-token", {"t.jsonl": _json({**GOOD[0], "clean_answer": "is", "patch_answer": " is"})},
     D + T, 2,
     ["t.jsonl example 1", "clean_answer 'is' and patch_answer ' is'", "same token"]),
    ("task", "prompts-equal-after-tokenization", {"t.jsonl": _json({**GOOD[0], "patch_prefix": GOOD[0][
        "clean_prefix"].replace(" that", "  that")})}, D + T, 2, ["t.jsonl example 1", "are the same tokens"]),
    ("task", "prompts-longer-than-the-context", {"t.jsonl": _json({**GOOD[0], "clean_prefix": "The athlete " + LONG,
                                                                   "patch_prefix": "The athletes " + LONG})},
     D + T, 2, ["t.jsonl example 1", "132 tokens", "context of 128 tokens"]),
    ("task", "jsonl-split-on-newlines-only", {"t.jsonl": _json({**GOOD[0], "clean_prefix": "The\u2028athlete"})[:-1]
                                              .replace("\\u2028", "\u2028") + "}\n{oops\n"},
     D + T, 2, ["t.jsonl:2", "not valid JSON"]),
    ("task", "a-folder-named-like-a-task-does-not-shadow-it", {"ioi/x": "", "@cwd": True},
     ["curve", "--task", "ioi", "--start-layer", "6", "--out", "{t}/earlier.json"], 2,
     ["--task ioi is the generated task", "give ./ioi to read it", "--start-layer 6"]),
    # ---------------------------------------------------------------------------------------- numbers
    ("option", "curve-relative-thresholds-above-1", {}, ["curve", "--task", "ioi", "--thresholds", "2,5", "--out",
                                                         "{t}/earlier.json"], 2,
     ["--thresholds 2,5", "above 1 no node is kept", "--absolute"]),
    ("option", "curve-one-threshold", {}, ["curve", "--task", "ioi", "--thresholds", "0", "--out",
                                           "{t}/earlier.json"], 2, ["--thresholds 0", "at least two different"]),
    ("option", "curve-one-absolute-threshold", {}, ["curve", "--task", "ioi", "--thresholds", "1e308", "--absolute",
                                                    "--out", "{t}/earlier.json"], 2,
     ["--thresholds 1e+308", "at least two different"]),
    ("option", "curve-repeated-threshold", {}, ["curve", "--task", "ioi", "--thresholds", "0.1,0.1", "--out",
                                                "{t}/earlier.json"], 2, ["at least two different"]),
    ("circuit", "infinity-in-metadata", {"c.json": _json(_circuit(**{"metadata.metric_base": float("inf")}))}, E + C,
     2, ["c.json", "$.metadata.metric_base", "finite", "inf"]),
    ("circuit", "nan-in-node-attribute", {"c.json": _json(_circuit(**{"nodes.1.activation": float("nan")}))},
     P + C, 2, ["c.json", "$.nodes[1].activation", "finite"]),
    ("circuit", "export-infinity-in-metadata", {"c.json": _json(_circuit(**{"metadata.x": float("-inf")}))},
     ["export", "--circuit", "{t}/c.json", "--out", "{t}/exp"], 2, ["c.json", "$.metadata.x", "finite"]),
    ("circuit", "duplicate-edge", {"c.json": _json(_circuit(edges=[
        {"source": "resid_5/f3", "target": "logit", "weight": 0.5},
        {"source": "resid_5/f3", "target": "logit", "weight": -2.0}]))}, E + C, 2,
     ["c.json", "$.edges[1]", "listed twice", "$.edges[0]"]),
    ("circuit", "self-loop-edge", {"c.json": _json(_circuit(**{"edges.1.target": "mlp_2/err"}))}, P + C, 2,
     ["c.json", "$.edges[1]", "'mlp_2/err' to itself"]),
    # ------------------------------------------------------------------------------ placement options
    ("option", "device-unknown", {}, D + ["--task", "ioi", "--device", "banana"], 2,
     ["--device 'banana' is not a device", "cuda:N"]),
    ("option", "device-meta", {}, E + ["--circuit", "{t}/circuit.json", "--device", "meta"], 2,
     ["--device meta", "holds no weights"]),
    ("option", "device-cuda-without-cuda", {}, D + ["--task", "ioi", "--device", "cuda"], 2,
     ["--device cuda", "no CUDA device", "--device cpu"]),
    ("option", "device-and-device-map", {}, D + ["--task", "ioi", "--device", "cpu", "--device-map", "auto"], 2,
     ["--device or --device-map, not both"]),
    ("option", "offload-folder-without-device-map", {}, D + ["--task", "ioi", "--offload-folder", "{t}/off"], 2,
     ["--offload-folder", "without --device-map"]),
    ("option", "offload-folder-is-a-file", {}, ["curve", "--task", "ioi", "--device-map", "auto", "--offload-folder",
                                                "{t}/good.jsonl", "--out", "{t}/earlier.json"], 2,
     ["--offload-folder {t}/good.jsonl is a file"]),
    ("option", "offload-folder-under-a-file", {}, D + ["--task", "ioi", "--device-map", "auto", "--offload-folder",
                                                    "{t}/good.jsonl/off"], 2,
     ["--offload-folder {t}/good.jsonl/off: {t}/good.jsonl is a file, not a folder"]),
    ("output", "compare-out-under-a-file", {}, ["compare", "--out", "{t}/good.jsonl/cmp"], 2,
     ["--out {t}/good.jsonl/cmp: {t}/good.jsonl is a file, not a folder"]),
    ("option", "device-map-unknown-strategy", {}, D + ["--task", "ioi", "--device-map", "everywhere"], 2,
     ["--device-map 'everywhere'", "auto"]),
    ("option", "device-map-disk-without-offload-folder", {},
     D + ["--task", "ioi", "--device-map", '{"gpt_neox": "disk"}'], 2, ["'disk'", "--offload-folder"]),
]
CASES += SECOND_PASS


def _snapshot(*roots: Path) -> dict[str, str]:
    out = {}
    for root in roots:
        for dirpath, _, files in os.walk(root):
            for f in files:
                p = Path(dirpath) / f
                if p.is_file():
                    out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


SHIPPED = [REPO / "tasks", REPO / "dictionaries" / "organism", REPO / "models" / "organism"]


def _stats(*roots: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime) of every file under ``roots``: cheap enough to take around every case."""
    return {str(Path(d) / f): (os.stat(Path(d) / f).st_size, os.stat(Path(d) / f).st_mtime_ns)
            for root in roots for d, _, files in os.walk(root) for f in files}


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out + captured.err


@pytest.mark.parametrize("kind,name,files,argv,code,words", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_bad_input(kind, name, files, argv, code, words, tmp_path, capsys, monkeypatch):
    if name == "device-cuda-without-cuda" and _has_cuda():
        pytest.skip("this machine has CUDA")
    _setup(tmp_path)
    for rel, content in files.items():
        if rel == "*":
            content(tmp_path)
            continue
        if rel == "@cwd":
            monkeypatch.chdir(tmp_path)
            continue
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    before, shipped = _snapshot(tmp_path), _stats(*SHIPPED)
    listing = sorted(os.listdir(tmp_path))
    argv = [a.replace("{t}", str(tmp_path)) for a in argv]
    try:
        got, text = run_cli(argv, capsys)
        assert got == code, text
        assert "Traceback" not in text, text
        for w in words:
            assert w.replace("{t}", str(tmp_path)) in text, (w, text)
        assert _snapshot(tmp_path) == before, "an input or earlier output changed"
        assert _stats(*SHIPPED) == shipped, "a shipped file (tasks/, the organism or its SAEs) changed"
        assert sorted(os.listdir(tmp_path)) == listing, "the failed run left files behind"
        assert sum("error:" in ln for ln in text.splitlines()) == 1, text  # one line (argparse adds its usage)
    finally:
        while HOLDERS:
            HOLDERS.pop().close()


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _commands(parser: argparse.ArgumentParser, path=()) -> list[tuple[str, ...]]:
    """Every leaf command of the parser (``("discover",)``, ``("tasks", "make")``, …)."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return [path]
    return [c for name, sub in subs[0].choices.items() for c in _commands(sub, (*path, name))]


def test_every_command_of_the_parser_has_bad_input_cases():
    """The catalogue grows with the command line: a command added without a case here fails this test."""
    covered = {tuple(c[3][:2]) for c in CASES} | {tuple(c[3][:1]) for c in CASES}
    missing = [" ".join(c) for c in _commands(build_parser()) if c not in covered]
    assert not missing, f"commands without a bad-input case: {missing}"


# ------------------------------------------------------------------------------------------------------------------
# Warnings people see (issue 26): the run goes on (exit 0), and the warning, at the default log level, names what
# is wrong. A full set of trained dictionaries stays quiet.

def _random_set(t: Path) -> None:
    """Random-weight SAEs of the organism's shapes on every submodule, in the dictionary_learning layout."""
    import torch

    from featurecircuits.dictionaries import SAE, save_dictionary
    from featurecircuits.paths import DICTIONARY_ROOT

    g = torch.Generator().manual_seed(0)
    for folder in sorted((DICTIONARY_ROOT / "organism").iterdir()):
        if folder.is_dir():
            w = torch.randn(256, 128, generator=g) / 128 ** 0.5
            save_dictionary(SAE(w, torch.zeros(256), w.t().contiguous(), torch.zeros(128),
                                b_pre=torch.zeros(128)), t / "rnd" / folder.name)


def _saelens_set(t: Path, organism) -> None:
    """The organism's dictionaries as SAELens folders, mlp_3's left out."""
    from featurecircuits.dictionaries import saelens

    model, dicts = organism
    saelens.save_set({k: v for k, v in dicts.items() if k != "mlp_3"}, model, t / "sl")


WARNINGS = [
    ("partial-set-dictionary-learning-layout", lambda t, o: _dictionary_set(t, leave_out="mlp_3"), "{t}/dl",
     ["dictionaries on 18 of 19 submodules", "without (no nodes): mlp_3"]),
    ("partial-set-saelens-layout", _saelens_set, "saelens:{t}/sl",
     ["dictionaries on 18 of 19 submodules", "without (no nodes): mlp_3"]),
    ("random-weight-dictionaries", lambda t, o: _random_set(t), "{t}/rnd",
     ["explain less than 50% of their submodule's variance on the first prompts of sva-rc: embed ", " mlp_3 ",
      " resid_5 "]),
    ("a-full-trained-set-is-quiet", lambda t, o: None, "organism", []),
]


@pytest.mark.organism
@pytest.mark.parametrize("name,setup,spec,words", WARNINGS, ids=[w[0] for w in WARNINGS])
def test_warnings_people_see(name, setup, spec, words, tmp_path, capsys, caplog, organism):
    """(The command line prints warnings through the root logger; under pytest its records are in caplog.)"""
    _setup(tmp_path)
    setup(tmp_path, organism)
    spec = spec.replace("{t}", str(tmp_path))
    with caplog.at_level("WARNING"):
        code, text = run_cli(["discover", "--task", "sva-rc", "--n-examples", "2", "--top-k", "0", "--dictionaries",
                              spec, "--out", f"{tmp_path}/c.json"], capsys)
    text += "\n".join(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert code == 0 and "Traceback" not in text, text
    for w in words:
        assert w in text, (w, text)
    for marker in ("dictionaries on", "explain less than"):  # said once where expected, else not at all
        assert text.count(marker) == int(any(marker in w for w in words)), (marker, text)


# ------------------------------------------------------------------------------------------------------------------
# A full disk or a file-size limit: the error names the file, and nothing half-made is left (issue 26).

def _full_disk(monkeypatch, under: Path) -> None:
    """Every atomic write under ``under`` goes to /dev/full, so the kernel answers ENOSPC."""
    import tempfile

    real = tempfile.mkstemp

    def mkstemp(*args, **kwargs):
        fd, path = real(*args, **kwargs)
        if not str(path).startswith(str(under)):
            return fd, path
        os.close(fd)
        return os.open("/dev/full", os.O_WRONLY), path

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)


def test_a_full_disk_names_the_file_and_leaves_nothing(tmp_path, capsys, monkeypatch):
    (tmp_path / "old.jsonl").write_text("old\n")
    _full_disk(monkeypatch, tmp_path)
    code, text = run_cli(["tasks", "make", "ioi", "--n", "3", "--out", f"{tmp_path}/old.jsonl"], capsys)
    assert code == 2 and "Traceback" not in text, text
    assert f"error: cannot write {tmp_path}/old.jsonl: No space left on device (free some space" in text, text
    assert os.listdir(tmp_path) == ["old.jsonl"] and (tmp_path / "old.jsonl").read_text() == "old\n"


def test_a_file_size_limit_names_the_file(tmp_path, capsys):
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (512, hard))
    try:
        code, text = run_cli(["tasks", "make", "ioi", "--n", "20", "--out", f"{tmp_path}/t.jsonl"], capsys)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert code == 2 and "Traceback" not in text, text
    assert f"error: cannot write {tmp_path}/t.jsonl: File too large (the file exceeds the file-size limit" in text
    assert os.listdir(tmp_path) == []


def test_a_full_disk_leaves_no_export_folder(tmp_path, capsys, monkeypatch):
    import featurecircuits.export as export
    from featurecircuits.fileio import atomic_write_text

    _setup(tmp_path)

    def export_circuit(circuit, out, **options):  # what the exporter does first: its folder, then its files
        Path(out).mkdir(parents=True)
        atomic_write_text(Path(out) / "graph-metadata.json", "{}")

    monkeypatch.setattr(export, "export_circuit", export_circuit)
    _full_disk(monkeypatch, tmp_path)
    listing = sorted(os.listdir(tmp_path))
    code, text = run_cli(["export", "--circuit", f"{tmp_path}/circuit.json", "--out", f"{tmp_path}/exp/new"], capsys)
    assert code == 2 and f"cannot write {tmp_path}/exp/new/graph-metadata.json: No space left on device" in text
    assert sorted(os.listdir(tmp_path)) == listing  # exp/ and exp/new/ made by the failed run are gone


@pytest.mark.organism
def test_a_full_disk_leaves_no_run_folder(tmp_path, capsys, monkeypatch):
    _setup(tmp_path)
    _full_disk(monkeypatch, tmp_path)
    listing = sorted(os.listdir(tmp_path))
    code, text = run_cli(["discover", "--task", "sva-rc", "--n-examples", "2", "--top-k", "3", "--out",
                          f"{tmp_path}/c.json"], capsys)
    assert code == 2 and "Traceback" not in text, text
    assert f"cannot write {tmp_path}/c.json.run/run.json: No space left on device" in text, text
    assert sorted(os.listdir(tmp_path)) == listing


def test_jsonl_lines_end_at_newlines_only(tmp_path):
    """U+2028 (and U+0085, U+2029, form feed…) inside a JSON string is text, not a line break."""
    from featurecircuits.tasks import load_task

    odd = "The athlete\u2028that\u0085the\x0cmanagers\u2029like"
    (tmp_path / "t.jsonl").write_text(json.dumps({**GOOD[0], "clean_prefix": odd}, ensure_ascii=False) + "\r\n" + LINE)
    task = load_task(tmp_path / "t.jsonl")
    assert len(task) == 2 and task.examples[0]["clean_prefix"] == odd
