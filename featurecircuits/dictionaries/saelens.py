"""SAELens SAE folders: ``cfg.json`` + ``sae_weights.safetensors``, read without SAELens and converted.

Tensors (SAELens layout): ``W_enc`` [d_in, d_sae], ``W_dec`` [d_sae, d_in], ``b_enc`` [d_sae], ``b_dec``
[d_in]; ``threshold`` (or ``log_threshold``) for ``jumprelu``; ``b_gate``, ``b_mag``, ``r_mag`` (and no
``b_enc``) for ``gated``. Architectures: ``standard`` (ReLU), ``jumprelu``, ``topk`` (``k``; with
``rescale_acts_by_decoder_norm`` the decoder norms are folded into the encoder, as SAELens's own
``fold_W_dec_norm`` does), ``gated``. ``apply_b_dec_to_input`` subtracts ``b_dec`` before encoding.

Configs: SAELens 6 (``metadata.hook_name``, ``architecture``, ``k``) and older ones (top-level
``hook_name`` or ``hook_point``, ``hook_layer``/``hook_point_layer``, ``activation_fn_str`` with
``activation_fn_kwargs.k``, a ``scaling_factor`` tensor with ``finetuning_scaling_factor``).

``normalize_activations``: ``none`` is the SAE as stored; ``expected_average_only_in`` (one dataset-wide
input scale) is folded into the weights when its factor is known (``norm_scaling_factor`` in cfg.json or
the ``norm_scaling_factor=`` argument), as SAELens does for releases. ``constant_norm_rescale`` and
``layer_norm`` rescale each token by its own norm, so the reconstruction is not an affine function of the
features — our splice and closed-form edges need that — and are refused, as is ``covariance_whitening``
(its statistics are not in the folder).

Release ids (``saelens:<release>``) need the optional extra: ``pip install "featurecircuits[saelens]"``.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from ..fileio import atomic_write_bytes, atomic_write_text
from . import _io
from .base import SAE, Dictionary, GatedSAE

log = logging.getLogger(__name__)

FORMAT = "saelens"
CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
ARCHITECTURES = ("standard", "jumprelu", "topk", "gated")
NORMALIZATIONS = ("none", "expected_average_only_in")
EXTRA_HINT = 'pip install "featurecircuits[saelens]"'


@dataclass(frozen=True)
class SAELensConfig:
    """What featurecircuits reads from a cfg.json (either layout)."""

    architecture: str
    d_in: int | None
    d_sae: int | None
    hook_name: str
    hf_hook_name: str | None
    hook_head_index: int | None
    apply_b_dec_to_input: bool
    normalize_activations: str
    k: int | None
    rescale_acts_by_decoder_norm: bool
    finetuning_scaling_factor: bool
    norm_scaling_factor: float | None
    model_name: str


def is_sae_folder(folder: Path) -> bool:
    return (folder / CFG_FILE).is_file() and (folder / WEIGHTS_FILE).is_file()


def _normalization(norm, where) -> str:
    """``normalize_activations`` as one of NORMALIZATIONS, or an error saying why it cannot be read."""
    if norm is None or norm is False:
        return "none"
    if norm is True:  # pre-6 boolean: the April-2024 dataset-wide scale
        return "expected_average_only_in"
    if norm not in NORMALIZATIONS:
        why = ("rescales each token by its own norm, so the reconstruction is not an affine function of the features"
               if norm in ("constant_norm_rescale", "layer_norm") else
               "needs whitening statistics that are not in the folder" if norm == "covariance_whitening" else
               "is unknown")
        raise ValueError(f"{where}: normalize_activations {norm!r} is not supported: it {why}. Supported: "
                         f"{', '.join(NORMALIZATIONS)} (fold the normalisation into the weights first, e.g. "
                         "SAELens's fold_activation_norm_scaling_factor / fold_activation_whitening)")
    return norm


def check_scale(value, where, key: str) -> float | None:
    """A scale factor (``norm_scaling_factor``): None, or a finite number > 0; else an error naming the key."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{where}: {key} is {value!r}; a scale factor must be a finite number > 0 (it multiplies "
                         "every input of the SAE): fix or remove it")
    return float(value)


def parse_config(cfg: dict, where: Path | str = CFG_FILE) -> SAELensConfig:
    """Normalise a SAELens cfg.json (v6 ``metadata`` layout or older flat layouts)."""
    meta = cfg.get("metadata") if isinstance(cfg.get("metadata"), dict) else {}

    def get(*keys, default=None):
        for key in keys:
            for source in (meta, cfg):
                if source.get(key) is not None:
                    return source[key]
        return default

    activation_fn = get("activation_fn", "activation_fn_str", default="relu")
    kwargs = get("activation_fn_kwargs", default={}) or {}
    architecture = cfg.get("architecture") or ("topk" if activation_fn == "topk" else "standard")
    if architecture not in ARCHITECTURES:
        raise ValueError(f"{where}: SAELens architecture {architecture!r} is not supported; featurecircuits reads "
                         f"{', '.join(ARCHITECTURES)}")
    if architecture == "standard" and activation_fn not in ("relu", None):
        raise ValueError(f"{where}: activation function {activation_fn!r} is not supported for a standard SAE "
                         "(only relu; topk is its own architecture)")
    k = cfg.get("k", kwargs.get("k") if isinstance(kwargs, dict) else None)
    if architecture == "topk":
        if k is None:
            raise ValueError(f"{where}: a topk SAE needs k in its config (cfg.json 'k' or activation_fn_kwargs.k)")
        if int(k) != k or int(k) < 1:
            raise ValueError(f"{where}: k must be a positive integer, got {k!r}")
    norm = _normalization(cfg.get("normalize_activations", "none"), where)
    hook = get("hook_name", "hook_point", default="")
    head = get("hook_head_index", "hook_point_head_index")
    if head is not None:
        raise ValueError(f"{where}: the SAE reads a single attention head (hook_head_index {head}); featurecircuits "
                         "splices SAEs on whole submodule outputs only")
    if cfg.get("reshape_activations") == "hook_z" and not str(hook).endswith("hook_z"):
        raise ValueError(f"{where}: reshape_activations is 'hook_z' but the hook is {hook!r}")
    return SAELensConfig(
        architecture=architecture,
        d_in=None if cfg.get("d_in") is None else int(cfg["d_in"]),
        d_sae=None if cfg.get("d_sae") is None else int(cfg["d_sae"]),
        hook_name=str(hook),
        hf_hook_name=get("hf_hook_name"),
        hook_head_index=head,
        apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", True)),
        normalize_activations=norm,
        k=None if k is None else int(k),
        rescale_acts_by_decoder_norm=bool(cfg.get("rescale_acts_by_decoder_norm", False)),
        finetuning_scaling_factor=bool(cfg.get("finetuning_scaling_factor", False)),
        norm_scaling_factor=check_scale(get("norm_scaling_factor"), where, "norm_scaling_factor"),
        model_name=str(get("model_name", default="")),
    )


def from_state(cfg: SAELensConfig, state: dict[str, torch.Tensor], where: Path | str = WEIGHTS_FILE, *,
               norm_scaling_factor: float | None = None) -> Dictionary:
    """Our :class:`SAE`/:class:`GatedSAE` from SAELens tensors, with SAELens's arithmetic."""
    state = dict(state)
    arch = cfg.architecture
    if "log_threshold" in state and "threshold" not in state:
        state["threshold"] = state.pop("log_threshold").exp()
    needed = {"standard": ("W_enc", "b_enc", "W_dec", "b_dec"), "jumprelu": ("W_enc", "b_enc", "W_dec", "b_dec",
              "threshold"), "topk": ("W_enc", "b_enc", "W_dec", "b_dec"),
              "gated": ("W_enc", "b_gate", "b_mag", "r_mag", "W_dec", "b_dec")}[arch]
    _io.require(state, needed, where, f"SAELens {arch} SAE")
    _io.check_finite(state, where)
    if state["W_enc"].ndim != 2:
        raise ValueError(f"{where}: W_enc has shape {tuple(state['W_enc'].shape)}, expected [d_in, d_sae]")
    d_in, d_sae = state["W_enc"].shape
    for name, value, actual in (("d_in", cfg.d_in, d_in), ("d_sae", cfg.d_sae, d_sae)):
        if value is not None and value != actual:
            raise ValueError(f"{where}: cfg.json says {name} = {value}, but W_enc has shape "
                             f"{tuple(state['W_enc'].shape)} ([d_in, d_sae]); the config and the weights do not "
                             "belong together")
    vec = (d_sae,)
    _io.check_shapes(state, {"W_dec": (d_sae, d_in), "b_enc": vec, "b_dec": (d_in,), "b_gate": vec, "b_mag": vec,
                             "r_mag": vec, "threshold": vec if state.get("threshold", torch.zeros(1)).ndim else (),
                             "scaling_factor": vec}, where, f"SAELens layout, d_in {d_in}, d_sae {d_sae}")
    W_enc, W_dec, b_dec = state["W_enc"], state["W_dec"], state["b_dec"]
    b_enc = state.get("b_enc")
    scale = state.get("scaling_factor")
    if scale is not None and bool((scale == 0).any()):
        raise ValueError(f"{where}: tensor 'scaling_factor' holds {int((scale == 0).sum())} zero(s); a scale factor "
                         "must be nonzero (a zero silences its feature's decoder): fix the weights")
    if scale is not None and not torch.all(scale == 1):
        if not cfg.finetuning_scaling_factor:
            raise ValueError(f"{where}: holds a scaling_factor that is not all ones but cfg.json has "
                             "finetuning_scaling_factor false; which one is right is unclear")
        W_dec = W_dec * scale[:, None]  # decode(f) = (f ⊙ s) W_dec + b_dec
    if cfg.normalize_activations == "expected_average_only_in":
        factor = check_scale(norm_scaling_factor, "the norm_scaling_factor argument", "norm_scaling_factor") \
            if norm_scaling_factor is not None else cfg.norm_scaling_factor
        if factor is None:
            raise ValueError(f"{where}: normalize_activations is 'expected_average_only_in' but the dataset-wide "
                             "scaling factor is not known; pass norm_scaling_factor=... (SAELens releases list it) "
                             "or add 'norm_scaling_factor' to cfg.json")
        # the SAE sees x·s and its output is divided by s: fold s into the weights (SAELens does the same)
        W_enc, W_dec, b_dec = W_enc * factor, W_dec / factor, b_dec / factor
    b_pre = b_dec if cfg.apply_b_dec_to_input else None
    if arch == "gated":
        return GatedSAE(W_enc.t(), state["b_gate"], state["b_mag"], state["r_mag"], W_dec.t(), b_dec, b_pre=b_pre)
    if arch == "topk":
        if cfg.rescale_acts_by_decoder_norm:  # topk of (x W + b)·‖W_dec_i‖, decoded by W_dec_i/‖W_dec_i‖
            norms = W_dec.norm(dim=-1)
            W_enc, b_enc, W_dec = W_enc * norms, b_enc * norms, W_dec / norms[:, None]
        return SAE(W_enc.t(), b_enc, W_dec.t(), b_dec, b_pre=b_pre, activation="topk", k=cfg.k)
    if arch == "jumprelu":
        return SAE(W_enc.t(), b_enc, W_dec.t(), b_dec, b_pre=b_pre, activation="jumprelu",
                   threshold=state["threshold"])
    return SAE(W_enc.t(), b_enc, W_dec.t(), b_dec, b_pre=b_pre)


def read(path: str | Path) -> tuple[SAELensConfig, Path]:
    """The parsed config of an SAE folder (or its cfg.json) and the folder."""
    path = Path(path)
    folder = path.parent if path.name == CFG_FILE or path.name == WEIGHTS_FILE else path
    if not folder.is_dir():
        raise FileNotFoundError(f"SAELens SAE folder {folder} does not exist")
    cfg_path = folder / CFG_FILE
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{cfg_path}: missing; a SAELens SAE folder holds {CFG_FILE} and {WEIGHTS_FILE}")
    return parse_config(_io.read_json(cfg_path, "SAELens cfg.json"), cfg_path), folder


def load(path: str | Path, *, norm_scaling_factor: float | None = None) -> Dictionary:
    """One SAELens SAE from its folder, converted to our interface, source recorded."""
    cfg, folder = read(path)
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: missing; a SAELens SAE folder holds {CFG_FILE} and {WEIGHTS_FILE}")
    state = _io.read_safetensors(weights)
    ae = from_state(cfg, state, weights, norm_scaling_factor=norm_scaling_factor)
    ae.hook_name = cfg.hook_name  # where it reads, for sets
    ae.hf_hook_name = cfg.hf_hook_name
    return ae.with_source(FORMAT, str(folder))


def convert(sae) -> Dictionary:
    """A SAELens ``SAE`` object in memory (e.g. from ``SAE.from_pretrained``), converted."""
    cfg_dict = sae.cfg.to_dict() if hasattr(sae.cfg, "to_dict") else dict(vars(sae.cfg))
    state = {k: v.detach().cpu() for k, v in sae.state_dict().items()}
    where = f"SAELens SAE {cfg_dict.get('metadata', {}).get('hook_name', '')}"
    cfg = parse_config(json.loads(json.dumps(cfg_dict, default=str)), where)
    ae = from_state(cfg, state, where)
    ae.hook_name, ae.hf_hook_name = cfg.hook_name, cfg.hf_hook_name
    return ae


# -- writing ---------------------------------------------------------------------------------------------------
def to_saelens(ae: Dictionary) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config fields, tensors) of one of our dictionaries in SAELens's layout."""
    if isinstance(ae, GatedSAE):
        arch, extra = "gated", {"b_gate": ae.b_gate, "b_mag": ae.b_mag, "r_mag": ae.r_mag}
    elif isinstance(ae, SAE):
        arch = {"relu": "standard", "jumprelu": "jumprelu", "topk": "topk"}[ae.activation]
        extra = {"b_enc": ae.b_enc}
        if ae.threshold is not None:
            extra["threshold"] = ae.threshold.expand(ae.width)
    else:
        raise ValueError(f"cannot write a {type(ae).__name__} ({ae.activation}) as a SAELens SAE")
    b_dec = ae.b_dec if getattr(ae, "b_dec", None) is not None else torch.zeros(ae.d_in, dtype=ae.W_enc.dtype)
    if ae.b_pre is not None and not torch.equal(ae.b_pre, b_dec):
        raise ValueError("SAELens can only subtract b_dec before encoding (apply_b_dec_to_input); this dictionary "
                         "subtracts another vector")
    tensors = {"W_enc": ae.W_enc.t(), "W_dec": ae.W_dec.t(), "b_dec": b_dec, **extra}
    fields = {"architecture": arch, "d_in": ae.d_in, "d_sae": ae.width,
              "apply_b_dec_to_input": ae.b_pre is not None, "normalize_activations": "none",
              "reshape_activations": "none"}
    if arch == "topk":
        fields.update(k=ae.k, rescale_acts_by_decoder_norm=False)
    return fields, {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}


def save(ae: Dictionary, folder: str | Path, *, hook_name: str, model_name: str = "",
         hf_hook_name: str | None = None) -> Path:
    """Write ``cfg.json`` (SAELens 6 layout) + ``sae_weights.safetensors`` (atomically)."""
    from safetensors.torch import save as save_bytes

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fields, tensors = to_saelens(ae)
    if hook_name.endswith("hook_z"):  # SAELens flattens (…, heads, head_dim) only when told so
        fields["reshape_activations"] = "hook_z"
    dtype = str(next(iter(tensors.values())).dtype).removeprefix("torch.")
    cfg = {**fields, "dtype": dtype, "device": "cpu",
           "metadata": {"model_name": model_name, "hook_name": hook_name, "hook_head_index": None,
                        "sae_lens_version": "6.0.0", "prepend_bos": True, "hf_hook_name": hf_hook_name,
                        "written_by": "featurecircuits"}}
    atomic_write_bytes(folder / WEIGHTS_FILE, lambda f: f.write(save_bytes(tensors)))
    atomic_write_text(folder / CFG_FILE, json.dumps(cfg, indent=2))
    return folder


def save_set(dictionaries: dict[str, Dictionary], model, root: str | Path, *, model_name: str = "") -> Path:
    """A dictionary set as a folder of SAELens SAE folders, one per submodule (``<root>/<hook>/``)."""
    from .hooks import hook_for_submodule

    root = Path(root)
    for name, ae in dictionaries.items():
        hook = hook_for_submodule(name, model)
        save(ae, root / hook, hook_name=hook, model_name=model_name or str(model.name))
    return root


# -- releases (optional extra) ---------------------------------------------------------------------------------
def _sae_lens():
    try:
        import sae_lens
    except ImportError:
        raise ModuleNotFoundError(f"SAELens release ids need the optional sae-lens package: {EXTRA_HINT} "
                                  "(or download the SAE folders and pass saelens:<folder>)") from None
    return sae_lens


def release_ids(release: str) -> list[str]:
    """The SAE ids of a SAELens release, from SAELens's own registry."""
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    _sae_lens()
    directory = get_pretrained_saes_directory()
    if release not in directory:
        close = sorted(r for r in directory if release.split("-")[0] in r)[:10]
        raise ValueError(f"unknown SAELens release {release!r}" + (f"; similar: {', '.join(close)}" if close else ""))
    return list(directory[release].saes_map)


def load_release(release: str, *, select: str | None = None, device: str = "cpu") -> list[Dictionary]:
    """Every SAE of a release (ids containing ``select``, where given), through SAELens's ``from_pretrained``
    (downloads go to the Hugging Face cache), converted; each carries its ``hook_name``."""
    sae_lens = _sae_lens()
    ids = release_ids(release)
    chosen = [i for i in ids if select is None or select in i]
    if not chosen:
        raise ValueError(f"no SAE of release {release!r} matches {select!r}; its ids: {', '.join(ids[:20])}"
                         + (" …" if len(ids) > 20 else ""))
    out = []
    for sae_id in chosen:
        loaded = sae_lens.SAE.from_pretrained(release, sae_id, device=device)
        sae = loaded[0] if isinstance(loaded, tuple) else loaded
        ae = convert(sae).with_source(FORMAT, f"{release}/{sae_id}")
        ae.sae_id = sae_id
        out.append(ae)
    return out


# -- the format protocol (featurecircuits.dictionaries.formats) ------------------------------------------------
def detect(path: Path) -> bool:
    path = Path(path)
    return is_sae_folder(path) or path.name in (CFG_FILE, WEIGHTS_FILE)


def detect_set(root: Path) -> bool:
    root = Path(root)
    children = [p for p in root.iterdir() if p.is_dir()] if root.is_dir() else []
    return is_sae_folder(root) or bool(children) and all(is_sae_folder(p) for p in children)


def _folders(path: Path, select: str | None) -> list[Path]:
    """The SAE folders under ``path`` (itself, or every folder below holding both files), ``select`` applied."""
    folders = [path] if is_sae_folder(path) else sorted(
        p.parent for p in path.rglob(CFG_FILE) if (p.parent / WEIGHTS_FILE).is_file())
    if select:
        folders = [f for f in folders if select in str(f.relative_to(path))]
    if not folders:
        raise FileNotFoundError(f"{path}: no SAELens SAE folders ({CFG_FILE} + {WEIGHTS_FILE})"
                                + (f" matching {select!r}" if select else ""))
    return folders


def load_set(part, model, *, l0=None, wanted=None) -> list[tuple[str, Dictionary, str]]:
    """A folder of SAE folders, or a release id (the optional extra); each mapped by its hook."""
    from .hooks import assign

    path = Path(part.target).expanduser()
    if path.is_dir():
        found = [(ae.hook_name, ae, str(f)) for f in _folders(path, part.select) for ae in [load(f)]]
    elif path.exists() or ("/" in part.target and path.parent.exists()):
        raise FileNotFoundError(f"SAELens folder {part.target} does not exist or is not a folder")
    else:
        found = [(ae.hook_name, ae, ae.source.path) for ae in load_release(part.target, select=part.select)]
    return [x for x in assign(found, model, part.text()) if wanted is None or x[0] in wanted]


def widths(part) -> dict[str, tuple[int, int]]:
    """(width, d_in) per submodule from the ``cfg.json`` files (``d_sae``/``d_in``, the hook named there)."""
    from .hooks import nominal_submodule

    path = Path(part.target).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"SAELens folder {part.target} does not exist (the planner reads configs of local "
                                "folders only)")
    out = {}
    for folder in _folders(path, part.select):
        cfg = parse_config(_io.read_json(folder / CFG_FILE, "SAELens cfg.json"), folder / CFG_FILE)
        if not (cfg.d_sae and cfg.d_in):
            raise ValueError(f"{folder / CFG_FILE}: no d_sae and d_in; the planner needs both")
        out[nominal_submodule(cfg.hook_name, where=str(folder))] = (cfg.d_sae, cfg.d_in)
    return out
