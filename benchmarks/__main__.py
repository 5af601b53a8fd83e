"""`python -m benchmarks`: median wall time and peak RSS of AP, AtP, RelP and IG, as ratios to a plain
fwd + fwd + bwd of the unspliced model measured in the same run."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import threading
import time

import torch

import featurecircuits as fc

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


def run_setting(name, model, dicts, batch, methods, repeats, rows):
    base, base_rss = timeit(lambda: plain_fwd_fwd_bwd(model, batch), repeats)
    rows.append({"setting": name, "level": "-", "method": "plain fwd+fwd+bwd", "seconds": base, "ratio": 1.0,
                 "peak_rss_gib": base_rss / 2**30})
    for level in ("component", "feature"):
        for method in methods:
            if level == "feature" and method == "ap":
                continue  # one forward per feature: see the component level for AP's cost
            kw = {"dictionaries": dicts} if level == "feature" else {}
            secs, rss = timeit(lambda m=method, kw=kw: fc.attribute(model, batch, method=m, **kw),
                               1 if method in ("ap", "ig") else repeats)
            rows.append({"setting": name, "level": level, "method": method, "seconds": secs,
                         "ratio": secs / base, "peak_rss_gib": rss / 2**30})
            print(_fmt(rows[-1]), flush=True)


def top_nodes(res, k: int):
    """The k nodes with the largest |score| summed over examples and positions (as ``discover`` ranks)."""
    from featurecircuits.circuit import _node_scores

    flat = []
    for (sub, part), s in _node_scores(res, "sum").items():
        if s.ndim:
            flat += [((sub, part, int(i), None), float(v)) for i, v in enumerate(s) if v != 0]
        else:
            flat.append(((sub, part, None, None), float(s)))
    flat.sort(key=lambda x: -abs(x[1]))
    return [n for n, _ in flat[:k]]


def run_edges(name, model, dicts, batch, rows, sizes=(100, 1000)):
    """Edge scoring among the top-k RelP nodes, against RelP node scoring measured in the same run."""
    from featurecircuits.edges import score_edges
    from featurecircuits.splice import Splice

    splice = Splice(model, dicts)
    node_secs, _ = timeit(lambda: fc.attribute(model, batch, method="relp", dictionaries=dicts), 3)
    res = fc.attribute(model, batch, method="relp", dictionaries=dicts)
    for k in sizes:
        nodes = top_nodes(res, k)
        secs, rss = timeit(lambda n=nodes: score_edges(model, splice, batch, res, n), 1)
        rows.append({"setting": name, "level": "feature", "method": f"edges, {len(nodes)} nodes",
                     "seconds": secs, "ratio": secs / node_secs, "peak_rss_gib": rss / 2**30})
        print(_fmt(rows[-1]) + "   (ratio to RelP node scoring)", flush=True)


def run_demo(rows):
    import subprocess
    import sys

    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "featurecircuits", "demo", "--out", "out/bench-demo"], check=True,
                   capture_output=True)
    rows.append({"setting": "organism", "level": "-", "method": "make demo (end to end)",
                 "seconds": time.perf_counter() - start, "ratio": float("nan"), "peak_rss_gib": float("nan")})
    print(_fmt(rows[-1]), flush=True)


COLUMNS = ("setting", "level", "method", "seconds", "ratio", "peak_rss_gib")


def _fmt(row) -> str:
    return "  ".join(f"{row[c]:.3f}".rjust(10) if isinstance(row[c], float) else str(row[c]).ljust(18)
                     for c in COLUMNS)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--settings", default="organism,pythia70m")
    parser.add_argument("--methods", default="atp,relp,ig,ap")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--pairs", type=int, default=10)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--width", type=int, default=32768, help="dictionary width of the Pythia-70M setting")
    parser.add_argument("--no-edges", action="store_true", help="skip edge scoring")
    parser.add_argument("--demo", action="store_true", help="also time the full demo")
    parser.add_argument("--out", default="benchmarks/results.json")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    rows: list[dict] = []
    methods = args.methods.split(",")
    print("  ".join(c.ljust(18) if i < 3 else c.rjust(10) for i, c in enumerate(COLUMNS)))
    for name in args.settings.split(","):
        if name == "organism":
            model, dicts, batch = settings.organism(args.pairs)
        elif name == "pythia70m":
            model, dicts, batch = settings.pythia70m_shaped(args.width, args.pairs, args.tokens)
        else:
            raise SystemExit(f"unknown setting {name!r}; valid: organism, pythia70m")
        run_setting(name, model, dicts, batch, methods, args.repeats, rows)
        if not args.no_edges:
            run_edges(name, model, dicts, batch, rows)
        del model, dicts
    if args.demo:
        run_demo(rows)
    fc.fileio.atomic_write_text(args.out, json.dumps(rows, indent=1))
    print(f"\n{len(rows)} rows written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
