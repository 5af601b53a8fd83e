"""--memory-budget: sizes, the batch a budget picks (monotone, maximal, refused with the smallest budget that
fits), and the measured peak of a run at the picked batch within the budget, at the organism's shape and at
Pythia-70M's (random weights, dictionaries calibrated to a published L0)."""

from __future__ import annotations

import pytest
import torch
import transformers as tr

import featurecircuits as fc
from benchmarks import settings
from featurecircuits.budget import added_peak, choose_batch, format_size, measure_peak, parse_size, probe_l0
from featurecircuits.cli import main
from featurecircuits.errors import UsageError

MiB, GiB = 2**20, 2**30
VOCAB = settings.PYTHIA_70M["vocab_size"]


@pytest.mark.parametrize("text,expected", [("4GiB", 4 * GiB), ("512MiB", 512 * MiB), ("2G", 2 * GiB),
                                           ("1.5GB", 1_500_000_000), ("64k", 64 * 1024), ("100", 100),
                                           (" 3 mib ", 3 * MiB), ("1T", 2**40)])
def test_sizes_parse(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "GiB", "-1G", "3XB", "4 parsecs", "0", "0.5", "1e3M", "nan"])
def test_bad_sizes_are_refused(text):
    with pytest.raises(ValueError, match="expected a size|at least 1 byte"):
        parse_size(text)


def test_formatted_sizes_parse_back_to_at_least_the_size():
    for n in (1, MiB, MiB + 1, 3 * GiB - 5, 11 * GiB + 7):
        assert parse_size(format_size(n)) >= n


def test_a_bad_size_names_the_option(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["compare", "--memory-budget", "4 parsecs", "--out", "unused"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "argument --memory-budget: expected a size" in err and "'4 parsecs'" in err


def _one_length(model, n: int = 40):
    """The largest group of IOI pairs of one token length, as one batch."""
    task = fc.tasks.Task("ioi", fc.tasks.make_task("ioi", n, seed=0))
    return max(task.batches(model.tokenizer, n), key=len)


def _check_maximal(model, dicts, choice, l0, budget):
    """The choice fits, and one pair more would not (unless every pair is in)."""
    assert choice.peak <= budget
    if choice.limit is None:
        assert added_peak(model, dicts, choice.batch + 1, choice.tokens, l0=l0)[0] > budget


@pytest.mark.organism
def test_the_choice_is_monotone_in_the_budget_and_maximal(organism):
    model, dicts = organism
    l0, tokens = 25.0, 15
    budgets = [24 * MiB, 30 * MiB, 45 * MiB, 80 * MiB, 200 * MiB, GiB]
    chosen = []
    for budget in budgets:
        for d in (None, dicts):
            c = choose_batch(model, d, budget, tokens=tokens, n_pairs=500, l0=l0)
            _check_maximal(model, d, c, l0, budget)
            chosen.append((d is None, c.batch))
    for component in (True, False):
        batches = [b for kind, b in chosen if kind is component]
        assert batches == sorted(batches) and batches[0] < batches[-1]
    edges = choose_batch(model, dicts, 200 * MiB, tokens=tokens, n_pairs=500, l0=l0, edges=True)
    assert edges.peak <= 200 * MiB < added_peak(model, dicts, edges.batch + 1, tokens, l0=l0, edges=True)[0]
    assert edges.batch < choose_batch(model, dicts, 200 * MiB, tokens=tokens, n_pairs=500, l0=l0).batch
    capped = choose_batch(model, dicts, GiB, tokens=tokens, n_pairs=500, l0=l0, cap=7)
    assert (capped.batch, capped.limit) == (7, "batch_size")
    assert choose_batch(model, dicts, GiB, tokens=tokens, n_pairs=3, l0=l0).limit == "pairs"


@pytest.mark.organism
def test_an_impossible_budget_is_refused_with_the_smallest_that_fits(organism):
    model, dicts = organism
    with pytest.raises(UsageError, match=r"--memory-budget 1MiB is too small: one pair of 15 tokens needs about "
                                         r"\d+MiB .* give at least (\d+MiB)") as exc:
        choose_batch(model, dicts, MiB, tokens=15, n_pairs=10, l0=25.0, option="--memory-budget")
    smallest = parse_size(str(exc.value).rsplit(" ", 1)[-1])
    assert choose_batch(model, dicts, smallest, tokens=15, n_pairs=10, l0=25.0).batch == 1
    with pytest.raises(UsageError):
        choose_batch(model, dicts, smallest - MiB, tokens=15, n_pairs=10, l0=25.0)


def _assert_within(model, dicts, batch, budget):
    """Choose under ``budget`` for ``batch``'s shape, run attribution on the chosen pairs, measure its peak."""
    l0 = probe_l0(model, dicts, batch) if dicts else None
    choice = choose_batch(model, dicts, budget, tokens=batch.n_tokens, n_pairs=len(batch), l0=l0)
    _check_maximal(model, dicts, choice, l0, budget)
    assert choice.limit is None, "the budget should pick fewer pairs than there are"
    part = batch[:choice.batch]
    _, peak = measure_peak(lambda: fc.attribute(model, part, method="relp", dictionaries=dicts,
                                                sparse=dicts is not None), model.device)
    print(f"{choice.message()}: measured {peak / MiB:.1f} MiB")
    assert 0 < peak <= budget
    return choice, peak


@pytest.mark.organism
def test_the_measured_peak_stays_within_the_budget_at_the_organisms_shape(organism):
    model, dicts = organism
    batch = _one_length(model)
    _assert_within(model, dicts, batch, 30 * MiB)  # the sparse path discover runs
    _assert_within(model, None, batch, 26 * MiB)  # compare's component-level path


@pytest.fixture(scope="module")
def pythia70m_shaped():
    """Pythia-70M's shape with random weights; calibrated dictionaries of width 4096 at two submodules (every
    submodule at Pythia's 32768 would hold 2.5 GB)."""
    torch.manual_seed(0)
    model = fc.load_model(tr.GPTNeoXForCausalLM(tr.GPTNeoXConfig(**settings.PYTHIA_70M)))
    subs = model.select(["mlp_2", "resid_3"])
    acts = settings.activations(model, settings.random_batch(VOCAB, 16, 16, seed=7).clean, subs)
    from dictionary_learning import AutoEncoder

    dicts = {}
    for sub in subs:
        ae = AutoEncoder(model.d_model, 4096)
        settings.calibrate(ae, acts[sub.name], settings.TARGET_L0)
        dicts[sub.name] = settings.as_featurecircuits_dictionary(ae.eval().requires_grad_(False))
    return model, dicts


def test_the_measured_peak_stays_within_the_budget_at_pythia70m_shape(pythia70m_shaped):
    model, dicts = pythia70m_shaped
    batch = settings.random_batch(VOCAB, 3, 16, seed=3)
    _assert_within(model, dicts, batch, 48 * MiB)  # the sparse path discover runs (compare's dense one: organism)


@pytest.mark.organism
def test_compare_runs_the_batch_the_budget_picks(monkeypatch, capsys, tmp_path):
    import featurecircuits.cli.compare as command

    seen = {}

    def stop(req, model, dicts, batches, groups, checkpoint, max_batch):
        seen.update(sizes=[len(b) for b in batches], max_batch=max_batch)
        raise SystemExit(77)  # main() turns exceptions into exit codes, not SystemExit

    monkeypatch.setattr(command, "_compare", stop)
    with pytest.raises(SystemExit, match="77"):
        main(["compare", "--n", "12", "--memory-budget", "26MiB", "--out", str(tmp_path / "c")])
    err = capsys.readouterr().err
    line = next(ln for ln in err.splitlines() if ln.startswith("--memory-budget 26MiB: batch of "))
    batch = int(line.split("batch of ")[1].split()[0])
    assert 1 < batch < 12 and max(seen["sizes"]) == batch and seen["max_batch"] == 2 * batch
    with pytest.raises(SystemExit, match="77"):  # --batch-size given too: the smaller batch
        main(["compare", "--n", "12", "--memory-budget", "26MiB", "--batch-size", "1", "--out", str(tmp_path / "c")])
    assert "batch of 1 pairs (capped by --batch-size)" in capsys.readouterr().err and max(seen["sizes"]) == 1
    assert main(["compare", "--n", "2", "--memory-budget", "2MiB", "--out", str(tmp_path / "c")]) == 2
    assert "error: --memory-budget 2MiB is too small" in capsys.readouterr().err


@pytest.mark.organism
def test_dossiers_take_the_tokens_per_forward_the_budget_picks(organism, tmp_path, capsys):
    from featurecircuits.budget import choose_dossier_tokens, dossier_peak
    from featurecircuits.features import open_corpus
    from featurecircuits.features.dossier import build_dossiers

    model, dicts = organism
    tokens = [choose_dossier_tokens(model, dicts, b * MiB).batch for b in (90, 120, 200, 400, 4096)]
    assert tokens == sorted(tokens) and tokens[0] < tokens[-1] == 4096  # the default caps a generous budget
    choice = choose_dossier_tokens(model, dicts, 100 * MiB)
    assert choice.peak <= 100 * MiB < dossier_peak(model, dicts, choice.batch + 128)[0]
    corpus = open_corpus(None, model.tokenizer, model_name=model.name)
    _, peak = measure_peak(lambda: build_dossiers(model, dicts, corpus, progress=False, batch_tokens=choice.batch,
                                                  max_tokens=choice.batch))
    print(f"{choice.message()}: measured {peak / MiB:.1f} MiB")
    assert 0 < peak <= 100 * MiB
    code = main(["features", "--memory-budget", "20MiB", "--out", str(tmp_path / "d")])
    assert code == 2 and "--memory-budget 20MiB is too small: one row of 128 tokens" in capsys.readouterr().err


@pytest.mark.organism
def test_discover_and_evaluate_run_the_batch_the_budget_picks(tmp_path, capsys):
    """The budget's batch gives the circuit of that batch size (edges recomputed instead of kept)."""
    import json

    def batch_of(err: str, budget: str) -> int:
        line = next(ln for ln in err.splitlines() if ln.startswith(f"--memory-budget {budget}: batch of "))
        return int(line.split("batch of ")[1].split()[0])

    common = ["discover", "--task", "sva-rc", "--n-examples", "8", "--top-k", "12", "--edge-threshold", "0.01"]
    assert main([*common, "--memory-budget", "40MiB", "--out", str(tmp_path / "a.json")]) == 0
    batch = batch_of(capsys.readouterr().err, "40MiB")
    assert 1 < batch < 8
    assert main([*common, "--batch-size", str(batch), "--out", str(tmp_path / "b.json")]) == 0
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("a.json", "b.json"))
    assert {n["id"]: n["score"] for n in a["nodes"]} == pytest.approx({n["id"]: n["score"] for n in b["nodes"]})
    assert {(e["source"], e["target"]): e["weight"] for e in a["edges"]} == \
        pytest.approx({(e["source"], e["target"]): e["weight"] for e in b["edges"]})
    assert main(["evaluate", "--circuit", str(tmp_path / "a.json"), "--task", "sva-rc", "--n-examples", "8",
                 "--memory-budget", "40MiB"]) == 0
    assert 1 <= batch_of(capsys.readouterr().err, "40MiB") <= 8
