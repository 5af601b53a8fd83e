"""Published dictionary sets: the Hugging Face hub download and the local cache.

Code that downloads stays real (users have the hub); tests and the demo run offline on shipped sets.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from ..paths import DICTIONARY_ROOT
from ..registry import ORGANISM, PUBLISHED_DICTIONARIES

log = logging.getLogger(__name__)

# The published Sparse Feature Circuits dictionaries for Pythia-70M-deduped (embed + attn/mlp/resid × 6,
# 32768 features each, run "10_32768"), as one zip in a Hugging Face hub repo.
PUBLISHED = PUBLISHED_DICTIONARIES


def cache_dir() -> Path:
    """Where downloads go: ``$FEATURECIRCUITS_CACHE``, else ``$XDG_CACHE_HOME/featurecircuits``, else
    ``~/.cache/featurecircuits`` — never the current directory or the installed package."""
    explicit = os.environ.get("FEATURECIRCUITS_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "featurecircuits"


def download_dictionaries(name_or_repo: str = "pythia-70m-deduped", out_dir: str | Path | None = None,
                          *, filename: str | None = None) -> Path:
    """Download published dictionaries into ``out_dir`` (default ``<cache_dir()>/dictionaries``) and return
    the root to pass to :func:`load_dictionaries` (``…/dictionaries/pythia-70m-deduped`` for the SFC set).

    ``name_or_repo`` is a known name (``pythia-70m-deduped``) or a hub repo id; a zip is unpacked
    (checking every member stays inside ``out_dir``), a repo of folders is fetched as a snapshot.
    """
    import zipfile

    from huggingface_hub import hf_hub_download, snapshot_download

    out = Path(out_dir) if out_dir is not None else cache_dir() / "dictionaries"
    repo, default_file = PUBLISHED.get(name_or_repo, (name_or_repo, None))
    filename = filename or default_file
    out.mkdir(parents=True, exist_ok=True)
    if filename is None:
        target = out / repo.replace("/", "__")
        return Path(snapshot_download(repo_id=repo, local_dir=target, allow_patterns=["*.pt", "*.json",
                                                                                    "*.safetensors"]))
    archive = Path(hf_hub_download(repo_id=repo, filename=filename))
    with zipfile.ZipFile(archive) as zf:
        root_dirs = set()
        for member in zf.namelist():
            dest = (out / member).resolve()
            if not dest.is_relative_to(out.resolve()):
                raise ValueError(f"{archive.name}: member {member!r} would be written outside {out}")
            parts = Path(member).parts
            if len(parts) > 1 and parts[0] == "dictionaries":
                parts = parts[1:]
            if parts:
                root_dirs.add(parts[0])
        staging = Path(tempfile.mkdtemp(dir=out, prefix=".download-"))
        try:
            zf.extractall(staging)
            inner = staging / "dictionaries" if (staging / "dictionaries").is_dir() else staging
            for child in inner.iterdir():
                dest = out / child.name
                if dest.exists():
                    shutil.rmtree(dest)
                os.replace(child, dest)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    roots = [out / d for d in sorted(root_dirs) if (out / d).is_dir()]
    log.info("dictionaries unpacked under %s", ", ".join(map(str, roots)))
    return roots[0] if len(roots) == 1 else out


def resolve_dictionaries(spec: str | Path) -> Path:
    """A local folder as is; ``organism`` (shipped with the package); a published name or hub repo id →
    downloaded once into :func:`cache_dir` (a copy already in the repository's ``dictionaries/`` is used)."""
    if str(spec) == ORGANISM:
        return DICTIONARY_ROOT / ORGANISM
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    if str(spec) in PUBLISHED:
        for local in (DICTIONARY_ROOT / str(spec), cache_dir() / "dictionaries" / str(spec)):
            if local.is_dir():
                return local
        return download_dictionaries(str(spec))
    if "/" in str(spec) and not path.exists() and len(path.parts) == 2 and not str(spec).startswith((".", "~")):
        cached = cache_dir() / "dictionaries" / str(spec).replace("/", "__")
        return cached if cached.is_dir() else download_dictionaries(str(spec))
    from .formats import prefixes

    raise FileNotFoundError(f"dictionaries {spec!r}: not a folder, 'organism', a published name "
                            f"({', '.join(PUBLISHED)}), a hub repo id, or PREFIX:TARGET with PREFIX one of "
                            f"{', '.join(prefixes())}")
