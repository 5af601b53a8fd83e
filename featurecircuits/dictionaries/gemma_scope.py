"""Gemma Scope's raw files: ``params.npz`` (``W_enc`` [d_in, width], ``W_dec`` [width, d_in], ``b_enc``,
``b_dec``, ``threshold``), JumpReLU SAEs that do not subtract ``b_dec`` before encoding.

Hub layout of a suite (``google/gemma-scope-2b-pt-res``, ``-mlp``, ``-att``)::

    <root>/layer_<N>/width_<W>/average_l0_<X>/params.npz

The suite names the hook: ``res`` → ``blocks.N.hook_resid_post``, ``mlp`` → ``blocks.N.hook_mlp_out``,
``att`` → ``blocks.N.attn.hook_z``. Where a layer has several widths the smallest is taken unless ``width``
says otherwise; where a width has several L0s the one closest to ``l0`` (default 100, as Sparse Feature
Circuits does) is taken.
"""

from __future__ import annotations

import io
import logging
import re
from pathlib import Path

from ..fileio import atomic_write_bytes
from . import _io
from .base import SAE, Dictionary

log = logging.getLogger(__name__)

FORMAT = "gemma_scope"
PARAMS_FILE = "params.npz"
SUITES = {"res": "blocks.{layer}.hook_resid_post", "mlp": "blocks.{layer}.hook_mlp_out",
          "att": "blocks.{layer}.attn.hook_z"}
DEFAULT_L0 = 100.0

_LAYER = re.compile(r"^layer_(\d+)$")
_WIDTH = re.compile(r"^width_(\d+)([km]?)$")
_L0 = re.compile(r"^average_l0_(\d+(?:\.\d+)?)$")


def _width_value(name: str) -> int:
    m = _WIDTH.match(name)
    return int(m.group(1)) * {"": 1, "k": 1024, "m": 1024 ** 2}[m.group(2)]


def load(path: str | Path) -> Dictionary:
    """One Gemma Scope SAE from its ``params.npz`` (or the folder holding it), source recorded."""
    path = Path(path)
    params = path / PARAMS_FILE if path.is_dir() else path
    if not params.is_file():
        raise FileNotFoundError(f"{params}: missing; a Gemma Scope SAE is a {PARAMS_FILE} (from the hub layout "
                                "layer_N/width_W/average_l0_X/params.npz)")
    state = _io.read_npz(params)
    _io.require(state, ("W_enc", "W_dec", "b_enc", "b_dec", "threshold"), params, "Gemma Scope JumpReLU SAE")
    _io.check_finite(state, params)
    W_enc = state["W_enc"]
    if W_enc.ndim != 2:
        raise ValueError(f"{params}: W_enc has shape {tuple(W_enc.shape)}, expected [d_in, width]")
    d_in, width = W_enc.shape
    _io.check_shapes(state, {"W_dec": (width, d_in), "b_enc": (width,), "b_dec": (d_in,), "threshold": (width,)},
                     params, f"Gemma Scope layout, d_in {d_in}, width {width}")
    ae = SAE(W_enc.t(), state["b_enc"], state["W_dec"].t(), state["b_dec"], activation="jumprelu",
             threshold=state["threshold"])
    return ae.with_source(FORMAT, str(params))


def save(ae: Dictionary, path: str | Path) -> Path:
    """Write a JumpReLU :class:`SAE` (no ``b_pre``) as ``params.npz`` (a file path or a folder; atomically)."""
    import numpy as np

    if not (isinstance(ae, SAE) and ae.activation == "jumprelu" and ae.b_pre is None and ae.b_dec is not None):
        raise ValueError("Gemma Scope's params.npz holds a JumpReLU SAE that does not subtract b_dec before "
                         f"encoding; this is a {type(ae).__name__} ({ae.activation}"
                         f"{', subtracting b_pre' if getattr(ae, 'b_pre', None) is not None else ''})")
    path = Path(path)
    if path.suffix != ".npz":
        path = path / PARAMS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"W_enc": ae.W_enc.t(), "W_dec": ae.W_dec.t(), "b_enc": ae.b_enc, "b_dec": ae.b_dec,
              "threshold": ae.threshold.expand(ae.width)}
    arrays = {k: v.detach().to("cpu").contiguous().numpy() for k, v in arrays.items()}

    def write(f):
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        f.write(buf.getvalue())

    atomic_write_bytes(path, write)
    return path


def find(root: str | Path, *, l0: float | None = None, width: str | None = None) -> dict[int, Path]:
    """``layer → params.npz`` under a suite folder, one per layer (width and L0 chosen as documented)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"Gemma Scope folder {root} does not exist")
    target = DEFAULT_L0 if l0 is None else float(l0)
    layers = sorted((int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _LAYER.match(p.name)))
    if not layers:
        raise FileNotFoundError(f"{root}: no layer_<N> folders; a Gemma Scope suite folder is laid out as "
                                "layer_N/width_W/average_l0_X/params.npz (as in the hub repos)")
    out: dict[int, Path] = {}
    for layer, folder in layers:
        widths = sorted((p for p in folder.iterdir() if p.is_dir() and _WIDTH.match(p.name)),
                        key=lambda p: _width_value(p.name))
        if width is not None:
            wanted = width if width.startswith("width_") else f"width_{width}"
            widths = [p for p in widths if p.name == wanted]
            if not widths:
                raise FileNotFoundError(f"{folder}: no {wanted} folder; found "
                                        f"{', '.join(p.name for p in folder.iterdir() if p.is_dir()) or 'none'}")
        if not widths:
            raise FileNotFoundError(f"{folder}: no width_<W> folders "
                                    "(expected layer_N/width_W/average_l0_X/params.npz)")
        chosen_width = widths[0]
        l0s = [(float(m.group(1)), p) for p in chosen_width.iterdir() if p.is_dir() and (m := _L0.match(p.name))
               and (p / PARAMS_FILE).is_file()]
        if not l0s:
            raise FileNotFoundError(f"{chosen_width}: no average_l0_<X>/{PARAMS_FILE}")
        value, best = min(l0s, key=lambda t: (abs(t[0] - target), t[0]))
        log.info("Gemma Scope layer %d: %s/%s (L0 %g, closest to %g of %s)", layer, chosen_width.name, best.name,
                 value, target, ", ".join(f"{v:g}" for v, _ in sorted(l0s)))
        out[layer] = best / PARAMS_FILE
    return out


def load_suite(root: str | Path, suite: str, *, l0: float | None = None,
               width: str | None = None) -> list[tuple[str, Dictionary]]:
    """``(hook name, dictionary)`` for every layer of a suite folder."""
    if suite not in SUITES:
        raise ValueError(f"unknown Gemma Scope suite {suite!r}; valid: {', '.join(SUITES)}")
    return [(SUITES[suite].format(layer=layer), load(path)) for layer, path in find(root, l0=l0, width=width).items()]


def save_suite(dictionaries: dict[int, Dictionary], root: str | Path, *, l0: dict[int, float] | None = None) -> Path:
    """Write ``{layer: dictionary}`` in the hub layout (``layer_N/width_W/average_l0_X/params.npz``)."""
    root = Path(root)
    for layer, ae in dictionaries.items():
        x = (l0 or {}).get(layer, 100)
        save(ae, root / f"layer_{layer}" / f"width_{ae.width}" / f"average_l0_{x:g}" / PARAMS_FILE)
    return root


# -- the format protocol (featurecircuits.dictionaries.formats) ------------------------------------------------
def detect(path: Path) -> bool:
    path = Path(path)
    return path.suffix == ".npz" or (path.is_dir() and (path / PARAMS_FILE).is_file())


def detect_set(root: Path) -> bool:
    root = Path(root)
    return root.is_dir() and any(p.is_dir() and _LAYER.match(p.name) for p in root.iterdir())


def _suite(part) -> str:
    suite = (part.prefix or "").removeprefix("gemma-scope-")
    if suite not in SUITES:
        raise ValueError(f"{part.target} looks like a Gemma Scope suite (layer_N/width_W/average_l0_X/params.npz); "
                         "name the suite: " + ", ".join(f"gemma-scope-{s}:<folder>" for s in SUITES))
    return suite


def load_set(part, model, *, l0=None, wanted=None) -> list[tuple[str, Dictionary, str]]:
    """Every layer of a suite folder (``l0``/``width`` from the spec's options, else ``l0``), mapped by hook."""
    from .hooks import assign
    from .hub import resolve_dictionaries

    suite = _suite(part)
    found = load_suite(resolve_dictionaries(part.target), suite, l0=part.options.get("l0", l0),
                       width=part.options.get("width"))
    found = [(hook, ae, ae.source.path) for hook, ae in found]
    return [x for x in assign(found, model, part.text()) if wanted is None or x[0] in wanted]


def _npz_shape(path: Path, key: str) -> tuple[int, ...]:
    """The shape of one array of an .npz file, read from its header (no data loaded)."""
    import zipfile

    import numpy as np

    with zipfile.ZipFile(path) as zf, zf.open(f"{key}.npy") as f:
        major, _ = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, _, _ = read(f)
    return tuple(shape)


def widths(part) -> dict[str, tuple[int, int]]:
    """(width, d_in) per layer's submodule, from ``W_enc``'s header in each chosen ``params.npz``."""
    from .hooks import nominal_submodule

    suite = _suite(part)
    chosen = find(Path(part.target).expanduser(), l0=part.options.get("l0"), width=part.options.get("width"))
    out = {}
    for layer, params in chosen.items():
        d_in, width = _npz_shape(params, "W_enc")
        out[nominal_submodule(SUITES[suite].format(layer=layer))] = (int(width), int(d_in))
    return out
