"""`python -m benchmarks.plan_check`: the memory planner's estimate against the measured peak.

Each case runs in a fresh Python process: it imports everything, records its resident memory (the
baseline), builds the model and dictionaries, returns freed heap to the system (``malloc_trim``, so that
what the build freed does not count), runs one ``attribute`` call under :class:`PeakRSS`, and reports the
peak minus the baseline beside :func:`featurecircuits.plan.plan`'s estimate for the same shapes.

Cases: ``pythia70m`` (Pythia-70M's shape, 19 calibrated dictionaries of width 32768) and ``gemma2``
(Gemma-2-2B's shapes — d_model 2304, d_ff 9216, 8 heads of 256, vocabulary 256000, softcaps — with
``--layers`` layers, random weights, eager attention, and dictionaries of width 16384 at every submodule).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import subprocess
import sys

GEMMA2_2B = dict(vocab_size=256000, hidden_size=2304, intermediate_size=9216, num_attention_heads=8,
                 num_key_value_heads=4, head_dim=256, final_logit_softcapping=30.0, attn_logit_softcapping=50.0,
                 max_position_embeddings=8192, sliding_window=4096, query_pre_attn_scalar=256)


def gemma2_config(layers: int):
    import transformers as tr

    return tr.Gemma2Config(**GEMMA2_2B, num_hidden_layers=layers)


def _build(case: str, batch: int, tokens: int, layers: int, width: int):
    import torch
    import transformers as tr

    import featurecircuits as fc

    from . import settings

    if case == "pythia70m":
        return settings.pythia70m_shaped(width or 32768, batch, tokens)
    if case != "gemma2":
        raise ValueError(f"unknown case {case!r}; valid: pythia70m, gemma2")
    from dictionary_learning import AutoEncoder

    torch.manual_seed(0)
    hf = tr.AutoModelForCausalLM.from_config(gemma2_config(layers), attn_implementation="eager")
    model = fc.load_model(hf)
    dicts = {}
    for sub in model.submodules:
        ae = AutoEncoder(model.d_model, width or 16384)
        with torch.no_grad():
            ae.encoder.bias.fill_(-0.05)
        ae.activation_dim, ae.dict_size = model.d_model, width or 16384
        dicts[sub.name] = settings.as_featurecircuits_dictionary(ae.eval().requires_grad_(False))
    return model, dicts, settings.random_batch(GEMMA2_2B["vocab_size"], batch, tokens)


def child(case: str, batch: int, tokens: int, method: str, layers: int, width: int, sparse: bool = False) -> dict:
    import torch  # noqa: F401  (everything imported before the baseline)
    import transformers  # noqa: F401

    import featurecircuits as fc
    from featurecircuits.plan import plan

    from .measure import PeakRSS

    gc.collect()
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc_trim(0)
    baseline = PeakRSS._rss()
    model, dicts, b = _build(case, batch, tokens, layers, width)
    gc.collect()
    libc.malloc_trim(0)
    resident = PeakRSS._rss()
    with PeakRSS() as rss:
        res = fc.attribute(model, b, method=method, dictionaries=dicts, sparse=sparse)
    widths = {name: (int(ae.width) if hasattr(ae, "width") else int(ae.dict_size)) for name, ae in dicts.items()}
    # the sparse path: planned with the features active per token in either run, as measured in this run
    l0 = sum(res.activations[n]["act"]._nnz() for n in dicts) / (len(dicts) * batch * tokens) if sparse else None
    p = plan(model, widths, batch, tokens, method=method, l0=l0)
    return {"case": case, "layers": model.n_layers, "batch": batch, "tokens": tokens, "method": method,
            "path": "sparse" if sparse else "dense", "l0": l0,
            "baseline": baseline, "resident_after_build": resident - baseline, "measured": rss.peak - baseline,
            "planned": p.total, "plan": p.to_dict()}


def run_case(*args) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.plan_check", "--child", *map(str, args)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.plan_check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default="pythia70m:10x16,gemma2:8x32",
                        help="comma-separated case:BATCHxTOKENS (cases: pythia70m, gemma2)")
    parser.add_argument("--method", default="relp", choices=["atp", "relp"])
    parser.add_argument("--layers", type=int, default=2, help="layers of the Gemma-2-shaped model")
    parser.add_argument("--width", type=int, default=0, help="dictionary width (0: the case's default)")
    parser.add_argument("--out", default="", help="also write the results as JSON here")
    parser.add_argument("--sparse", action="store_true",
                        help="the sparse path (what discover runs), planned with the measured active features")
    parser.add_argument("--child", nargs=7, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        case, batch, tokens, method, layers, width, sparse = args.child
        print(json.dumps(child(case, int(batch), int(tokens), method, int(layers), int(width), sparse == "1")))
        return 0
    results = []
    print(f"{'case':<10} {'B×T':>7} {'method':>6} {'path':>6} {'measured GiB':>13} {'planned GiB':>12} {'error':>7}")
    for spec in args.cases.split(","):
        case, _, shape = spec.partition(":")
        batch, _, tokens = shape.partition("x")
        r = run_case(case, int(batch), int(tokens), args.method, args.layers, args.width, int(args.sparse))
        r["error"] = r["planned"] / r["measured"] - 1
        results.append(r)
        print(f"{case:<10} {batch + '×' + tokens:>7} {args.method:>6} {r['path']:>6} {r['measured'] / 2**30:13.3f} "
              f"{r['planned'] / 2**30:12.3f} {r['error']:+7.1%}", flush=True)
    if args.out:
        from featurecircuits.fileio import atomic_write_text

        atomic_write_text(args.out, json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
