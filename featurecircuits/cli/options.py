"""Option types (checked when the command line is parsed), the option groups commands share, and the frozen
request objects each group parses into. Torch-free: ``--help`` and every check here answer before torch loads.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass, fields

from ..budget import parse_size
from ..errors import UsageError
from ..registry import DTYPES, METHODS, SPLITS, TASK_NAMES, default_dictionaries, parse_kinds, parse_methods

# --------------------------------------------------------------------------------------------------
# Types


def _int_at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer ≥ {low}, got {value}")
        return value

    parse.__name__ = f"integer ≥ {low}"
    return parse


positive_int = _int_at_least(1)
nonnegative_int = _int_at_least(0)


def threshold(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number ≥ 0, got {text!r}")
    return value


def thresholds_list(text: str) -> list[float]:
    items = [t.strip() for t in text.split(",")]
    if not items or any(not t for t in items):
        raise argparse.ArgumentTypeError(f"empty item in {text!r} (expected comma-separated numbers)")
    return [threshold(t) for t in items]


def _argument_type(parse, name: str):
    """A parser raising ValueError turned into an option type (argparse prints the message)."""
    def convert(text: str):
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = name
    return convert


def _lrp(text: str):
    from ..config import LRPConfig

    return LRPConfig.parse(text)


rules = _argument_type(_lrp, "rules")
rule_sets = _argument_type(lambda text: [_lrp(part) for part in text.split(";")], "rule sets")
methods = _argument_type(parse_methods, "methods")
size = _argument_type(parse_size, "size")
kinds = _argument_type(parse_kinds, "kinds")

KINDS_HELP = ("candidate submodule kinds among embed, z (attention output projection's input, hook_z), attn, mlp, "
              "resid, e.g. attn,mlp (default: every submodule with a dictionary; without dictionaries all but z); "
              "kinds left out are neither candidates nor ablated. At component level every resid_l is a cut of the "
              "whole model, so leave resid out to find attention/MLP circuits")


def from_args(cls, args: argparse.Namespace, **values):
    """A frozen request dataclass from the parsed options of the same names (``values`` override)."""
    return cls(**{f.name: values[f.name] if f.name in values else getattr(args, f.name)
                  for f in fields(cls) if f.name in values or hasattr(args, f.name)})


# --------------------------------------------------------------------------------------------------
# Groups


@dataclass(frozen=True)
class ModelOptions:
    model: str = "organism"
    dictionaries: str | None = None
    dtype: str | None = None
    device: str | None = None
    device_map: str | None = None
    offload_folder: str | None = None
    memory_budget: int | None = None  # bytes (--memory-budget; commands without the option: None)

    @property
    def dictionaries_spec(self) -> str:
        """--dictionaries, or the default for --model (its known dictionary set, else component level)."""
        return self.dictionaries if self.dictionaries is not None else default_dictionaries(self.model)

    def placement(self) -> dict:
        """--dtype, --device and --device-map as load_model options (device_map: 'auto' or a JSON object)."""
        out = {"dtype": self.dtype, "device": self.device}
        if self.device_map is not None:
            try:
                text = self.device_map
                out["device_map"] = json.loads(text) if text.lstrip().startswith("{") else text
            except json.JSONDecodeError as exc:
                raise UsageError(f"--device-map {self.device_map!r} is not 'auto' or a JSON object "
                                 f"({exc.msg})") from None
            out["offload_folder"] = self.offload_folder
        return out


def add_placement(p) -> None:
    p.add_argument("--dtype", choices=list(DTYPES[:2]), default=None,
                   help="load the model (and its dictionaries) in this dtype (default: as stored)")
    p.add_argument("--device", default=None, help="e.g. cpu, cuda, cuda:1 (default: where the model loads)")
    p.add_argument("--device-map", default=None,
                   help="accelerate device map: 'auto' or a JSON object of module path → device/'cpu'/'disk', to "
                        "shard a model across GPUs or offload it; dictionaries go with their submodule")
    p.add_argument("--offload-folder", default=None, help="folder for weights offloaded to 'disk' by --device-map")


def add_model(p, *, dictionaries: bool = True) -> None:
    p.add_argument("--model", default="organism",
                   help="'organism', a local directory, a hub id, 'smollm2' or a .gguf file")
    if dictionaries:
        p.add_argument("--dictionaries", default=None,
                       help="dictionary root ('organism', a folder, a published name or hub repo id), "
                            "saelens:<folder-or-release>, gemma-scope-res|mlp|att:<folder>[@l0=N,width=W] (several "
                            "joined by '+'; see docs/dictionaries.md), 'neurons' (identity baseline) or 'none' "
                            "(component level); default: the set known for --model (organism → organism, "
                            "EleutherAI/pythia-70m-deduped → pythia-70m-deduped), else none")
    add_placement(p)


BUDGET_HELP = ("memory the run may add over the loaded model and dictionaries, e.g. 4GiB, 512MiB, 2G (K, M, G, T and "
               "KiB … TiB: powers of 1024; KB … TB: of 1000): the largest batch whose planned peak fits is used (pairs "
               "per forward/backward; for features, tokens per forward, at most the default) and reported on stderr; "
               "a budget too small for a batch of one is refused with the smallest that fits. On CPU it bounds the "
               "process's peak resident memory over what it holds once the model and dictionaries are loaded; on "
               "CUDA torch.cuda.max_memory_allocated over the memory allocated before the run. With --batch-size "
               "too, the smaller of the two batches is used")


def add_budget(p) -> None:
    """--memory-budget, for the commands that choose their batch with :func:`inputs.batch_size`."""
    p.add_argument("--memory-budget", type=size, default=None, metavar="SIZE", help=BUDGET_HELP)


DEFAULT_N_EXAMPLES = 100


@dataclass(frozen=True)
class TaskOptions:
    task: str
    n_examples: int | None  # None: not given (the default, or all a generator can make)
    batch_size: int = 32
    seed: int = 0
    split: str = "all"  # discovery, evaluation or all (featurecircuits.splits)
    batch_size_given: bool = False  # --batch-size on the command line (it then caps --memory-budget's batch)

    @property
    def n(self) -> int:
        return DEFAULT_N_EXAMPLES if self.n_examples is None else self.n_examples


class _Given(argparse.Action):
    """Stores the value and records that the option was given (a default cannot tell)."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        setattr(namespace, f"{self.dest}_given", True)


def add_task(p, *, n_flag: str = "--n-examples", default_task: str | None = None, batch_size: int = 32) -> None:
    p.add_argument("--task", required=default_task is None, default=default_task,
                   help=f"a JSONL file or a task name ({', '.join(TASK_NAMES)})")
    p.add_argument(n_flag, dest="n_examples", type=positive_int, default=None,
                   help=f"use the first N pairs of the task (a task name generates N) (default: {DEFAULT_N_EXAMPLES})")
    p.add_argument("--batch-size", type=positive_int, default=batch_size, action=_Given,
                   help="pairs per forward/backward pass")
    p.set_defaults(batch_size_given=False)
    p.add_argument("--seed", type=int, default=0, help="seed for generated tasks")


SPLIT_HELP = {"discover": "the task's pairs that find the circuit: discovery (disjoint from evaluation), evaluation "
                          "or all (see docs/splits.md)",
              "evaluate": "the task's pairs to evaluate on: evaluation (held out from the discovery pairs that find "
                          "circuits), discovery or all (both in-sample: a warning says so)",
              "curve": "the pairs each circuit is evaluated on: evaluation (held out; nodes are scored on the "
                       "discovery pairs), discovery or all (in-sample: a warning says so)"}


def add_split(p, command: str, default: str) -> None:
    p.add_argument("--split", choices=list(SPLITS), default=default, help=SPLIT_HELP[command])


@dataclass(frozen=True)
class AttributionOptions:
    method: str = "relp"
    direction: str = "noising"
    rules: object = None  # an LRPConfig, or a list of them (compare sweeps them)
    ig_steps: int = 10

    def config(self, method: str | None = None, rules=None):
        from ..config import AttributionConfig, LRPConfig

        lrp = rules if rules is not None else self.rules
        lrp = lrp[0] if isinstance(lrp, list) else lrp
        return AttributionConfig(method=method or self.method, direction=self.direction, lrp=lrp or LRPConfig(),
                                 ig_steps=self.ig_steps)


def add_attribution(p, *, method: bool = True, direction: bool = True, sweep: bool = False) -> None:
    if method:
        p.add_argument("--method", choices=list(METHODS), default="relp", help="attribution method")
    rules_help = ("LRP rules for relp: default (the family's), gradient, paper, then key=value overrides, "
                  "e.g. 'attention=ah' or 'gradient,gate=half' (keys: norm, act, linear, attention, gate, "
                  "qk_norm, epsilon, gamma)")
    if sweep:
        p.add_argument("--rules", type=rule_sets, action="extend", default=None,
                       help=rules_help + "; repeat --rules or separate rule sets with ';' to sweep them "
                                         "(AP is computed once and reused)")
    else:
        p.add_argument("--rules", type=rules, default="default", help=rules_help)
    p.add_argument("--ig-steps", type=positive_int, default=10, help="integrated-gradients steps")
    if direction:
        p.add_argument("--direction", choices=["noising", "denoising"], default="noising",
                       help="noising: scores on the clean run, patch values patched in (Sparse Feature "
                            "Circuits); denoising: the reverse")


@dataclass(frozen=True)
class AblationOptions:
    ablation: str = "mean"
    errors: str = "ablate"
    start_layer: int = 0
    no_embed: bool = False

    def config(self):
        from ..config import AblationConfig

        return AblationConfig(ablation=self.ablation, errors=self.errors, start_layer=self.start_layer,
                              include_embed=not self.no_embed)


def add_ablation(p) -> None:
    p.add_argument("--ablation", choices=["mean", "zero", "resample"], default="mean",
                   help="what ablated nodes are set to: their mean over the patch prompts, zero, or another "
                        "example's patch value")
    p.add_argument("--errors", choices=["ablate", "keep", "remove"], default="ablate",
                   help="error terms: ablated like features, always kept, or always zeroed")
    p.add_argument("--start-layer", type=nonnegative_int, default=0,
                   help="never ablate submodules of earlier layers (Sparse Feature Circuits uses 2)")
    p.add_argument("--no-embed", action="store_true", help="never ablate the embedding")


@dataclass(frozen=True)
class RunOptions:
    run_dir: str | None = None
    resume: bool = False
    restart: bool = False


def add_resumable(p) -> None:
    p.add_argument("--run-dir", help="folder keeping completed batches/methods while the run goes "
                                      "(default: beside --out, OUT.run); one run at a time; removed when the run "
                                      "finishes")
    again = p.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true",
                       help="continue an interrupted run from its run folder (same command and options; every "
                            "checkpoint is checked against its recorded hash)")
    again.add_argument("--restart", action="store_true",
                       help="discard an interrupted run in the run folder and start afresh (without --resume or "
                            "--restart, a run folder holding an interrupted run is an error)")


def add_kinds(p) -> None:
    p.add_argument("--kinds", type=kinds, default=None, help=KINDS_HELP)


@dataclass(frozen=True)
class FeatureOptions:
    features: str | None = None  # a dossier folder; None: cached dossiers of these dictionaries; "none": no cards
    labels: str | None = None

    def dossiers(self, model, dictionaries):
        """The dossiers to label and show cards with (None where there are none)."""
        if self.features == "none" or not dictionaries:
            return None
        from ..features.circuits import find_dossiers, load_dossiers

        if self.features is None:
            return find_dossiers(model, dictionaries)
        return load_dossiers(self.features, model, dictionaries)

    def read_labels(self):
        if self.labels is None:
            return None
        from ..features.circuits import read_label_file

        return read_label_file(self.labels)


def add_features(p) -> None:
    p.add_argument("--features", help="feature dossiers (a folder written by `featurecircuits features --out`) for "
                                      "labels and feature cards; 'none' for none (default: the cached dossiers of "
                                      "these dictionaries, where `featurecircuits features` built some)")
    p.add_argument("--labels", help="feature labels: CSV node_id,label, a JSON object node id → label, or a "
                                    "Neuronpedia explanations export (JSON); they win over automatic labels")


# --------------------------------------------------------------------------------------------------
# Parsers


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except where there is none to show (flags, options without default)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if ("%(default)" in text or "(default:" in text or not action.option_strings or action.default is None
                or action.default is False or action.default is argparse.SUPPRESS
                or isinstance(action, (argparse._HelpAction, argparse._VersionAction))):
            return text
        return text + " (default: %(default)s)"


def _shared_options() -> argparse.ArgumentParser:
    """-v and --debug, accepted before or after the subcommand."""
    shared = argparse.ArgumentParser(add_help=False)
    shared.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="log progress details")
    shared.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="print the traceback of an unexpected error")
    return shared


class Parser(argparse.ArgumentParser):
    """Every (sub)command shows defaults and takes -v/--debug."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        if kwargs.get("add_help", True):
            kwargs.setdefault("parents", [_shared_options()])
        super().__init__(*args, **kwargs)
