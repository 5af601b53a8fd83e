"""Train the organism (a small Pythia-architecture GPT-NeoX) and its SAEs from a seed, on the CPU.

``train_model`` fits the language model on the synthetic corpus; ``train_saes`` fits one
dictionary_learning ``AutoEncoder`` per submodule (embed and every attn/mlp/resid output) on its
activations over fresh corpus text, all in one loop (one forward feeds all 19 dictionaries).

SAE training: a per-token *relative* objective, ``mean_t w_t·||x_t − x̂_t||² + λ·mean_t v_t·||f_t||₁`` with
``w_t ∝ 1/||x_t||²`` and ``v_t ∝ 1/||x_t||`` (each normalised to mean 1 in the batch), on activations
scaled to unit mean squared norm; decoder columns kept at unit norm (gradient projected, columns
renormalised each step); the scale folded back into the biases afterwards so the saved dictionary reads
raw activations. Why relative: with plain MSE the large-norm tokens dominate, and the last position of an
IOI prompt — whose residual norm is about 3× below average and which carries the answer — was
reconstructed worse than its mean (FVE −0.79 at resid_5), so splicing resid_5 without its error term kept
only 8 % of the IOI logit difference. With the relative objective it keeps ≥ 80 %.

Why this sparse, and rescaled: with λ = 0.04 everywhere the dictionaries were dense (mean L0 up to 80 in a
128-dimensional stream) and the subject's number was spread over so many features that a 200-node
agreement circuit kept 12 % of the logit difference under mean ablation. Sparser dictionaries concentrate
it, but the L1 penalty also shrinks every feature, which costs the IOI answer position most (resid_5 at
λ = 0.12 kept 0.43 of the IOI logit difference). ``correct_shrinkage`` therefore rescales each feature
after training (the least-squares factor under the same relative error; supports and L0 unchanged), and
λ is set per submodule (``sae_l1_per_submodule``) from a sweep over 0.04–0.12 so that every dictionary
keeps FVE ≥ 0.9 and ≥ 80 % of both tasks' logit difference. Result: a 200-node RelP circuit keeps 0.84 of
the agreement-across-a-relative-clause logit difference on held-out pairs.
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import asdict, dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from ..models import Model
from ..splice import Splice, run
from . import corpus
from .tokenizer import build_word_tokenizer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OrganismConfig:
    seed: int = 0
    n_layers: int = 6
    d_model: int = 128
    n_heads: int = 4
    d_mlp: int = 512
    seq_len: int = 32
    batch_size: int = 64
    steps: int = 3000
    lr: float = 1e-3
    warmup: int = 100
    sae_width: int = 1024
    sae_steps: int = 1200
    sae_batch_seqs: int = 32
    sae_lr: float = 1e-3
    sae_l1: float = 0.12
    # submodule → L1 coefficient where 0.12 cost too much: FVE < 0.9 (attn_0, mlp_4, mlp_5 collapsed) or
    # IOI retention < 0.8 (attn_1, resid_1..5); values chosen from a sweep over 0.04–0.12
    sae_l1_per_submodule: tuple[tuple[str, float], ...] = (
        ("attn_0", 0.09), ("attn_1", 0.09), ("mlp_4", 0.09), ("mlp_5", 0.09),
        ("resid_1", 0.07), ("resid_2", 0.1), ("resid_3", 0.1), ("resid_4", 0.1), ("resid_5", 0.05))
    sae_rescale_seqs: int = 512  # sequences of fresh text for the shrinkage correction

    def __post_init__(self):
        for name, value in asdict(self).items():
            if name not in ("seed", "sae_l1_per_submodule") and not value > 0:
                raise ValueError(f"{name} must be positive, got {value}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        for name, value in self.sae_l1_per_submodule:
            if not value > 0:
                raise ValueError(f"the L1 coefficient of {name} must be positive, got {value}")

    def l1(self, submodule: str) -> float:
        return dict(self.sae_l1_per_submodule).get(submodule, self.sae_l1)


def make_tokenizer():
    return build_word_tokenizer(corpus.vocabulary())


def model_config(cfg: OrganismConfig, tokenizer):
    from transformers import GPTNeoXConfig

    return GPTNeoXConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.d_model, num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads, intermediate_size=cfg.d_mlp, max_position_embeddings=128,
        rotary_pct=0.25, use_parallel_residual=True, hidden_act="gelu", tie_word_embeddings=False,
        attention_dropout=0.0, hidden_dropout=0.0, bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )


def _batch(rng: random.Random, tokenizer, n: int, seq_len: int) -> torch.Tensor:
    return torch.tensor([corpus.document(rng, seq_len, tokenizer) for _ in range(n)])


def _lr_at(step: int, cfg: OrganismConfig, total: int, base: float) -> float:
    if step < cfg.warmup:
        return base * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, total - cfg.warmup)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train_model(cfg: OrganismConfig, tokenizer, *, progress: bool = False) -> tuple[nn.Module, list[float]]:
    """Fit the GPT-NeoX on the corpus; returns the model and the loss every 50 steps."""
    from transformers import GPTNeoXForCausalLM

    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    model = GPTNeoXForCausalLM(model_config(cfg, tokenizer))
    model.config._attn_implementation = "eager"
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=0.01)
    losses = []
    model.train()
    for step in tqdm(range(cfg.steps), desc="organism", disable=not progress):
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, cfg, cfg.steps, cfg.lr)
        ids = _batch(rng, tokenizer, cfg.batch_size, cfg.seq_len)
        loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 50 == 0 or step == cfg.steps - 1:
            losses.append(loss.item())
            log.info("step %d loss %.4f", step, losses[-1])
    return model.eval(), losses


class _SAETrainer:
    """One AutoEncoder with a unit-norm decoder, trained on scaled activations."""

    def __init__(self, d: int, width: int, scale: float, mean: torch.Tensor, cfg: OrganismConfig):
        from dictionary_learning import AutoEncoder

        self.ae = AutoEncoder(d, width)
        self.ae.activation_dim, self.ae.dict_size = d, width
        with torch.no_grad():
            w = torch.randn(d, width)
            w /= w.norm(dim=0, keepdim=True)
            self.ae.decoder.weight.copy_(w)
            self.ae.encoder.weight.copy_(w.t())
            self.ae.encoder.bias.zero_()
            self.ae.bias.copy_(mean / scale)
        self.scale = scale
        self.cfg = cfg
        self.opt = torch.optim.Adam(self.ae.parameters(), lr=cfg.sae_lr, betas=(0.9, 0.999))

    def step(self, x: torch.Tensor, lr: float, l1: float) -> tuple[float, float]:
        x = x / self.scale
        f = self.ae.encode(x)
        x_hat = self.ae.decode(f)
        norm = x.norm(dim=-1).clamp(min=1e-3)
        w, v = norm.pow(-2), norm.reciprocal()
        mse = ((x - x_hat).pow(2).sum(-1) * (w / w.mean())).mean()
        loss = mse + l1 * (f.abs().sum(-1) * (v / v.mean())).mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        w = self.ae.decoder.weight
        with torch.no_grad():  # keep decoder columns on the unit sphere: drop the radial gradient
            w.grad -= (w.grad * w).sum(0, keepdim=True) * w
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.opt.step()
        with torch.no_grad():
            w /= w.norm(dim=0, keepdim=True)
        return mse.item(), float((f > 0).float().sum(-1).mean())

    def finish(self) -> nn.Module:
        """Fold the activation scale into the biases: the dictionary now reads raw activations and its
        features are in units of the activation scale (decoder still unit norm)."""
        self.ae.scale_biases(self.scale)
        return self.ae.eval().requires_grad_(False)


def correct_shrinkage(ae: nn.Module, x: torch.Tensor, *, min_scale: float = 0.05) -> torch.Tensor:
    """Undo the L1 penalty's shrinkage: multiply each feature by the scale s_i ≥ ``min_scale`` that
    minimises the same per-token relative reconstruction error on ``x`` (a linear least-squares problem
    in s). Scaling encoder row and bias by s_i > 0 scales f_i without changing when it fires, so L0 and
    every feature's support stay exactly the same; only the magnitudes grow back. Returns s."""
    with torch.no_grad():
        x = x.double()
        f = ae.encode(x.to(ae.encoder.weight.dtype)).double()
        d, b = ae.decoder.weight.double(), ae.bias.double()
        w = x.norm(dim=-1).clamp(min=1e-6).pow(-2)
        w = (w / w.mean())[:, None]
        gram = (f.T @ (w * f)) * (d.T @ d)
        rhs = ((w * f).T @ (x - b) * d.T).sum(-1)
        ridge = 1e-3 * float(gram.diagonal().mean())  # features that never fire keep s = 1
        s = torch.linalg.solve(gram + ridge * torch.eye(len(gram), dtype=gram.dtype), rhs + ridge)
        s = s.clamp(min=min_scale).to(ae.encoder.weight.dtype)
        ae.encoder.weight.mul_(s[:, None])
        ae.encoder.bias.mul_(s)
    return s


def _activations(model: Model, splice: Splice, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    store = {}
    with torch.no_grad():
        run(model, ids, splice.capture_edit(store), splice.submodules)
    return {k: v["act"].reshape(-1, v["act"].shape[-1]) for k, v in store.items()}


def train_saes(model: Model, cfg: OrganismConfig, tokenizer, *, progress: bool = False) -> dict[str, nn.Module]:
    """One AutoEncoder per submodule, trained together on fresh corpus text."""
    torch.manual_seed(cfg.seed + 1)
    rng = random.Random(cfg.seed + 1)
    splice = Splice(model)  # component level: the raw outputs
    unknown = sorted(set(dict(cfg.sae_l1_per_submodule)) - {s.name for s in splice.submodules})
    if unknown:
        raise ValueError(f"sae_l1_per_submodule names {', '.join(unknown)}, which the model does not have "
                         f"({', '.join(s.name for s in splice.submodules)})")
    # scale and mean from a calibration sample
    calib = _activations(model, splice, _batch(rng, tokenizer, 4 * cfg.sae_batch_seqs, cfg.seq_len))
    trainers = {}
    for name, x in calib.items():
        mean = x.mean(0)
        scale = float((x - mean).pow(2).sum(-1).mean().sqrt()) or 1.0
        trainers[name] = _SAETrainer(x.shape[-1], cfg.sae_width, scale, mean, cfg)
    for step in tqdm(range(cfg.sae_steps), desc="SAEs", disable=not progress):
        acts = _activations(model, splice, _batch(rng, tokenizer, cfg.sae_batch_seqs, cfg.seq_len))
        lr = _lr_at(step, cfg, cfg.sae_steps, cfg.sae_lr)
        warm = min(1.0, (step + 1) / (cfg.sae_steps * 0.1))  # L1 warm-up
        for name, trainer in trainers.items():
            mse, l0 = trainer.step(acts[name], lr, cfg.l1(name) * warm)
        if step % 100 == 0:
            log.info("SAE step %d: last mse %.4f l0 %.1f", step, mse, l0)
    saes = {name: t.finish() for name, t in trainers.items()}
    fresh = _activations(model, splice, _batch(rng, tokenizer, cfg.sae_rescale_seqs, cfg.seq_len))
    for name, ae in saes.items():
        correct_shrinkage(ae, fresh[name])
    return saes


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def save_model(model: nn.Module, tokenizer, folder, info: dict) -> None:
    """safetensors weights + config + tokenizer.json + training.json (config, losses, seconds)."""
    import json
    from pathlib import Path

    from ..fileio import atomic_write_text

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    atomic_write_text(folder / "training.json", json.dumps(info, indent=2))


def save_saes(saes: dict[str, nn.Module], root, cfg: OrganismConfig) -> None:
    from ..dictionaries import save_dictionary

    for name, ae in saes.items():
        config = {"l1_penalty": cfg.l1(name), "shrinkage_corrected": True, "steps": cfg.sae_steps, "lr": cfg.sae_lr,
                  "trainer_class": "featurecircuits.organism"}
        save_dictionary(ae, f"{root}/{name}/{cfg.seed}_{cfg.sae_width}", trainer_config=config)


def build(model_dir, dictionaries_dir, cfg: OrganismConfig = OrganismConfig(), *, progress: bool = False,
          model_only: bool = False, saes_only: bool = False) -> dict:
    """Train and save the model (unless ``saes_only``) and its SAEs (unless ``model_only``)."""
    import json
    from pathlib import Path

    from ..models import load_model

    torch.set_num_threads(max(1, torch.get_num_threads()))
    tokenizer = make_tokenizer()
    info_path = Path(model_dir) / "training.json"
    if saes_only:
        info = json.loads(info_path.read_text())
        hf_model = load_model(str(model_dir)).hf
    else:
        (hf_model, losses), seconds = timed(train_model, cfg, tokenizer, progress=progress)
        info = {"config": asdict(cfg), "losses_every_50_steps": losses, "seconds_model": seconds}
        save_model(hf_model, tokenizer, model_dir, info)
    if not model_only:
        model = Model(hf_model, tokenizer, name="organism")
        saes, seconds = timed(train_saes, model, cfg, tokenizer, progress=progress)
        save_saes(saes, dictionaries_dir, cfg)
        info["seconds_saes"] = seconds
        info["config"] = asdict(cfg)
        save_model(hf_model, tokenizer, model_dir, info)
    return info
