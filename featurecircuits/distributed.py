"""Data parallelism over the ranks of a ``torchrun`` launch.

Each rank attributes its own contiguous share of the pairs; the sums that every mean is made of (node and
edge scores, mean activations, metrics, ablation means) are added up across ranks before anything is divided
or selected, so every rank holds the one-process result and takes the same decisions. Outside torchrun (no
``WORLD_SIZE``, or 1) every function here is the identity and nothing is reduced.

The default process group is gloo: CPU tensors, Python objects, barriers and the setup checks (which must
work before anyone knows whether the ranks agree on their devices). Ranks on GPUs add an NCCL group that
reduces their CUDA tensors.
"""

from __future__ import annotations

import atexit
import logging
import os
import socket
from collections.abc import Hashable, Sequence

import torch
import torch.distributed as dist

from .errors import UsageError

__all__ = ["active", "barrier", "check_devices", "gather", "init", "is_main", "quiet_others", "rank", "reduce_sums",
           "refuse_ranks",
           "setup", "shard", "shares", "world_size"]

_ENV = ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
_nccl = None  # the NCCL group reducing CUDA tensors, once ranks run on GPUs
_cpu = None  # a gloo group for CPU values where the caller's own default group is not gloo (None: the default)


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name, "")
    try:
        return int(text) if text.strip() else default
    except ValueError:
        raise UsageError(f"environment variable {name}={text!r} is not an integer (torchrun sets it)") from None


def world_size() -> int:
    """The number of ranks: the process group's, else torchrun's ``WORLD_SIZE`` (1 outside torchrun)."""
    return dist.get_world_size() if dist.is_initialized() else max(1, _env_int("WORLD_SIZE", 1))


def refuse_ranks(command: str) -> None:
    """A command that does not split its work over ranks: refused under torchrun (each rank would run all of it
    and write the same outputs)."""
    if world_size() > 1:
        raise UsageError(f"{command} does not split its work over torchrun's ranks (each of the {world_size()} would "
                         f"run all of it): run it in one process (discover, evaluate and curve split their pairs)")


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else _env_int("RANK", 0)


def is_main() -> bool:
    """Whether this process is rank 0, the one that logs, shows progress and writes outputs."""
    return rank() == 0


def active() -> bool:
    """Whether this process is one of several ranks of a joined process group."""
    return dist.is_initialized() and dist.get_world_size() > 1


def _wants_cuda(device) -> bool:
    if device is None:
        return False  # models load on the CPU unless a device is given
    return torch.device(device).type == "cuda"


def init(device=None) -> bool:
    """Join the process group of a torchrun launch (from its environment variables); False outside one.
    ``device``: where this rank's model goes; a GPU makes each rank use the GPU of its local rank."""
    global _nccl, _cpu
    if world_size() <= 1:
        return False
    if dist.is_initialized():  # the caller's own group: CPU sums need a gloo one beside an NCCL default
        if _cpu is None and dist.get_backend() != "gloo":
            _cpu = dist.new_group(backend="gloo")
        return True
    missing = [name for name in _ENV if not os.environ.get(name)]
    if missing:
        raise UsageError(f"WORLD_SIZE={world_size()} but {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} "
                         "not set: launch data-parallel runs with torchrun (torchrun --nproc-per-node N --module "
                         "featurecircuits …)")
    if _wants_cuda(device):
        local, count = _env_int("LOCAL_RANK", 0), torch.cuda.device_count()
        if local >= count:
            raise UsageError(f"rank {rank()} is local rank {local}, but this node has {count} GPU(s): run at most "
                             f"one rank per GPU (--nproc-per-node ≤ {count})")
        torch.cuda.set_device(local)  # "cuda" now means this rank's GPU
    dist.init_process_group("gloo")
    atexit.register(_close)
    check_devices(device or "cpu")  # every rank agrees before the NCCL group, which all must join or none
    if _wants_cuda(device):
        _nccl = dist.new_group(backend="nccl")
    return True


def _close() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def gather(obj) -> list:
    """``obj`` of every rank, in rank order (``[obj]`` in one process)."""
    if not active():
        return [obj]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj, group=_cpu)
    return out


def barrier() -> None:
    if active():
        dist.barrier()


def check_devices(device) -> None:
    """A UsageError on every rank when the ranks' models are not on one kind of device, or share a GPU."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:  # "cuda": the GPU this rank set as its own
        device = torch.device("cuda", torch.cuda.current_device())
    seen = gather((socket.gethostname(), device.type, device.index))
    kinds = {kind for _, kind, _ in seen}
    listed = ", ".join(f"rank {r} {kind}{'' if index is None else f':{index}'}"
                       for r, (_, kind, index) in enumerate(seen))
    if len(kinds) > 1:
        raise UsageError(f"the ranks' models are on different kinds of device ({listed}); give every rank the "
                         "same --device")
    if device.type == "cuda" and len(set(seen)) < len(seen):
        raise UsageError(f"ranks share a GPU ({listed}); each rank needs its own (torchrun gives rank r the GPU of "
                         "its local rank when --device is cuda)")


def setup(device) -> bool:
    """Join a torchrun launch's group (where there is one) and check the ranks' devices; False outside one."""
    if not init(device):
        return False
    check_devices(device)
    return True


def shares(n_pairs: int, ranks: int | None = None) -> list[int]:
    """How many pairs each rank gets: contiguous blocks, the first ``n_pairs % ranks`` ranks one more."""
    ranks = world_size() if ranks is None else ranks
    base, extra = divmod(n_pairs, ranks)
    return [base + (r < extra) for r in range(ranks)]


def shard(batches: Sequence) -> list:
    """This rank's pairs of ``batches`` (a contiguous block of the pairs in order, as slices of the batches
    they are in, so no batch mixes token lengths); all of them in one process. A UsageError when there are
    fewer pairs than ranks."""
    n_ranks = world_size()
    if n_ranks <= 1:
        return list(batches)
    n_pairs = sum(len(b) for b in batches)
    if n_pairs < n_ranks:
        raise UsageError(f"{n_pairs} pair(s) cannot be split over {n_ranks} ranks: give every rank at least one "
                         f"(--n-examples ≥ {n_ranks}) or launch fewer ranks")
    counts = shares(n_pairs, n_ranks)
    start = sum(counts[:rank()])
    end = start + counts[rank()]
    out, offset = [], 0
    for batch in batches:
        lo, hi = max(start, offset), min(end, offset + len(batch))
        if lo < hi:
            out.append(batch[lo - offset:hi - offset])
        offset += len(batch)
    return out


def _layout(value):
    """What a rank without ``value`` needs to contribute zeros of its kind."""
    if isinstance(value, torch.Tensor):
        return tuple(value.shape), value.dtype, value.device.type
    return type(value).__name__, torch.float64, "cpu"  # Python numbers travel as float64


def reduce_sums(values: dict[Hashable, torch.Tensor | float | int]) -> dict:
    """``values`` summed over the ranks, key by key (a key some ranks lack counts as zero there): tensors
    stay tensors (of their dtype, on their device), Python numbers come back as Python numbers. Keys follow
    the ranks' order of first appearance, the same on every rank. ``values`` itself outside a process group."""
    if not active():
        return values
    union: dict = {}
    for layout in gather({k: _layout(v) for k, v in values.items()}):
        for key, spec in layout.items():
            union.setdefault(key, spec)
    groups: dict[tuple, list] = {}
    for key, (_, dtype, kind) in union.items():
        groups.setdefault((dtype, kind), []).append(key)
    out = {}
    for (dtype, kind), keys in groups.items():
        flat = [_flat(values, key, union[key], dtype, kind) for key in keys]
        summed = torch.cat(flat)
        dist.all_reduce(summed, group=_nccl if summed.is_cuda else _cpu)
        for key, piece in zip(keys, summed.split([t.numel() for t in flat]), strict=True):
            shape = union[key][0]
            if isinstance(shape, tuple):
                home = values[key].device if key in values else _device(kind)
                out[key] = piece.view(shape).to(home)
            else:
                out[key] = int(round(piece.item())) if shape == "int" else piece.item()
    return {key: out[key] for key in union}


def _device(kind: str) -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if kind == "cuda" else torch.device(kind)


def _flat(values: dict, key, spec, dtype: torch.dtype, kind: str) -> torch.Tensor:
    """One value (zeros where this rank lacks it) as a flat tensor where it is reduced: CUDA tensors over NCCL,
    or through the CPU where there is no NCCL group (a model that reached a GPU by a device map)."""
    shape = spec[0]
    value = values[key] if key in values else torch.zeros(shape if isinstance(shape, tuple) else ())
    if not isinstance(value, torch.Tensor):  # straight to float64: no float32 rounding on the way
        value = torch.tensor(value, dtype=torch.float64)
    where = _device(kind) if kind == "cuda" and _nccl is not None else torch.device("cpu")
    return value.detach().to(device=where, dtype=dtype).reshape(-1)


def quiet_others() -> None:
    """Ranks other than 0 log errors only (rank 0 speaks for the run)."""
    if not is_main():
        logging.getLogger().setLevel(logging.ERROR)
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # its weight-loading bar
