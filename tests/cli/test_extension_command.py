"""A command is one module plus one line in the command table (tests/extension/top_command.py)."""

from __future__ import annotations

import featurecircuits as fc
from featurecircuits import cli
from tests.conftest import random_batch, random_dictionaries, tiny_model


def test_a_command_added_by_one_module_and_one_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(cli, "COMMANDS", (*cli.COMMANDS, "tests.extension.top_command"))
    model = tiny_model()
    circuit = fc.discover(model, random_dictionaries(model), [random_batch()], top_k=6, edges=False)
    path = tmp_path / "c.json"
    circuit.to_json(path)
    assert cli.main(["top", "--circuit", str(path), "--k", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in lines] == circuit.top(3)
    assert "top" in cli.build_parser().format_help()
    # the command gets main's handling: a user error is one line and exit 2, no traceback
    assert cli.main(["top", "--circuit", str(tmp_path / "missing.json")]) == 2
    err = capsys.readouterr().err
    assert "missing.json" in err and "Traceback" not in err
