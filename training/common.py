"""What both training stages share: distributed set-up, run folders, resumable state, logging.

One process (``python -m training.autoencoder ...``) or many (``torchrun --nproc_per_node N -m
training.autoencoder ...``): the same code path; with ``WORLD_SIZE > 1`` it initialises
torch.distributed (NCCL on CUDA, gloo on CPU) and wraps the model in DDP.

Runs are resumable *exactly*: checkpoints are written every ``ckpt_every`` steps, data comes in
"chunks" of ``ckpt_every`` steps whose loader is seeded from (seed, chunk, rank), so a resumed
run draws the very batches the uninterrupted run would have drawn.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str) -> Dist:
    """Initialise torch.distributed when launched by torchrun; pick this rank's device."""
    # Adam moments of rarely-updated parameters decay into denormal floats, which are ~100x slower
    # on x86 CPUs; flushing them to zero changes nothing measurable and keeps steps fast.
    torch.set_flush_denormal(True)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist(device=torch.device(device))
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    dev = torch.device(f"cuda:{local}") if device.startswith("cuda") else torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return Dist(rank=rank, world=world, local_rank=local, device=dev)


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def load_json_config(cls: type, path: str | Path | None, overrides: list[str]) -> Any:
    """A dataclass from a JSON file plus ``key=value`` overrides (values parsed as JSON when possible)."""
    data: dict[str, Any] = json.loads(Path(path).read_text()) if path else {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"override must be key=value, got {item!r}")
        try:
            data[key] = json.loads(value)
        except json.JSONDecodeError:
            data[key] = value
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys {unknown}; known: {sorted(names)}")
    return cls(**data)


def chunk_batches(dataset: Dataset, batch: int, steps: int, *, seed: int, chunk: int, rank: int,
                  workers: int) -> Iterator[Any]:
    """``steps`` batches of chunk ``chunk``, reproducible from (seed, chunk, rank)."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + chunk * 1_009 + rank)
    sampler = torch.utils.data.RandomSampler(dataset, replacement=True, num_samples=steps * batch, generator=gen)
    loader = DataLoader(dataset, batch_size=batch, sampler=sampler, num_workers=workers, drop_last=True,
                        generator=gen, persistent_workers=False)
    torch.manual_seed(int(torch.randint(0, 2**62, (), generator=gen)))  # augmentation draws with workers=0
    yield from loader


class CSVLog:
    """Append-only CSV of scalar logs (``step``, ``time`` and whatever keys appear)."""

    def __init__(self, path: Path):
        self.path = path
        self.start = time.time()

    def write(self, step: int, values: dict[str, float]) -> None:
        row = {"step": step, "time": round(time.time() - self.start, 2), **{k: round(float(v), 6) for k, v in values.items()}}
        rows: list[dict] = []
        if self.path.exists():
            with self.path.open(newline="") as f:
                rows = list(csv.DictReader(f))
        header = list(rows[0]) if rows else []
        header += [k for k in row if k not in header]  # new keys (e.g. GAN terms once they start) extend it
        rows.append(row)
        with self.path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=header, restval="")
            w.writeheader()
            w.writerows(rows)


def wall_time(log: Path) -> float:
    """Seconds of training recorded in a stage's log.csv (sums restarts; 0 before the first row)."""
    total, last = 0.0, 0.0
    if not log.exists():
        return 0.0
    with log.open() as f:
        for row in csv.DictReader(f):
            t = float(row["time"])
            if t < last:
                total += last
            last = t
    return total + last


def save_state(path: Path, state: dict[str, Any]) -> None:
    """Training state (optimizer states, step, RNG); tensors and plain values only, written atomically."""
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_state(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast for ``precision == "bf16"``, else nothing (fp32)."""
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be fp32 or bf16, got {precision!r}")
    return torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()


def wrap_ddp(module: torch.nn.Module, d: Dist) -> torch.nn.Module:
    """``module`` in DistributedDataParallel when running several processes, else as it is."""
    if d.world == 1:
        return module
    return torch.nn.parallel.DistributedDataParallel(module, device_ids=[d.device.index] if d.device.type == "cuda" else None)


def next_chunk(step: int, total: int, every: int) -> tuple[int, int]:
    """(chunk index, steps left in it) for a run at ``step`` of ``total`` checkpointing every ``every``."""
    return step // every, min(every - step % every, total - step)


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    return module.module if isinstance(module, torch.nn.parallel.DistributedDataParallel) else module
