"""`python -m benchmarks.dossiers`: time and peak RSS of ``build_dossiers`` over N tokens, as a ratio to the
*floor* measured in the same run: one forward of the model over the same rows in the same batches, with
every dictionary encoding its submodule's output (densely, dropped at once), the work any dossier must do.

Settings: the organism (its 19 trained width-1024 dictionaries, its own corpus) and Pythia-70M's shape
(random weights, 19 random width-32768 dictionaries calibrated to a realistic L0, random tokens; see
``benchmarks/settings.py``). Floor and dossiers run alternately (``--repeats``) and the minimum of each is
the reference, the run least disturbed by other processes; ``ratio_cpu`` is the same ratio in process CPU
time. ``state_gib`` is the size of the dossiers' streaming state (independent of N). Results also go to
``--out`` (``benchmarks/dossiers_results.json``) as ``{"rows": [...]}``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

# Another process on one of the 2 cores makes OpenMP's spinning workers wait on each other: small ops then
# run 50-100x slower (a 125k-element argsort: 190 ms instead of 3). Passive waiting avoids it; it must be set
# before OpenMP starts, i.e. before torch is imported.
if "torch" not in sys.modules:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

import featurecircuits as fc  # noqa: E402
from featurecircuits.features import DossierConfig, OrganismCorpus, TokenCorpus, build_dossiers

from . import settings  # noqa: E402
from .measure import PeakRSS  # noqa: E402

COLUMNS = ("setting", "tokens", "floor_s", "dossiers_s", "ratio", "ratio_cpu", "floor_tok_s", "dossiers_tok_s",
           "floor_peak_gib", "dossiers_peak_gib", "state_gib")


def floor_pass(model: fc.Model, dicts: dict, rows: list[list[int]], batch_size: int) -> None:
    """One plain forward per batch with every dictionary encoding its submodule's output (no_grad)."""

    def encode(sub, x):
        dicts[sub.name].encode(x)

    with torch.no_grad(), settings.recording(model, model.select(list(dicts)), encode):
        for i in range(0, len(rows), batch_size):
            model.hf(input_ids=torch.tensor(rows[i:i + batch_size], device=model.device))


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _timed(fn) -> dict:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    with PeakRSS() as rss:
        _sync()
        wall, cpu = time.perf_counter(), time.process_time()
        out = fn()
        _sync()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    gpu = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    return {"wall": wall, "cpu": cpu, "peak": rss.peak / 2**30, "gpu_peak": gpu, "out": out}


def measure(name: str, model, dicts: dict, rows: list[list[int]], cfg: DossierConfig, repeats: int) -> dict:
    """Floor and dossiers alternately, ``repeats`` times each (the floor once more at the end); the minimum
    of each is taken, which is the least disturbed by other processes on the machine."""
    tokens = sum(len(r) for r in rows)
    per_batch = max(1, cfg.batch_tokens // max(len(r) for r in rows))
    floor_pass(model, dicts, rows[:per_batch], per_batch)  # warm-up
    floors, runs = [], []
    for _ in range(repeats):
        floors.append(_timed(lambda: floor_pass(model, dicts, rows, per_batch)))
        runs.append(_timed(lambda: build_dossiers(model, dicts, TokenCorpus(rows), config=cfg, progress=False)))
    floors.append(_timed(lambda: floor_pass(model, dicts, rows, per_batch)))
    floor, secs = min(f["wall"] for f in floors), min(r["wall"] for r in runs)
    dossiers = runs[-1]["out"]
    state = sum(t.numel() * t.element_size() for s in dossiers.states.values() for t in s.tensors().values())
    return {"setting": name, "tokens": tokens, "floor_s": floor, "dossiers_s": secs, "ratio": secs / floor,
            "ratio_cpu": min(r["cpu"] for r in runs) / min(f["cpu"] for f in floors),
            "floor_tok_s": tokens / floor, "dossiers_tok_s": tokens / secs,
            "floor_peak_gib": max(f["peak"] for f in floors), "dossiers_peak_gib": max(r["peak"] for r in runs),
            "state_gib": state / 2**30, "batch_tokens": cfg.batch_tokens, "device": str(model.device),
            "floor_gpu_peak_gib": floors[-1]["gpu_peak"], "dossiers_gpu_peak_gib": runs[-1]["gpu_peak"],
            "floor_runs_s": [f["wall"] for f in floors], "dossier_runs_s": [r["wall"] for r in runs]}


def organism_setting(n_tokens: int, seq_len: int = 32):
    model = fc.load_model("organism")
    dicts = fc.load_dictionaries("organism", model)
    rows = list(OrganismCorpus(model.tokenizer, n_sequences=max(1, n_tokens // seq_len), seq_len=seq_len))
    return model, dicts, rows


def pythia_setting(n_tokens: int, seq_len: int, width: int, target_l0: float):
    model, dicts, _ = settings.pythia70m_shaped(width, 1, 1, target_l0=target_l0)
    g = torch.Generator().manual_seed(7)
    n_rows = max(1, n_tokens // seq_len)
    rows = torch.randint(0, settings.PYTHIA_70M["vocab_size"], (n_rows, seq_len), generator=g).tolist()
    return model, dicts, rows


def _fmt(row: dict) -> str:
    cells = []
    for c in COLUMNS:
        v = row[c]
        cells.append(f"{v:>12.3f}" if isinstance(v, float) else f"{v!s:>12}" if c != "setting" else f"{v:<10}")
    return " ".join(cells)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.dossiers", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", default="organism,pythia70m")
    parser.add_argument("--organism-tokens", type=int, default=32768)
    parser.add_argument("--pythia-tokens", type=int, default=4096)
    parser.add_argument("--seq-len", type=int, default=128, help="row length of the Pythia-70M setting")
    parser.add_argument("--batch-tokens", type=int, default=DossierConfig.batch_tokens)
    parser.add_argument("--repeats", type=int, default=2, help="runs of each (the minimum is reported)")
    parser.add_argument("--width", type=int, default=32768)
    parser.add_argument("--target-l0", type=float, default=settings.TARGET_L0)
    parser.add_argument("--device", default="cpu", help="where the model and dictionaries run (cpu, cuda)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", default="benchmarks/dossiers_results.json")
    return parser


def main(argv=None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    names = args.settings.split(",")
    if args.repeats < 1:
        parser.error("--repeats must be positive")
    bad = [n for n in names if n not in ("organism", "pythia70m")]
    if bad:
        parser.error(f"unknown setting {', '.join(bad)}; valid: organism, pythia70m")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    print(" ".join(f"{c:>12}" if c != "setting" else f"{c:<10}" for c in COLUMNS), flush=True)
    for name in names:
        if name == "organism":
            model, dicts, data = organism_setting(args.organism_tokens)
            cfg = DossierConfig(batch_tokens=args.batch_tokens, seq_len=32)
        else:
            model, dicts, data = pythia_setting(args.pythia_tokens, args.seq_len, args.width, args.target_l0)
            cfg = DossierConfig(batch_tokens=args.batch_tokens, seq_len=args.seq_len)
        model.hf.to(args.device)
        for ae in dicts.values():
            ae.to(args.device)
        rows.append(measure(name, model, dicts, data, cfg, args.repeats))
        print(_fmt(rows[-1]), flush=True)
        del model, dicts, data
    env = {"omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "threads": torch.get_num_threads(),
           "device": args.device, "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None}
    fc.fileio.atomic_write_text(args.out, json.dumps({"rows": rows, "environment": env}, indent=1))
    print(f"\n{len(rows)} rows written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
