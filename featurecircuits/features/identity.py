"""What a dossier was computed from, as one key: the model, each dictionary's weight hash, the corpus record
and the settings. Two runs with the same key produce the same dossiers, so the key names the cache folder.

The model is identified by its name plus a fingerprint of its weights: every parameter's name, shape and
dtype, and up to 1,024 evenly strided values of it (hashing every weight of a large model would cost more
than it saves; a changed model almost surely changes sampled values).
"""

from __future__ import annotations

import hashlib
import json

import torch

__all__ = ["cache_key", "key_record", "model_fingerprint"]

_SAMPLES = 1024


def model_fingerprint(model) -> str:
    h = hashlib.sha256(type(model.hf).__name__.encode())
    with torch.no_grad():
        for name, p in model.hf.named_parameters():
            h.update(f"{name}:{tuple(p.shape)}:{p.dtype}".encode())
            if p.device.type == "meta" or not p.numel():
                continue
            flat = p.detach().reshape(-1)
            step = max(1, flat.numel() // _SAMPLES)
            h.update(flat[::step][:_SAMPLES].to("cpu", torch.float32).numpy().tobytes())
    return h.hexdigest()[:16]


def key_record(model, dictionary_hashes: dict[str, str], corpus: dict, config: dict, version: int) -> dict:
    """Everything the result depends on, JSON-able."""
    return {"version": version, "model": {"name": str(model.name), "fingerprint": model_fingerprint(model)},
            "dictionaries": dict(sorted(dictionary_hashes.items())), "corpus": corpus, "config": config}


def cache_key(record: dict) -> str:
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()[:24]
