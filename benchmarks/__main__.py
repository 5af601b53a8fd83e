"""`python -m benchmarks`: median wall time and peak RSS of AP, AtP, RelP and IG, as ratios to a plain
fwd + fwd + bwd of the unspliced model measured in the same run, and, for feature-level rows, to the
*floor*: that plain pass plus one dense encode of every dictionary on both runs' activations, the work
any method that reads every feature cannot avoid.

The results file (``--out``, default ``benchmarks/results.json``) is one JSON object:
``{"rows": [row, ...], "settings": {name: {"mean_l0": {submodule: features per token}, ...}}}``. Each
row has ``setting, level, method, seconds, ratio`` (to the plain pass; edge rows: to RelP node scoring),
``ratio_floor`` (feature-level rows and the floor itself; null elsewhere) and ``peak_rss_gib``. Each
setting records the mean L0 of its dictionaries per submodule, measured on the benchmark batch (clean
and patch runs), with the batch shape, the memory planner's estimate for AtP and RelP
(``planned_peak_gib``, which excludes the runtime's own resident memory) and, for the Pythia-70M
setting, the calibration target.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import threading
import time

import torch

import featurecircuits as fc
from featurecircuits.plan import plan

from . import settings


class PeakRSS:
    """Peak resident set size while the block runs, sampled from /proc every 2 ms."""

    def __enter__(self):
        self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())

    def _sample(self):
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self._rss())

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def plain_fwd_fwd_bwd(model: fc.Model, batch: fc.Batch) -> None:
    """The reference cost: a patch forward, a clean forward, a backward to the embeddings."""
    with torch.no_grad():
        model.hf(input_ids=batch.patch)
    emb = model.hf.get_input_embeddings()(batch.clean).detach().requires_grad_(True)
    m = fc.logit_diff(model.hf(inputs_embeds=emb).logits, batch)
    torch.autograd.grad(m.sum(), emb)


def floor_fwd_fwd_bwd_encode(model: fc.Model, dicts: dict, batch: fc.Batch) -> None:
    """The floor: the plain pass, plus one dense encode of every dictionary on each run's activations
    (encoded as they are produced and dropped, so the floor holds no feature tensor)."""

    def encode(sub, x):
        with torch.no_grad():
            dicts[sub.name].encode(x)

    with settings.recording(model, model.select(list(dicts)), encode):
        plain_fwd_fwd_bwd(model, batch)


def timeit(fn, repeats: int) -> tuple[float, int]:
    fn()  # warm-up
    times, peak = [], 0
    for _ in range(repeats):
        with PeakRSS() as rss:
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        peak = max(peak, rss.peak)
    return statistics.median(times), peak


def _row(name, level, method, secs, rss, ratio, ratio_floor=None) -> dict:
    return {"setting": name, "level": level, "method": method, "seconds": secs, "ratio": ratio,
            "ratio_floor": ratio_floor, "peak_rss_gib": rss / 2**30}


def run_setting(name, model, dicts, batch, methods, repeats, rows, levels=("component", "feature")):
    base, base_rss = timeit(lambda: plain_fwd_fwd_bwd(model, batch), repeats)
    rows.append(_row(name, "-", "plain fwd+fwd+bwd", base, base_rss, 1.0))
    print(_fmt(rows[-1]), flush=True)
    floor = None
    if "feature" in levels:
        floor, floor_rss = timeit(lambda: floor_fwd_fwd_bwd_encode(model, dicts, batch), repeats)
        rows.append(_row(name, "-", "floor: plain + dense encodes", floor, floor_rss, floor / base, 1.0))
        print(_fmt(rows[-1]), flush=True)
    for level in levels:
        for method in methods:
            if level == "feature" and method == "ap":
                continue  # one forward per feature: see the component level for AP's cost
            kw = {"dictionaries": dicts} if level == "feature" else {}
            variants = [(method, kw)]
            if level == "feature" and method in ("atp", "relp"):  # what discover runs, and the dense reference
                variants = [(method, {**kw, "sparse": True}), (f"{method} (dense path)", kw)]
            for label, options in variants:
                secs, rss = timeit(lambda m=method, o=options: fc.attribute(model, batch, method=m, **o),
                                   1 if method in ("ap", "ig") else repeats)
                rows.append(_row(name, level, label, secs, rss, secs / base,
                                 secs / floor if level == "feature" else None))
                print(_fmt(rows[-1]), flush=True)


def top_nodes(res, k: int):
    """The k nodes with the largest |score| summed over examples and positions (as ``discover`` ranks)."""
    from featurecircuits.scoring import top_nodes as top

    return top(res, k)


def run_edges(name, model, dicts, batch, rows, sizes=(100, 1000)):
    """Edge scoring among the top-k RelP nodes, against RelP node scoring measured in the same run."""
    from featurecircuits.edges import score_edges
    from featurecircuits.splice import Splice

    splice = Splice(model, dicts)
    node_secs, _ = timeit(lambda: fc.attribute(model, batch, method="relp", dictionaries=dicts, sparse=True), 3)
    res = fc.attribute(model, batch, method="relp", dictionaries=dicts, sparse=True)
    for k in sizes:
        nodes = top_nodes(res, k)
        secs, rss = timeit(lambda n=nodes: score_edges(model, splice, batch, res, n), 1)
        rows.append(_row(name, "feature", f"edges, {len(nodes)} nodes", secs, rss, secs / node_secs))
        print(_fmt(rows[-1]) + "   (ratio to RelP node scoring)", flush=True)


def run_demo(rows):
    import subprocess
    import sys

    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "featurecircuits", "demo", "--out", "out/bench-demo"], check=True,
                   capture_output=True)
    rows.append(_row("organism", "-", "make demo (end to end)", time.perf_counter() - start, float("nan"),
                     float("nan")))
    print(_fmt(rows[-1]), flush=True)


COLUMNS = ("setting", "level", "method", "seconds", "ratio", "ratio_floor", "peak_rss_gib")


def _fmt(row) -> str:
    def cell(c):
        v = row[c]
        if isinstance(v, float):
            return f"{v:.3f}".rjust(11)
        if COLUMNS.index(c) >= 3:
            return ("-" if v is None else str(v)).rjust(11)
        return str(v).ljust(28 if c == "method" else 10)

    return "  ".join(cell(c) for c in COLUMNS)


def _header() -> str:
    return "  ".join(c.ljust(28 if c == "method" else 10) if i < 3 else c.rjust(11) for i, c in enumerate(COLUMNS))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", default="organism,pythia70m")
    parser.add_argument("--methods", default="atp,relp,ig,ap")
    parser.add_argument("--levels", default="component,feature")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--pairs", type=int, default=10)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--width", type=int, default=32768, help="dictionary width of the Pythia-70M setting")
    parser.add_argument("--target-l0", type=float, default=settings.TARGET_L0,
                        help="features per token the Pythia-70M setting's random dictionaries are calibrated "
                             "to (0: uncalibrated, one encoder bias of -0.02)")
    parser.add_argument("--no-edges", action="store_true", help="skip edge scoring")
    parser.add_argument("--demo", action="store_true", help="also time the full demo")
    parser.add_argument("--out", default="benchmarks/results.json")
    args = parser.parse_args(argv)
    methods, levels, names = args.methods.split(","), args.levels.split(","), args.settings.split(",")
    for what, values, valid in (("method", methods, ["ap", "atp", "relp", "ig"]),
                                ("level", levels, ["component", "feature"]),
                                ("setting", names, ["organism", "pythia70m"])):
        bad = [v for v in values if v not in valid]
        if bad:
            parser.error(f"unknown {what} {', '.join(bad)}; valid: {', '.join(valid)}")
    if args.repeats < 1 or args.pairs < 1 or args.tokens < 1:
        parser.error("--repeats, --pairs and --tokens must be positive")
    torch.manual_seed(0)
    rows: list[dict] = []
    recorded: dict[str, dict] = {}
    print(_header())
    for name in names:
        if name == "organism":
            model, dicts, batch = settings.organism(args.pairs)
            recorded[name] = {"dictionaries": "organism (trained)"}
        else:
            target = args.target_l0 or None
            model, dicts, batch = settings.pythia70m_shaped(args.width, args.pairs, args.tokens, target_l0=target)
            recorded[name] = {"dictionaries": f"random AutoEncoder, width {args.width}",
                              "target_l0": target}
        l0 = settings.mean_l0(model, dicts, batch)
        recorded[name].update(pairs=len(batch), tokens=batch.n_tokens, mean_l0=l0)
        widths = {n: int(getattr(ae, "width", None) or ae.dict_size) for n, ae in dicts.items()}
        recorded[name]["planned_peak_gib"] = {  # the planner's estimate (excludes the runtime itself)
            m: plan(model, widths, len(batch), batch.n_tokens, method=m).gib for m in ("atp", "relp")}
        print(f"# {name}: mean L0 per token " + ", ".join(f"{k} {v:.1f}" for k, v in l0.items()), flush=True)
        run_setting(name, model, dicts, batch, methods, args.repeats, rows, levels)
        if not args.no_edges and "feature" in levels:
            run_edges(name, model, dicts, batch, rows)
        del model, dicts
    if args.demo:
        run_demo(rows)
    fc.fileio.atomic_write_text(args.out, json.dumps({"rows": rows, "settings": recorded}, indent=1))
    print(f"\n{len(rows)} rows written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
