"""``featurecircuits plan``: peak memory estimated from shapes alone (no weights loaded)."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UsageError
from ..registry import DTYPES, PLANNED_METHODS
from .options import from_args, positive_int

NAME = "plan"
HELP = "estimate peak memory from shapes alone (no weights loaded)"


def add_arguments(p) -> None:
    p.add_argument("--model", required=True,
                   help="a hub id, a local model folder, a config.json file, or 'organism' (config only)")
    p.add_argument("--dictionaries", help="a dictionaries spec (as --dictionaries of discover): widths come from "
                                          "its configs (no weights read)")
    p.add_argument("--width", type=positive_int,
                   help="one dictionary width for every submodule (instead of --dictionaries)")
    p.add_argument("--submodules", help="comma-separated submodules with dictionaries (default: all)")
    p.add_argument("--batch", type=positive_int, required=True, help="prompt pairs per attribution call")
    p.add_argument("--tokens", type=positive_int, required=True, help="tokens per prompt")
    p.add_argument("--method", choices=list(PLANNED_METHODS), default="relp", help="attribution method")
    p.add_argument("--dtype", choices=list(DTYPES[:3]), default="float32", help="dtype of the model and dictionaries")
    p.add_argument("--logit-positions", type=int, default=1,
                   help="final positions whose logits the metric reads (default 1, the logit difference; 0: all)")
    p.add_argument("--l0", type=float, default=None,
                   help="features active per token in either run: plan the sparse path that discover and curve "
                        "run (default: the dense path, an upper bound)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")


@dataclass(frozen=True)
class Request:
    model: str
    dictionaries: str | None
    width: int | None
    submodules: str | None
    batch: int
    tokens: int
    method: str
    dtype: str
    logit_positions: int
    l0: float | None
    json: bool

    @classmethod
    def from_args(cls, args) -> Request:
        return from_args(cls, args)


def _widths(req: Request):
    """Dictionary widths: from the spec's configs, one --width for all, or None (component level)."""
    from ..dictionaries import dictionary_widths
    from ..nodes import submodule_kind_layer

    if req.dictionaries and req.width:
        raise UsageError("give --dictionaries (widths read from their configs) or --width, not both")
    widths = dictionary_widths(req.dictionaries) if req.dictionaries else req.width
    if widths is None or not req.submodules:
        return widths
    names = [n.strip() for n in req.submodules.split(",") if n.strip()]
    for name in names:
        submodule_kind_layer(name)  # raises, naming the valid forms
    if isinstance(widths, int):
        return dict.fromkeys(names, widths)
    missing = [n for n in names if n not in widths]
    if missing:
        raise UsageError(f"no dictionary for {', '.join(missing)}; found: {', '.join(widths)}")
    return {n: widths[n] for n in names}


def run(req: Request) -> int:
    import json

    from ..plan import plan

    p = plan(req.model, _widths(req), req.batch, req.tokens, method=req.method, dtype=req.dtype,
             logit_positions=req.logit_positions, l0=req.l0)
    print(json.dumps(p.to_dict(), indent=1) if req.json else p.table())
    return 0
