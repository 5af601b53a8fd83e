"""The built wheel installs anywhere: it carries the organism, its dictionaries and the task files, resolves them
through the installed package, needs no dictionary_learning, and `featurecircuits demo` runs from an unrelated
directory without writing outside --out.

Slow (a wheel build + the demo, about a minute): runs when FEATURECIRCUITS_WHEEL_TEST=1 (.ci/run sets it).
The fresh venv gets the wheel (pip install --no-deps) and reaches the already-installed dependencies (torch,
transformers, nnsight, ...) through a .pth file pointing at this venv's site-packages, so nothing is
downloaded; a stub placed ahead of them makes `import dictionary_learning` fail inside it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import time
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(os.environ.get("FEATURECIRCUITS_WHEEL_TEST") != "1",
                                reason="slow: set FEATURECIRCUITS_WHEEL_TEST=1 (CI does)")

SOURCES = ("featurecircuits", "models/organism", "dictionaries/organism", "tasks", "docs")  # setup.py DATA
FILES = ("pyproject.toml", "setup.py", "MANIFEST.in", "LICENSE", "README.md")


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts}


def test_wheel_installs_into_a_fresh_venv_and_runs_the_demo_from_elsewhere(tmp_path):
    import setuptools

    assert int(setuptools.__version__.split(".")[0]) >= 77, "building needs setuptools>=77 (pyproject.toml)"
    timings = {}
    # 1. build from a clean copy of the sources (no stale build/ folder, no other engineers' outputs)
    src = tmp_path / "src"
    for rel in SOURCES:
        shutil.copytree(ROOT / rel, src / rel, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".*"))
    for rel in FILES:
        shutil.copy2(ROOT / rel, src / rel)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path / "dist"), str(src)], check=True, cwd=tmp_path)
    timings["build"] = time.perf_counter() - t0
    (wheel,) = (tmp_path / "dist").glob("featurecircuits-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in ("featurecircuits/_data/models/organism/config.json",
                   "featurecircuits/_data/models/organism/model.safetensors",
                   "featurecircuits/_data/dictionaries/organism/resid_3/0_1024/ae.pt",
                   "featurecircuits/_data/tasks/organism/sva-rc.jsonl",
                   "featurecircuits/_data/docs/splits.md",
                   "featurecircuits/dictionaries/saelens.py"):
        assert needed in names, needed
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)

    # 2. a fresh venv: the wheel, plus this venv's packages for the dependencies, minus dictionary_learning
    t0 = time.perf_counter()
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    (site / "_deps_from_main_venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    (site / "dictionary_learning").mkdir()
    (site / "dictionary_learning" / "__init__.py").write_text(
        'raise ImportError("dictionary_learning is not installed here (the wheel test hides it)")\n')
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps", str(wheel)],
                   check=True)
    timings["install"] = time.perf_counter() - t0
    installed = site / "featurecircuits"
    before = _files(site)

    # 3. run from an unrelated directory with a private HOME / cache
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(HOME=str(tmp_path / "home"), XDG_CACHE_HOME=str(tmp_path / "cache"), HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", PATH=f"{venv / 'bin'}:{env.get('PATH', '')}")
    probe = subprocess.run([str(py), "-c", "import featurecircuits.models as m, featurecircuits.dictionaries.sets as s;"
                            "import importlib.util as u; print(m.__file__); print(m.ORGANISM_DIR);"
                            "print(s.resolve_dictionaries('organism')); print(u.find_spec('dictionary_learning'))"],
                           cwd=work, env=env, check=True, capture_output=True, text=True).stdout.splitlines()
    assert all(line.startswith(str(installed)) for line in probe[:3]), probe
    t0 = time.perf_counter()
    run = subprocess.run([str(venv / "bin" / "featurecircuits"), "demo", "--out", str(work / "out")], cwd=work,
                         env=env, capture_output=True, text=True)
    timings["demo"] = time.perf_counter() - t0
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "sva-rc  relp" in run.stdout and "faithfulness" in run.stdout
    assert (work / "out" / "sva-rc_relp.json").is_file() and (work / "out" / "circuits.html").is_file()
    assert sorted(p.name for p in work.iterdir()) == ["out"]  # nothing else written to the current directory
    assert _files(site) - before == set()  # nor into site-packages
    print("wheel test timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))
