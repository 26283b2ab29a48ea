"""Slots: how many runs a campaign has going at once, where, and on what (a program's `executor`).

Every slot has a worktree of its own (one slot runs in the campaign's; with more, each has
`slots/<i>` in the campaign directory, and any free one takes the next run) and a device none other shares: a GPU each (CUDA_VISIBLE_DEVICES) when the
machine has GPUs, else a disjoint set of CPU cores each (a run's processes inherit the cores of
the thread that starts them). A GPU is never shared, so a wall-clock budget stays comparable.

    local   the runs are threads of this process, each starting its slot's sandboxes
    ray     each run is a Ray task (`pip install 'nightlab[ray]'`) on the local Ray or the cluster
            at $RAY_ADDRESS, reserving the slot's GPU (num_gpus=1) or its cores; the campaign
            directory must be on a filesystem every node sees. A task whose worker or node dies is
            retried by Ray (max_retries); the ledger records a run only when its result is back.

What the slots run is decided by the graph (org/graph.py): an experiment's first run on a free
slot, its replicates side by side, and on the other free slots the first runs of proposals the
pipeline has ready on the same best (org/ahead.py), kept aside until the experiment they are for
is reached (a fan-out round's, org/rounds.py, all at once).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from org.errors import InputError
from org.sandbox import SandboxResult
from org.workspace import Workspace, git

SLOTS_DIR = "slots"


@dataclass(frozen=True)
class Slot:
    index: int
    workspace: Workspace
    pid_file: Path | None  # the run in flight here (a resume kills what a killed campaign left)
    env: dict[str, str] = field(default_factory=dict)  # CUDA_VISIBLE_DEVICES for a GPU slot
    cpus: tuple[int, ...] = ()  # the cores its runs may use (empty: all)
    gpus: int = 0  # GPUs it holds (what a Ray task reserves)


@dataclass
class Running:
    """A run started on a slot: its result comes from `future`; the harness keeps its log and the
    model it saved at `saved`."""

    slot: Slot
    commit: str
    future: Future
    log: Path
    saved: Path
    epoch: int = 0  # a first run made ahead: the drift checks done when it started (org/ahead.py)


def visible_gpus(program_env: dict[str, str] | None = None) -> list[str]:
    """GPU ids the program's runs may use: its env's CUDA_VISIBLE_DEVICES, else this process's,
    else `nvidia-smi -L`'s."""
    raw = (program_env or {}).get("CUDA_VISIBLE_DEVICES", os.environ.get("CUDA_VISIBLE_DEVICES"))
    if raw is not None:
        return [g for g in raw.split(",") if g.strip() and g.strip() != "-1"]
    if shutil.which("nvidia-smi") is None:
        return []
    out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=False).stdout
    return [str(i) for i, line in enumerate(out.splitlines()) if line.startswith("GPU ")]


def plan(program: Any, campaign_dir: Path, main: Workspace) -> list[Slot]:
    """The program's slots: `executor.slots` of them (default: one per visible GPU, or one)."""
    spec = program.spec.executor
    gpus = visible_gpus(program.spec.env)
    count = spec.slots or max(1, len(gpus))
    ray = spec.kind == "ray"  # Ray assigns each task its GPU; a pgid from another node is not ours to kill
    if gpus and count > len(gpus) and not ray:
        raise InputError(program.path, "executor.slots", f"{count} slots, {len(gpus)} visible GPUs: a GPU is never "
                         "shared (a second run on it would move the first's wall-clock result)")  # fmt: skip
    cores = sorted(os.sched_getaffinity(0))
    per = len(cores) // count if not gpus else 0
    if not gpus and count > 1 and per < 1 and not ray:
        raise InputError(program.path, "executor.slots", f"{count} CPU slots on {len(cores)} cores: each needs one")
    slots = []
    for i in range(count):
        ws = main if count == 1 else worktree(program, campaign_dir / SLOTS_DIR / str(i), main)
        pid = None if ray else campaign_dir / ("run.pid" if count == 1 else f"run.{i}.pid")
        if gpus:
            slots.append(Slot(i, ws, pid, env={} if ray else {"CUDA_VISIBLE_DEVICES": gpus[i]}, gpus=1))
        else:
            slots.append(Slot(i, ws, pid, cpus=tuple(cores[i * per:(i + 1) * per]) if count > 1 and per else ()))
    return slots


def worktree(program: Any, path: Path, main: Workspace) -> Workspace:
    """A detached worktree of the campaign's repo at `path` (made on first use), with the program's
    data files linked in."""
    ws = Workspace(path, keep=tuple(rel for rel, _ in program.data_links()))
    if not (path / ".git").exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        git(main.path, "worktree", "add", "--detach", str(path), "HEAD")
    for rel, src in program.data_links():
        ws.link(rel, src)
    return ws


def pinned(cpus: tuple[int, ...], job: Callable[[], SandboxResult]) -> SandboxResult:
    """Run `job` with this thread on `cpus` (its child processes inherit them), then unpinned."""
    if not cpus:
        return job()
    everything = os.sched_getaffinity(0)
    os.sched_setaffinity(0, set(cpus) & set(range(os.cpu_count() or 1)) or everything)
    try:
        return job()
    finally:
        os.sched_setaffinity(0, everything)


class LocalExecutor:
    """Runs as threads of this process (each starts its slot's sandboxes)."""

    name = "local"

    def __init__(self, slots: list[Slot]):
        self.pool = ThreadPoolExecutor(max_workers=len(slots), thread_name_prefix="nightlab-slot")

    def submit(self, slot: Slot, job: Callable[[], SandboxResult]) -> Future:
        return self.pool.submit(pinned, slot.cpus, job)

    def shutdown(self) -> None:
        self.pool.shutdown(wait=True)


def _ray_task(cpus: tuple[int, ...], job: Callable[[], SandboxResult]) -> SandboxResult:
    """A run in a Ray worker: pinned to the slot's cores where the node has them."""
    have = set(range(os.cpu_count() or 1))
    return pinned(cpus if set(cpus) <= have else (), job)


class RayExecutor:
    """Each run a Ray task: on the local Ray (started here) or the cluster at $RAY_ADDRESS."""

    name = "ray"
    MAX_RETRIES = 2  # a worker or node that dies mid-run: the run is started again elsewhere

    def __init__(self, slots: list[Slot], program_path: Path):
        try:
            import ray
        except ImportError as e:
            raise InputError(program_path, "executor.kind", "ray needs the ray extra: pip install 'nightlab[ray]'") from e
        self.ray = ray
        if not ray.is_initialized():
            address = os.environ.get("RAY_ADDRESS")
            ray.init(address=address or None, num_cpus=None if address else len(os.sched_getaffinity(0)),
                     include_dashboard=False, log_to_driver=False, configure_logging=False)  # fmt: skip
        self.remote = ray.remote(max_retries=self.MAX_RETRIES)(_ray_task)

    def submit(self, slot: Slot, job: Callable[[], SandboxResult]) -> Future:
        cpus = max(1, len(slot.cpus)) if not slot.gpus else 1
        ref = self.remote.options(num_gpus=slot.gpus, num_cpus=cpus).remote(slot.cpus, job)
        return ref.future()

    def shutdown(self) -> None:
        pass  # a cluster outlives the campaign; the local Ray ends with this process


def executor_for(program: Any, slots: list[Slot]) -> LocalExecutor | RayExecutor:
    if program.spec.executor.kind == "ray":
        return RayExecutor(slots, program.path)
    return LocalExecutor(slots)
