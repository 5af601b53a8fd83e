"""Dossiers cached by what they were computed from (:mod:`.identity`): ``<cache root>/<key>/`` holds a finished
result, ``<cache root>/<key>.run/`` the checkpoints of an unfinished one, which the next call continues.
The default root is ``featurecircuits.dictionaries.cache_dir() / "dossiers"``."""

from __future__ import annotations

import logging
from pathlib import Path

from ..checkpoint import RunDir
from .corpus import Corpus, TokenCorpus
from .dossier import MANIFEST, DossierConfig, Dossiers, build_dossiers, dossier_key

__all__ = ["cached_dossiers", "default_cache_root"]

log = logging.getLogger(__name__)


def default_cache_root() -> Path:
    from ..dictionaries import cache_dir

    return cache_dir() / "dossiers"


def cached_dossiers(model, dictionaries: dict, corpus, *, cache_root=None, config: DossierConfig | None = None,
                    progress: bool = True, resume: bool = True, checkpoint_every: int = 25, **options) -> Dossiers:
    """The dossiers of ``dictionaries`` on ``corpus`` from the cache when the same model, dictionaries (by
    weight hash), corpus and settings were seen before; else built (continuing an interrupted build when
    ``resume``), saved to the cache and returned."""
    cfg = DossierConfig.make(config, **options)
    corpus = corpus if isinstance(corpus, Corpus) else TokenCorpus(corpus)
    root = Path(cache_root) if cache_root is not None else default_cache_root()
    key = dossier_key(model, dictionaries, corpus, cfg)
    folder = root / key
    if (folder / MANIFEST).is_file():
        log.info("dossiers: reusing %s", folder)
        return Dossiers.load(folder, model=model, dictionaries=dictionaries)
    root.mkdir(parents=True, exist_ok=True)
    run_path = root / f"{key}.run"
    run = RunDir(run_path, {"dossiers": key}, resume=resume and (run_path / "run.json").is_file())
    result = build_dossiers(model, dictionaries, corpus, config=cfg, progress=progress, checkpoint=run,
                            checkpoint_every=checkpoint_every)
    result.save(folder)
    run.remove()
    return result
