"""The README is true as written: its Python snippets run, in order, offline on the organism, and every
`featurecircuits …` command line in it parses (options that exist, values that pass their checks)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from featurecircuits.cli import build_parser

README = Path(__file__).resolve().parents[2] / "README.md"
_BLOCK = re.compile(r"```(\w+)\n(.*?)```", re.S)


def _blocks(language: str) -> list[str]:
    return [body for lang, body in _BLOCK.findall(README.read_text()) if lang == language]


# The files the snippets name as a user's own: the organism's SAEs written as SAELens folders (my_saes/) and its
# residual SAEs as a Gemma Scope suite (gs-res/), so that those snippets run as written too.
_SETUP = """
import torch
import featurecircuits as fc
from featurecircuits.dictionaries import gemma_scope, saelens
model = fc.load_model("organism")
dicts = fc.load_dictionaries("organism", model)
saelens.save_set(dicts, model, "my_saes")
def jumprelu(ae):  # Gemma Scope's form: b_pre folded into the encoder bias, threshold 0 (= ReLU)
    return fc.SAE(ae.W_enc, ae.b_enc - ae.W_enc @ ae.b_pre, ae.W_dec, ae.b_dec, activation="jumprelu",
                  threshold=torch.zeros(ae.width))
gemma_scope.save_suite({l: jumprelu(dicts[f"resid_{l}"]) for l in range(model.n_layers)}, "gs-res")
"""


@pytest.mark.organism
def test_the_python_snippets_run_as_written(tmp_path):
    subprocess.run([sys.executable, "-c", _SETUP], cwd=tmp_path, check=True, capture_output=True, timeout=300,
                   env={"PYTHONPATH": str(README.parent), "PATH": "/usr/bin:/bin"})
    code = "\n".join(_blocks("python"))
    assert "fc.discover" in code and "to_html" in code
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=900,
                            env={"PYTHONPATH": str(README.parent), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(r"faithfulness \d\.\d{3} on \d+ evaluation pairs", result.stdout), result.stdout
    assert (tmp_path / "agreement.html").is_file() and (tmp_path / "page.html").is_file()


def _command_lines() -> list[list[str]]:
    lines = []
    for body in _blocks("bash"):
        for line in body.replace("\\\n", " ").splitlines():
            line = line.split("#", 1)[0].strip()
            if line.startswith("featurecircuits "):
                lines.append(shlex.split(re.sub(r"\[[^\]]*\]", "", line))[1:])  # optional parts in [...] left out
    return lines


def test_every_command_line_parses():
    lines = _command_lines()
    assert len(lines) >= 15
    parser = build_parser()
    for argv in lines:
        try:
            parser.parse_args(argv)
        except SystemExit as exc:
            pytest.fail(f"README command does not parse (exit {exc.code}): featurecircuits {' '.join(argv)}")
