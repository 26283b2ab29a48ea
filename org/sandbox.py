"""Run an untrusted experiment command: own process group, hard timeout, no secrets, no network.

- given a `View` (org/bwrap.py), the command runs under bubblewrap: it sees only the system, the
  interpreter, the worktree (read-only), the data its phase may read, a capped tmpfs and its own
  output directory, in fresh namespaces. Without one (bubblewrap missing, or a campaign started
  `--unsandboxed`), the process-level isolation below is all there is:
- own session/process group; the timeout SIGKILLs the whole group. When Linux user namespaces
  are available the command also runs in fresh network + PID namespaces (`unshare -rn --pid
  --fork --kill-child`), so it has only a loopback interface and nothing it spawns (even after
  `setsid`) outlives it. Otherwise the run record says `network: not isolated`.
- environment built from an allow-list (`org.environment.run_env`); anything that looks like a
  credential is dropped even if allowed (the program's own env is validated to hold no secrets).
- rlimits (via prlimit(1)) on the data segment (memory), file size, process count (plus a
  watchdog on the run's task count, which binds root too), no core dumps.
- a disk quota: the watchdog also reads the free space of the filesystems the run can write to
  (the worktree's, the temp dir's) and kills the group once it has used more than
  `RunLimits.disk_bytes` of it, so many files under the file-size limit cannot fill the disk that
  holds the campaign's records either.
- output captured to a capped log; metrics come only from a final `---` block that ends the
  output (`org.runner.parse_summary`); metric values must be finite and inside the program's
  bounds; protected-file hashes are re-checked afterwards.
Any violation makes the experiment `rejected`, never `keep`.
"""

from __future__ import annotations

import functools
import hashlib
import os
import resource
import shutil
import signal
import subprocess
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from org import bwrap
from org.environment import run_env
from org.runner import LOG_CAP_BYTES, RunResult, argv_for, kill_group, parse_number, run_child

PROCS_HEADROOM = 256  # tasks (processes + threads) one run may have; torch uses ~1 per core


@dataclass(frozen=True)
class RunLimits:
    timeout_s: float
    memory_bytes: int | None = None  # RLIMIT_DATA; None: 80 % of physical memory
    file_bytes: int = 8 * 2**30  # RLIMIT_FSIZE: no single file over this
    disk_bytes: int = 16 * 2**30  # free space a run may use up, per filesystem (all files)
    procs: int = PROCS_HEADROOM
    log_cap: int = LOG_CAP_BYTES


@dataclass
class SandboxResult(RunResult):
    network: str = ""  # "isolated (netns)" or "not isolated: <why>"
    violations: list[str] = field(default_factory=list)  # sandbox findings that reject the run
    limits: dict[str, float] = field(default_factory=dict)

    @property
    def rejected(self) -> bool:
        return bool(self.violations)


@functools.lru_cache(maxsize=1)
def network_isolation() -> tuple[tuple[str, ...], str]:
    """(argv prefix, description). Probed once per process: user+net+pid namespaces if allowed."""
    exe = shutil.which("unshare")
    if exe is None:
        return (), "not isolated: no unshare(1) on this machine"
    for prefix in ([exe, "-rn", "--pid", "--fork", "--kill-child"], [exe, "-rn"], [exe, "--net"]):
        try:
            ok = subprocess.run([*prefix, "true"], capture_output=True, timeout=10).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            ok = False
        if ok:
            pid = " + pid namespace" if "--pid" in prefix else ""
            return tuple(prefix), f"isolated (network namespace{pid})"
    return (), "not isolated: unshare is not permitted here (no user namespaces)"


def _user_tasks() -> int:
    """Processes + threads this uid runs now (RLIMIT_NPROC counts them all, per user)."""
    uid, n = os.getuid(), 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid:
                    n += len(os.listdir(f"/proc/{entry.name}/task"))
            except OSError:
                continue
    return n


def _free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


class Watchdog(threading.Thread):
    """Counts the run's tasks (its session, plus anything in its PID namespace) a few times a
    second and kills the group over the cap. RLIMIT_NPROC alone does not bind root, and it
    counts the whole user's processes, so this is the check that always holds. It also watches
    the free space of `disk_paths`' filesystems and kills the group once the run has used more
    than `disk_cap` bytes of any of them (free space, not per-process counters: a writer that
    exits or forks still shows up). Free space is measured when it is made, before the run."""

    def __init__(self, cap: int, disk_paths: list[Path], disk_cap: int):
        super().__init__(daemon=True)
        self.leader, self.cap = 0, cap
        self.peak, self.tripped = 0, False
        self.disk_cap, self.disk_used, self.disk_tripped = disk_cap, 0, False
        fs = {os.stat(p).st_dev: p for p in disk_paths if p.exists()}  # one path per filesystem
        self.free_at_start = {p: _free_bytes(p) for p in fs.values()}
        self.stop = threading.Event()
        self.own_ns = _pid_ns(os.getpid())
        self.cpu_ticks: dict[int, int] = {}  # pid -> user + system clock ticks, as last seen

    def watch(self, leader: int) -> Callable[[], None]:
        """Start watching the group led by `leader`; returns the call that stops watching."""
        self.leader = leader
        self.start()
        return self.stop.set

    def disk(self) -> int:
        """Most free space the run has used up on one watched filesystem, in bytes."""
        return max((start - _free_bytes(p) for p, start in self.free_at_start.items()), default=0)

    def count(self) -> int:
        n, ns = 0, None
        stats = []
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as fh:
                    fields = fh.read().rsplit(b")", 1)[1].split()
            except OSError:
                continue
            # after "pid (comm)": state ppid pgrp session ... utime stime (fields 14, 15: index 11,
            # 12) ... num_threads (field 20, index 17)
            stats.append((int(entry.name), int(fields[1]), int(fields[3]), int(fields[17]),
                          int(fields[11]) + int(fields[12])))  # fmt: skip
        for pid, ppid, _sid, _threads, _cpu in stats:
            if ppid == self.leader and _pid_ns(pid) not in (None, self.own_ns):
                ns = _pid_ns(pid)
        for pid, _ppid, sid, threads, cpu in stats:
            if sid == self.leader or (ns is not None and pid != self.leader and _pid_ns(pid) == ns):
                n += threads
                self.cpu_ticks[pid] = cpu
        return n

    @property
    def cpu_seconds(self) -> float:
        """CPU time of the run's processes as last sampled (a process that lived less than one
        sampling interval may be missed: the kernel's own count is lost in a PID namespace)."""
        return sum(self.cpu_ticks.values()) / os.sysconf("SC_CLK_TCK")

    def run(self) -> None:
        while not self.stop.wait(0.2):
            n = self.count()
            self.peak = max(self.peak, n)
            self.disk_used = max(self.disk_used, self.disk())
            if n > self.cap:
                self.tripped = True
            if self.disk_used > self.disk_cap:
                self.disk_tripped = True
            if self.tripped or self.disk_tripped:
                kill_group(self.leader)
                return


def _pid_ns(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None


def physical_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def rlimit_prefix(rlimits: dict[str, int]) -> tuple[list[str], Callable[[], None] | None]:
    """util-linux `prlimit --data=N:N ... --` where it exists (no preexec_fn in a threaded parent);
    otherwise a preexec_fn that sets the same limits."""
    exe = shutil.which("prlimit")
    if exe:
        return [exe, *(f"--{k}={v}:{v}" for k, v in rlimits.items()), "--"], None
    which = {"data": resource.RLIMIT_DATA, "fsize": resource.RLIMIT_FSIZE,
             "nproc": resource.RLIMIT_NPROC, "core": resource.RLIMIT_CORE}  # fmt: skip

    def apply() -> None:
        for k, v in rlimits.items():
            resource.setrlimit(which[k], (v, v))

    return [], apply


def check_metrics(summary: dict[str, str], bounds: dict[str, tuple[float, float]]) -> list[str]:
    """Every bounded key must be present, finite and inside [lo, hi]."""
    problems = []
    for key, (lo, hi) in bounds.items():
        raw = summary.get(key)
        x = parse_number(raw)
        if raw is None:
            problems.append(f"metric {key} missing from the final summary")
        elif x is None or not lo <= x <= hi:
            problems.append(f"metric {key}={raw} outside sanity bounds [{lo}, {hi}]")
    return problems


def file_hashes(root: Path, paths: list[str]) -> dict[str, str]:
    out = {}
    for rel in paths:
        p = root / rel
        out[rel] = hashlib.sha256(p.read_bytes()).hexdigest() if p.exists() else "missing"
    return out


def run_sandboxed(
    command: str,
    cwd: Path,
    env: dict[str, str],
    limits: RunLimits,
    log_path: Path,
    pid_file: Path | None = None,
    protected: dict[str, str] | None = None,  # repo-relative path (under cwd) -> sha256 expected
    bounds: dict[str, tuple[float, float]] | None = None,
    isolate_network: bool = True,
    view: bwrap.View | None = None,
    pass_fds: tuple[int, ...] = (),
) -> SandboxResult:
    if view is not None:
        prefix, network = tuple(bwrap.argv(view)), view.describe()
        disk = [*view.writes, cwd]
    else:
        prefix, network = network_isolation() if isolate_network else ((), "not isolated: disabled")
        disk = [cwd, Path(tempfile.gettempdir())]
    mem = limits.memory_bytes or int(0.8 * physical_memory())
    nproc = _user_tasks() + limits.procs
    rl_prefix, preexec = rlimit_prefix({"data": mem, "fsize": limits.file_bytes, "nproc": nproc, "core": 0})
    watchdog = Watchdog(limits.procs, disk, limits.disk_bytes)
    res, text = run_child([*rl_prefix, *prefix, *argv_for(command)], cwd, run_env(env), limits.timeout_s,
                          log_path, pid_file, limits.log_cap, watch=watchdog.watch, preexec_fn=preexec,
                          pass_fds=pass_fds)  # fmt: skip
    if res.cpu_seconds is not None:  # an orphan no one reaps is not in the kernel's count: the larger
        res.cpu_seconds = max(res.cpu_seconds, watchdog.cpu_seconds)
    violations: list[str] = []
    if watchdog.tripped:
        violations.append(f"spawned more than {limits.procs} processes/threads (fork bomb?)")
    if watchdog.disk_tripped:
        violations.append(f"used more than {limits.disk_bytes / 2**30:.3g} GiB of free disk space "
                          f"({watchdog.disk_used / 2**30:.3g} GiB when stopped)")  # fmt: skip
    if res.timed_out:
        violations.append(f"killed at the hard timeout ({limits.timeout_s:.0f} s)")
    if res.returncode in (-signal.SIGXFSZ, 128 + signal.SIGXFSZ) or "File too large" in text:
        violations.append(f"tried to write a file over {limits.file_bytes} bytes")
    if res.summary and bounds:
        violations += check_metrics(res.summary, bounds)
    for rel, digest in (protected or {}).items():
        now = file_hashes(cwd, [rel])[rel]
        if now != digest:
            violations.append(f"protected file {rel} changed during the run")
    return SandboxResult(
        **vars(res),
        network=network,
        violations=violations,
        limits={"timeout_s": limits.timeout_s, "memory_bytes": mem, "file_bytes": limits.file_bytes,
                "disk_bytes": limits.disk_bytes, "nproc": nproc},  # fmt: skip
    )
