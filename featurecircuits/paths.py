"""Where the shipped data lives. Torch-free.

The wheel ships ``models/``, ``dictionaries/`` and ``tasks/`` under ``featurecircuits/_data``; a clone or an
editable install keeps them at the repository root. Resolved from this file, never from the current
directory.
"""

from __future__ import annotations

from pathlib import Path


def _data_root() -> Path:
    package = Path(__file__).resolve().parent
    shipped = package / "_data"
    return shipped if (shipped / "models").is_dir() else package.parent


DATA_ROOT = _data_root()
ORGANISM_DIR = DATA_ROOT / "models" / "organism"
DICTIONARY_ROOT = DATA_ROOT / "dictionaries"
TASKS_ROOT = DATA_ROOT / "tasks"
DOCS_ROOT = DATA_ROOT / "docs"  # the documentation the command line's help points to


def task_path(words: str, name: str) -> Path:
    """A shipped task file: ``task_path("organism", "sva-rc")`` → ``tasks/organism/sva-rc.jsonl``."""
    return TASKS_ROOT / words / f"{name}.jsonl"
