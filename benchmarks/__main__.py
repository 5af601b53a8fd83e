"""`python -m benchmarks`: median wall time and peak RSS of AP, AtP, RelP and IG, as ratios to a plain
fwd + fwd + bwd of the unspliced model measured in the same run, and, for feature-level rows, to the
*floor*: that plain pass plus one dense encode of every dictionary on both runs' activations, the work
any method that reads every feature cannot avoid.

Each row (plain, floor, every method) runs in its own fresh process over the setting built once
(:mod:`benchmarks.measure` says why: measured in one process, a row's peak RSS included what the rows
before it left resident). Edge rows run in this process after the others.

``--tokens 16,64,256`` runs the Pythia-70M setting at each prompt length (its dictionaries calibrated
on prompts of that length, as for one length) and adds two columns: time and peak RSS above the plain pass, each
divided by tokens × mean L0 and by the same figure at the shortest prompt (1.0: proportional to
tokens × L0). Leave the dense path out there (``--paths sparse``): it holds (B, T, width) tensors.

The results file (``--out``, default ``benchmarks/results.json``) is one JSON object:
``{"rows": [row, ...], "settings": {name: {"mean_l0": {submodule: features per token}, ...}}}``. Each
row has ``setting, level, method, tokens, seconds, ratio`` (to the plain pass; edge rows: to RelP node
scoring), ``ratio_floor`` (feature-level rows and the floor itself; null elsewhere), ``peak_rss_gib``,
``excess_gib`` (above the plain pass of the same prompt length) and ``time_per_tl0``/``excess_per_tl0``
(null unless several token counts ran). Each setting records the mean L0 of its dictionaries per
submodule, measured on the benchmark batch (clean and patch runs), with the batch shape, the memory
planner's estimate for AtP and RelP (``planned_peak_gib``, which excludes the runtime's own resident
memory) and, for the Pythia-70M setting, the calibration target; those of the shortest prompt at the top
level, every prompt length's under ``by_tokens``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile

import featurecircuits as fc
from featurecircuits.plan import plan

from . import settings
from .measure import PeakRSS, in_fresh_process, save_setting, timeit

__all__ = ["PeakRSS", "main"]


def _row(name, level, method, tokens, secs, rss, ratio, ratio_floor=None) -> dict:
    return {"setting": name, "level": level, "method": method, "tokens": tokens, "seconds": secs, "ratio": ratio,
            "ratio_floor": ratio_floor, "peak_rss_gib": rss / 2**30, "time_per_tl0": None, "excess_per_tl0": None}


def _jobs(methods, levels, paths):
    """(level, label, job) for every method row, in order: the sparse path (what discover runs) and the
    dense reference for feature-level AtP and RelP."""
    for level in levels:
        for method in methods:
            if level == "feature" and method == "ap":
                continue  # one forward per feature: see the component level for AP's cost
            variants = [(method, False)]
            if level == "feature" and method in ("atp", "relp"):
                variants = [(label, sparse) for label, sparse in ((method, True), (f"{method} (dense path)", False))
                            if ("sparse" if sparse else "dense") in paths]
            for label, sparse in variants:
                yield level, label, {"kind": "attribute", "method": method, "level": level, "sparse": sparse}


def run_tokens(name, path, tokens, methods, repeats, levels, paths, rows) -> None:
    """The rows of one token count, each in a fresh process over the setting saved at ``path``."""
    def measure(level, label, job, reps):
        secs, rss = in_fresh_process(path, {**job, "tokens": tokens, "repeats": reps})
        return level, label, secs, rss

    plain = measure("-", "plain fwd+fwd+bwd", {"kind": "plain"}, repeats)
    done = [plain]
    floor = None
    if "feature" in levels:
        done.append(measure("-", "floor: plain + dense encodes", {"kind": "floor"}, repeats))
        floor = done[-1][2]
    for level, label, job in _jobs(methods, levels, paths):
        done.append(measure(level, label, job, 1 if job["method"] in ("ap", "ig") else repeats))
    for level, label, secs, rss in done:
        is_floor = label.startswith("floor")
        ratio_floor = secs / floor if level == "feature" else 1.0 if is_floor else None
        rows.append(_row(name, level, label, tokens, secs, rss, secs / plain[2], ratio_floor))
        rows[-1]["excess_gib"] = (rss - plain[3]) / 2**30
        print(_fmt(rows[-1]), flush=True)


def scale_columns(rows, l0: dict[tuple[str, int], float]) -> None:
    """Fill ``time_per_tl0`` (seconds) and ``excess_per_tl0`` (peak RSS above the plain pass of the same token
    count), each divided by tokens × mean L0 and by the same figure of the row's first token count: 1.0
    where a cost grows as tokens × L0, above 1 where it grows faster."""
    first: dict[tuple, dict] = {}
    for r in rows:
        t, mean = r["tokens"], l0.get((r["setting"], r["tokens"]))
        if mean is None or "excess_gib" not in r:
            continue
        per = {"time": r["seconds"] / (t * mean), "excess": r["excess_gib"] / (t * mean)}
        ref = first.setdefault((r["setting"], r["level"], r["method"]), per)
        r["time_per_tl0"] = per["time"] / ref["time"]
        r["excess_per_tl0"] = per["excess"] / ref["excess"] if ref["excess"] > 0 else None


def top_nodes(res, k: int):
    """The k nodes with the largest |score| summed over examples and positions (as ``discover`` ranks)."""
    from featurecircuits.scoring import top_nodes as top

    return top(res, k)


def run_edges(name, model, dicts, batch, rows, sizes=(100, 1000)):
    """Edge scoring among the top-k RelP nodes, against RelP node scoring measured in the same run (in this
    process, which has run nothing else but the build and the L0 count)."""
    from featurecircuits.edges import score_edges
    from featurecircuits.splice import Splice

    splice = Splice(model, dicts)
    node_secs, _ = timeit(lambda: fc.attribute(model, batch, method="relp", dictionaries=dicts, sparse=True), 3)
    res = fc.attribute(model, batch, method="relp", dictionaries=dicts, sparse=True)
    for k in sizes:
        nodes = top_nodes(res, k)
        secs, rss = timeit(lambda n=nodes: score_edges(model, splice, batch, res, n), 1)
        rows.append(_row(name, "feature", f"edges, {len(nodes)} nodes", batch.n_tokens, secs, rss,
                         secs / node_secs))
        print(_fmt(rows[-1]) + "   (ratio to RelP node scoring)", flush=True)


def run_demo(rows):
    import subprocess
    import sys
    import time

    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "featurecircuits", "demo", "--out", "out/bench-demo"], check=True,
                   capture_output=True)
    rows.append(_row("organism", "-", "make demo (end to end)", None, time.perf_counter() - start, float("nan"),
                     float("nan")))
    print(_fmt(rows[-1]), flush=True)


COLUMNS = ("setting", "level", "method", "tokens", "seconds", "ratio", "ratio_floor", "peak_rss_gib",
           "time_per_tl0", "excess_per_tl0")


def _fmt(row) -> str:
    def cell(c):
        v = row[c]
        if isinstance(v, float):
            return f"{v:.3f}".rjust(14)
        if COLUMNS.index(c) >= 3:
            return ("-" if v is None else str(v)).rjust(14)
        return str(v).ljust(28 if c == "method" else 10)

    return "  ".join(cell(c) for c in COLUMNS)


def _header() -> str:
    return "  ".join(c.ljust(28 if c == "method" else 10) if i < 3 else c.rjust(14) for i, c in enumerate(COLUMNS))


SCALING_NOTE = """\
time_per_tl0 / excess_per_tl0: seconds / peak RSS above the plain pass of the same prompt length, divided by
tokens x mean L0, relative to the shortest prompt (1.0: grows as tokens x L0). What does not grow as
tokens x L0: the dense encodes (tokens x width whatever L0: the floor's cost), the one submodule's dense
(rows x width) feature tensor alive at a time (transient memory, and what the allocator keeps
of it below glibc's 32 MiB mmap ceiling), attention (tokens^2 per prompt; at 256
tokens Pythia-70M's 8 heads hold 2 MiB of pattern per prompt and layer, small beside the encoders'
512 x 32768 multiply-adds per token) and fixed per-call costs (which make the shortest prompt dear per
token, so columns fall below 1). A column above 1 at the longest prompt means one of these dominates."""


def print_scaling(rows) -> None:
    """The rows again with their growth columns, and what grows faster than tokens × L0."""
    print("\n# growth with prompt length\n" + _header())
    for r in rows:
        if r["time_per_tl0"] is not None:
            print(_fmt(r))
    print(SCALING_NOTE)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", default="organism,pythia70m")
    parser.add_argument("--methods", default="atp,relp,ig,ap")
    parser.add_argument("--levels", default="component,feature")
    parser.add_argument("--paths", default="sparse,dense",
                        help="feature-level AtP/RelP paths to run: sparse (as discover runs them), dense (the "
                             "reference; (B, T, width) tensors: leave it out at 64 tokens and more)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--pairs", type=int, default=10)
    parser.add_argument("--tokens", default="16",
                        help="tokens per prompt of the Pythia-70M setting; several (16,64,256) add the columns "
                             "time_per_tl0 and excess_per_tl0")
    parser.add_argument("--width", type=int, default=32768, help="dictionary width of the Pythia-70M setting")
    parser.add_argument("--target-l0", type=float, default=settings.TARGET_L0,
                        help="features per token the Pythia-70M setting's random dictionaries are calibrated "
                             "to (0: uncalibrated, one encoder bias of -0.02)")
    parser.add_argument("--no-edges", action="store_true", help="skip edge scoring")
    parser.add_argument("--demo", action="store_true", help="also time the full demo")
    parser.add_argument("--out", default="benchmarks/results.json")
    return parser


def _arguments(argv):
    parser = _parser()
    args = parser.parse_args(argv)
    args.methods, args.levels, args.settings = args.methods.split(","), args.levels.split(","), args.settings.split(",")
    args.paths = args.paths.split(",")
    try:
        args.tokens = sorted({int(t) for t in args.tokens.split(",")})
    except ValueError:
        parser.error("--tokens takes comma-separated integers")
    for what, values, valid in (("method", args.methods, ["ap", "atp", "relp", "ig"]),
                                ("level", args.levels, ["component", "feature"]),
                                ("setting", args.settings, ["organism", "pythia70m"]),
                                ("path", args.paths, ["sparse", "dense"])):
        bad = [v for v in values if v not in valid]
        if bad:
            parser.error(f"unknown {what} {', '.join(bad)}; valid: {', '.join(valid)}")
    if args.repeats < 1 or args.pairs < 1 or min(args.tokens) < 1:
        parser.error("--repeats, --pairs and --tokens must be positive")
    return args


def build(name: str, args, tokens: int) -> tuple:
    """(model, dictionaries, batch, what to record) of a setting: the Pythia-70M setting at ``tokens`` per
    prompt, calibrated on prompts of that length (the distribution of activations changes with position:
    dictionaries calibrated on 256-token prompts fire thousands of attention features per token on
    16-token ones); the organism at its task's length."""
    if name == "organism":
        model, dicts, batch = settings.organism(args.pairs)
        return model, dicts, batch, {"dictionaries": "organism (trained)"}
    target = args.target_l0 or None
    model, dicts, batch = settings.pythia70m_shaped(args.width, args.pairs, tokens, target_l0=target)
    return model, dicts, batch, {"dictionaries": f"random AutoEncoder, width {args.width}", "target_l0": target}


def record_tokens(model, dicts, batch) -> dict:
    """Mean L0 per submodule on the batch, and the planner's estimate for its shape (which excludes the
    runtime's own resident memory)."""
    l0 = settings.mean_l0(model, dicts, batch)
    widths = {n: int(getattr(ae, "width", None) or ae.dict_size) for n, ae in dicts.items()}
    planned = {m: plan(model, widths, len(batch), batch.n_tokens, method=m).gib for m in ("atp", "relp")}
    return {"pairs": len(batch), "tokens": batch.n_tokens, "mean_l0": l0, "planned_peak_gib": planned}


def run_setting(name, args, rows, recorded, workdir) -> None:
    """Every prompt length of a setting (the organism has one), each built afresh and saved for the rows'
    processes; edges at the shortest."""
    by_tokens: dict[int, dict] = {}
    for t in args.tokens if name == "pythia70m" else [None]:
        model, dicts, batch, recorded[name] = build(name, args, t)
        path = os.path.join(workdir, f"{name}.pt")
        save_setting(path, model, dicts, {batch.n_tokens: batch})
        by_tokens[batch.n_tokens] = record_tokens(model, dicts, batch)
        print(f"# {name}, {batch.n_tokens} tokens: mean L0 per token " +
              ", ".join(f"{k} {v:.1f}" for k, v in by_tokens[batch.n_tokens]["mean_l0"].items()), flush=True)
        run_tokens(name, path, batch.n_tokens, args.methods, args.repeats, args.levels, args.paths, rows)
        os.remove(path)
        if not args.no_edges and "feature" in args.levels and batch.n_tokens == min(by_tokens):
            run_edges(name, model, dicts, batch, rows)
        del model, dicts
    recorded[name].update(by_tokens[min(by_tokens)])  # the shortest prompt's, at the top level as before
    recorded[name]["by_tokens"] = by_tokens


def main(argv=None) -> int:
    args = _arguments(argv)
    rows: list[dict] = []
    recorded: dict[str, dict] = {}
    print(_header())
    with tempfile.TemporaryDirectory(prefix="fc-bench-") as workdir:
        for name in args.settings:
            run_setting(name, args, rows, recorded, workdir)
    if args.demo:
        run_demo(rows)
    l0 = {(name, t): sum(r["mean_l0"].values()) / len(r["mean_l0"]) for name, s in recorded.items()
          for t, r in s["by_tokens"].items()}
    if len(args.tokens) > 1:
        scale_columns(rows, l0)
        print_scaling(rows)
    fc.fileio.atomic_write_text(args.out, json.dumps({"rows": rows, "settings": recorded}, indent=1))
    print(f"\n{len(rows)} rows written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
