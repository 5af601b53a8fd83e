"""``featurecircuits organism train|card``: rebuild the bundled model organism, or re-measure its card."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError
from ..paths import DICTIONARY_ROOT, ORGANISM_DIR
from .guards import check_outputs
from .options import from_args, positive_int

NAME = "organism"
HELP = "the bundled model organism"


def add_arguments(p) -> None:
    sub = p.add_subparsers(dest="organism_command", required=True)
    train = sub.add_parser("train", help="train the model and its SAEs from a seed, then write the card")
    train.add_argument("--out", help="a new folder: writes DIR/model and DIR/dictionaries (required unless "
                                     "--replace-shipped)")
    train.add_argument("--replace-shipped", action="store_true",
                       help="overwrite the shipped organism (models/organism, dictionaries/organism) instead")
    train.add_argument("--seed", type=int, default=0, help="random seed")
    train.add_argument("--steps", type=positive_int, help="model training steps (default 3000)")
    train.add_argument("--sae-steps", type=positive_int, help="SAE training steps (default 1200)")
    train.add_argument("--saes-only", action="store_true",
                       help="keep the saved model, retrain the SAEs (with --replace-shipped)")
    train.add_argument("--no-card", action="store_true", help="do not measure the model and write its card")
    train.set_defaults(request=TrainRequest, run=run_train)
    card = sub.add_parser("card", help="measure the organism and write its model card")
    card.add_argument("--out", help="the DIR given to `organism train --out` (default: shipped)")
    card.set_defaults(request=CardRequest, run=run_card)


def _dirs(out: str | None) -> tuple[str, str]:
    if out:
        return f"{out}/model", f"{out}/dictionaries"
    return str(ORGANISM_DIR), str(DICTIONARY_ROOT / "organism")


@dataclass(frozen=True)
class TrainRequest:
    out: str | None
    replace_shipped: bool
    seed: int
    steps: int | None
    sae_steps: int | None
    saes_only: bool
    no_card: bool

    @classmethod
    def from_args(cls, args) -> TrainRequest:
        return from_args(cls, args)


def _check_train(req: TrainRequest) -> None:
    if req.out and req.replace_shipped:
        raise UsageError("give --out DIR (a new folder) or --replace-shipped, not both")
    if not req.out and not req.replace_shipped:
        raise UsageError("--out DIR is required (a new folder for DIR/model and DIR/dictionaries); "
                         "--replace-shipped overwrites the shipped organism instead")
    if req.out:
        out = Path(req.out)
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise UsageError(f"--out {out} exists and is not an empty folder; give a new folder")
        check_outputs({}, {}, {"--out": (req.out, ["model", "dictionaries"])})
    if req.saes_only and req.out:
        raise UsageError("--saes-only retrains the SAEs of a saved model; it needs --replace-shipped")


def run_train(req: TrainRequest) -> int:
    _check_train(req)
    from ..organism.card import write_card
    from ..organism.train import OrganismConfig, build

    model_dir, dict_dir = _dirs(req.out)
    cfg = OrganismConfig(seed=req.seed, **({"steps": req.steps} if req.steps else {}),
                         **({"sae_steps": req.sae_steps} if req.sae_steps else {}))
    info = build(model_dir, dict_dir, cfg, progress=True, saes_only=req.saes_only)
    print(f"model: {Path(model_dir)} ({info['seconds_model']:.0f} s), SAEs: {Path(dict_dir)} "
          f"({info['seconds_saes']:.0f} s)")
    if not req.no_card:
        write_card(model_dir, dict_dir)
        print(f"card: {Path(model_dir) / 'README.md'}")
    return 0


@dataclass(frozen=True)
class CardRequest:
    out: str | None

    @classmethod
    def from_args(cls, args) -> CardRequest:
        return from_args(cls, args)


def run_card(req: CardRequest) -> int:
    if req.out and not (Path(req.out) / "model").is_dir():
        raise UsageError(f"--out {req.out}: no model folder {Path(req.out) / 'model'} (give the DIR of "
                         "`organism train --out DIR`)")
    from ..organism.card import write_card
    from ..report import table

    model_dir, dict_dir = _dirs(req.out)
    figures = write_card(model_dir, dict_dir)
    rows = [{"task": t, "group": g, "acc clean": f"{r['acc_clean']:.1%}", "LD clean": f"{r['ld_clean']:.2f}",
             "acc patch": f"{r['acc_patch']:.1%}", "LD patch": f"{r['ld_patch']:.2f}"}
            for t, groups in figures["tasks"].items() for g, r in groups.items()]
    print(table(rows, list(rows[0])))
    print(f"card written to {model_dir}/README.md")
    return 0
