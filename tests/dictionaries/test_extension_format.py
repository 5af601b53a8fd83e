"""A dictionary format is one loader module plus one entry in the format table (tests/extension/npy_format.py)."""

from __future__ import annotations

import pytest
import torch

import featurecircuits as fc
from featurecircuits.dictionaries import formats
from featurecircuits.dictionaries.base import SAE
from featurecircuits.export.provenance import circuit_dictionaries
from tests.conftest import random_batch, tiny_model
from tests.extension import npy_format


@pytest.fixture
def npy_set(monkeypatch, tmp_path):
    monkeypatch.setitem(formats.FORMATS, "npy", formats.FormatInfo(
        "npy", ("npy",), "tests.extension.npy_format", "one folder of .npy arrays per submodule"))
    model = tiny_model()
    torch.manual_seed(0)
    dicts = {}
    for name in ("resid_0", "attn_1", "resid_1"):
        d, w = model.d_model, 48
        ae = SAE(torch.randn(w, d) / d**0.5, torch.randn(w) * 0.3 - 0.2, torch.randn(d, w) / w**0.5, torch.zeros(d))
        npy_format.save(ae, tmp_path / "set" / name.replace("_", "-"), name)
        dicts[name] = ae.with_source("memory", "")
    return model, dicts, tmp_path / "set"


def test_a_format_added_by_one_module_and_one_entry_loads_plans_and_is_recorded(npy_set):
    model, originals, root = npy_set
    for spec in (f"npy:{root}", str(root)):  # prefixed, and detected from the files
        loaded = fc.load_dictionaries(spec, model)
        assert list(loaded) == ["resid_0", "attn_1", "resid_1"]
        assert all(loaded[k].source.hash == originals[k].source.hash for k in loaded)
        assert all(loaded[k].source.format == "npy" for k in loaded)
    assert fc.dictionaries.dictionary_widths(f"npy:{root}") == {k: (48, model.d_model) for k in originals}
    assert isinstance(fc.load_dictionary(root / "resid-0"), SAE)

    dicts = fc.load_dictionaries(f"npy:{root}", model)
    circuit = fc.discover(model, dicts, [random_batch()], top_k=10, edge_threshold=0.0)
    assert circuit.metadata["dictionaries"] == f"npy:{root.resolve()}"
    reloaded, spec = circuit_dictionaries(fc.Circuit.from_json(circuit.to_json()), model)
    assert spec == f"npy:{root.resolve()}" and {k: v.source.hash for k, v in reloaded.items()} == \
        {k: v.source.hash for k, v in dicts.items()}


def test_an_unknown_prefix_lists_the_formats_of_the_table(npy_set):
    model, _, root = npy_set
    with pytest.raises(ValueError, match="PREFIX one of saelens, gemma-scope-res, .*npy"):
        fc.load_dictionaries(f"npz:{root}+npy:{root}", model)
