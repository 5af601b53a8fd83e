"""What the benchmark times, and how: the reference passes, a peak-RSS sampler, and each row run in a fresh
process.

Why a fresh process per row: glibc keeps freed heap resident. Once a freed 21 MiB block has raised its
dynamic mmap threshold, later blocks of that size come from the heap, and whatever small allocation
outlives them pins the pages. A row measured in the same process after the dense path (which frees
about 2 GiB of such blocks) then reports the dense path's leftovers as its own peak: RelP's sparse path
read +1.0 GiB over the plain pass one run and +0.1 GiB the next, with the same code, depending on how
the threads' arenas happened to fill. Each row here runs in its own interpreter that loads the setting
from a file the parent wrote (the build and calibration run once), returns the loader's freed heap to
the system (``malloc_trim``, as for every row alike) and reports the median time of ``repeats`` calls
after a warm-up, and the peak RSS over the warm-up and those calls.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import statistics
import subprocess
import sys
import threading
import time

import torch

import featurecircuits as fc

from . import settings


class PeakRSS:
    """Peak resident set size while the block runs, sampled from /proc every 2 ms."""

    def __enter__(self):
        self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())

    def _sample(self):
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self._rss())

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def plain_fwd_fwd_bwd(model: fc.Model, batch: fc.Batch) -> None:
    """The reference cost: a patch forward, a clean forward, a backward to the embeddings."""
    with torch.no_grad():
        model.hf(input_ids=batch.patch)
    emb = model.hf.get_input_embeddings()(batch.clean).detach().requires_grad_(True)
    m = fc.logit_diff(model.hf(inputs_embeds=emb).logits, batch)
    torch.autograd.grad(m.sum(), emb)


def floor_fwd_fwd_bwd_encode(model: fc.Model, dicts: dict, batch: fc.Batch) -> None:
    """The floor: the plain pass, plus one dense encode of every dictionary on each run's activations
    (encoded as they are produced and dropped, so the floor holds no feature tensor)."""

    def encode(sub, x):
        with torch.no_grad():
            dicts[sub.name].encode(x)

    with settings.recording(model, model.select(list(dicts)), encode):
        plain_fwd_fwd_bwd(model, batch)


def timeit(fn, repeats: int, *, warm_up_in_peak: bool = False) -> tuple[float, int]:
    """(median seconds of ``repeats`` calls after a warm-up, peak RSS over those calls — and over the
    warm-up too with ``warm_up_in_peak``)."""
    with PeakRSS() as first:
        fn()  # warm-up
    times, peak = [], first.peak if warm_up_in_peak else 0
    for _ in range(repeats):
        with PeakRSS() as rss:
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        peak = max(peak, rss.peak)
    return statistics.median(times), peak


# --------------------------------------------------------------------------------------------------
# one row per process


def job_function(model: fc.Model, dicts: dict, batch: fc.Batch, job: dict):
    """The call a row times: ``job`` is {"kind": "plain" | "floor" | "attribute", "method", "level",
    "sparse"}."""
    if job["kind"] == "plain":
        return lambda: plain_fwd_fwd_bwd(model, batch)
    if job["kind"] == "floor":
        return lambda: floor_fwd_fwd_bwd_encode(model, dicts, batch)
    kw = {"dictionaries": dicts, "sparse": job["sparse"]} if job["level"] == "feature" else {}
    return lambda: fc.attribute(model, batch, method=job["method"], **kw)


def save_setting(path: str, model: fc.Model, dicts: dict, batches: dict[int, fc.Batch]) -> None:
    """The setting as the rows' processes load it: the Hugging Face model, the dictionaries, and one batch
    per token count."""
    torch.save({"hf": model.hf, "dicts": dicts, "batches": batches}, path)


def child(path: str, job: dict) -> dict:
    saved = torch.load(path, weights_only=False)
    model, dicts = fc.load_model(saved["hf"]), saved["dicts"]
    batch = saved["batches"][job["tokens"]]
    del saved
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # what loading freed does not count (the same for every row)
    secs, peak = timeit(job_function(model, dicts, batch, job), job["repeats"], warm_up_in_peak=True)
    return {"seconds": secs, "peak_rss": peak}


def in_fresh_process(path: str, job: dict) -> tuple[float, int]:
    """(median seconds, peak RSS) of ``job`` run in a new interpreter over the setting saved at ``path``."""
    done = subprocess.run([sys.executable, "-m", "benchmarks.measure", path, json.dumps(job)], capture_output=True,
                          text=True)
    if done.returncode != 0:  # the row's own error, not just its exit status
        raise RuntimeError(f"benchmark row {job} failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return result["seconds"], result["peak_rss"]


if __name__ == "__main__":
    torch.manual_seed(0)
    print(json.dumps(child(sys.argv[1], json.loads(sys.argv[2]))))
