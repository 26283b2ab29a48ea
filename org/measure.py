"""One measurement of the target: train in one sandbox, score in another.

A program with an `evaluate:` command is measured in two phases:
  1. the run command trains, in a sandbox that reads only `sandbox.reads.run` (the default
     target: the tokenizer and the train split), told to save its model to $NIGHTLAB_CHECKPOINT
     in its private output directory and that it is scored separately ($NIGHTLAB_EVAL=separate);
  2. the evaluate command loads that model ($NIGHTLAB_CHECKPOINTS) in a fresh sandbox that also
     reads `sandbox.reads.evaluate` (val), and prints the metric.
The metric is the evaluate command's: whatever the training run printed for it is dropped, so a
forged `---` block in training output changes nothing. The run's other summary keys (steps,
tokens, memory) are kept, and the evaluation's output is appended to the run's log. A program
without `evaluate:` has its metric read from the run's own output, as autoresearch does.

Compute the budget does not count is bounded against the baseline's (`Caps`): a run over the
program's `cpu_slack` times the baseline's CPU seconds, or `wall_slack` times its wall seconds, is
rejected as untimed compute.
"""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import stat
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from org import bwrap
from org.environment import run_env
from org.errors import InputError
from org.program import Program
from org.runner import argv_for, kill_group, with_deathsig
from org.sandbox import (
    PROCS_HEADROOM,
    RunLimits,
    SandboxResult,
    Watchdog,
    check_metrics,
    network_isolation,
    physical_memory,
    rlimit_prefix,
    run_sandboxed,
)
from org.settings import cache_dir

CHECKPOINT = "model.pt"  # the file name a run saves its model to, in its output directory


@dataclass(frozen=True)
class Caps:
    """Bounds on one run's compute from the baseline's runs (None: unbounded)."""

    cpu_s: float | None = None
    wall_s: float | None = None
    why: str = ""  # "4x the baseline's 38.2 CPU-s" etc., for the rejection

    @classmethod
    def from_baseline(cls, program: Program, cpu: list[float], wall: list[float]) -> Caps:
        sb = program.spec.sandbox
        cpu_s = sb.cpu_slack * max(cpu) if sb.cpu_slack and cpu else None
        wall_s = sb.wall_slack * max(wall) if sb.wall_slack and wall else None
        parts = ([f"{sb.cpu_slack:g}x the baseline's {max(cpu):.1f} CPU-s"] if cpu_s else []) + \
                ([f"{sb.wall_slack:g}x its {max(wall):.1f} s of wall clock"] if wall_s else [])  # fmt: skip
        return cls(cpu_s, wall_s, " and ".join(parts))


def child_env(program: Program, extra: dict[str, str]) -> dict[str, str]:
    """The program's env for a child, with the data cache nightlab and the target share named."""
    return {"NIGHTLAB_CACHE": str(cache_dir()), **program.spec.env, **extra}


def view(program: Program, phase: str, cwd: Path, writes: tuple[Path, ...] = (),
         extra_reads: tuple[Path, ...] = ()) -> bwrap.View:  # fmt: skip
    return bwrap.View(cwd=cwd, reads=(*program.sandbox_reads(phase), *extra_reads), writes=writes,
                      tmp_bytes=program.spec.sandbox.tmp_mb * 2**20, hides=tuple(program.spec.sandbox.hides))  # fmt: skip


def run_command_of(program: Program, knob_source: str) -> str:
    """The run command, with the knob file's values (`knob_source`: the experiment's) appended as
    `--name=value` overrides when the program's knob style is `overrides`.
    Only names the repo's own knob file has become flags, and none the run command already sets
    (`--name=`): an edit cannot add a flag, nor override one the program pins."""
    if program.spec.knob_style != "overrides":
        return program.spec.run
    from org.proposal import override_args

    pinned = {a[2:].split("=", 1)[0] for a in shlex.split(program.spec.run) if a.startswith("--")}
    allowed = {k.name for k in program.knobs_of((program.repo / program.knob_path).read_text(encoding="utf-8"))}
    args = override_args(knob_source, program.knob_path, allowed - pinned)
    return " ".join([program.spec.run, *map(shlex.quote, args)])


def measure(program: Program, cwd: Path, env: dict[str, str], log_path: Path, out_dir: Path,
            sandboxed: bool, timeout_s: float, pid_file: Path | None = None,
            protected: dict[str, str] | None = None, caps: Caps = Caps()) -> SandboxResult:  # fmt: skip
    """Run (and evaluate) the target once in the worktree `cwd`. `out_dir` is the run's private,
    writable output directory (made empty here); its saved model is left at out_dir/model.pt."""
    spec = program.spec
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    saved = out_dir / CHECKPOINT
    extra = {"NIGHTLAB_CHECKPOINT": str(saved)}
    if spec.evaluate:
        extra["NIGHTLAB_EVAL"] = "separate"
    timeout = min(timeout_s, caps.wall_s) if caps.wall_s else timeout_s
    res = run_sandboxed(run_command_of(program, (cwd / program.knob_path).read_text(encoding="utf-8")), cwd, child_env(program, {**env, **extra}), RunLimits(timeout_s=timeout),
                        log_path, pid_file=pid_file, protected=protected,
                        view=view(program, "run", cwd, writes=(out_dir,)) if sandboxed else None)  # fmt: skip
    if caps.wall_s and res.timed_out and timeout < timeout_s:
        res.violations = [f"untimed compute: ran past {caps.wall_s:.0f} s ({caps.why})" if v.startswith("killed at")
                          else v for v in res.violations]  # fmt: skip
    if spec.evaluate and not res.violations and res.returncode == 0:
        res = _evaluate(program, cwd, env, res, saved, sandboxed, timeout_s, pid_file, protected)
    elif spec.evaluate:
        res.summary.pop(spec.metric, None)  # a failed run has no metric, whatever it printed
    # CPU of training, scoring and the model server together: compute the model's code spends
    # while it is scored counts like any other
    if caps.cpu_s and res.cpu_seconds is not None and res.cpu_seconds > caps.cpu_s:
        res.violations.append(f"untimed compute: used {res.cpu_seconds:.1f} CPU-s, over {caps.cpu_s:.1f} ({caps.why})")
    if res.summary and spec.bounds and not res.violations:
        res.violations += check_metrics(res.summary, spec.bounds)
    return res


def _evaluate(program: Program, cwd: Path, env: dict[str, str], trained: SandboxResult, saved: Path,
              sandboxed: bool, timeout_s: float, pid_file: Path | None,
              protected: dict[str, str] | None) -> SandboxResult:  # fmt: skip
    """Score the saved model with the program's evaluate command; the merged result."""
    spec = program.spec
    summary = {k: v for k, v in trained.summary.items() if k != spec.metric}
    assert trained.log_path is not None
    if not _regular(saved):
        note = (f"\n[nightlab: the run saved no model at $NIGHTLAB_CHECKPOINT; the harness scores the "
                f"saved model, so this run has no {spec.metric}]\n")  # fmt: skip
        with trained.log_path.open("a", encoding="utf-8") as fh:
            fh.write(note)
        return replace(trained, returncode=1, summary=summary, tail=trained.tail + note)
    eval_log = trained.log_path.with_name(trained.log_path.stem + ".eval.log")
    with model_servers(program, cwd, [saved], False, trained.log_path, sandboxed, device_env(env)) as servers:
        ev = run_sandboxed(spec.evaluate, cwd, child_env(program, {**env, "NIGHTLAB_CHECKPOINTS": str(saved), **servers.env}),
                           RunLimits(timeout_s=timeout_s), eval_log, pid_file=pid_file, protected=protected,
                           view=view(program, "evaluate", cwd, extra_reads=(saved,)) if sandboxed else None,
                           pass_fds=servers.pass_fds)  # fmt: skip
    text = eval_log.read_text(encoding="utf-8", errors="replace")
    with trained.log_path.open("a", encoding="utf-8") as fh:  # the scorer's block ends the log
        fh.write(f"\n=== nightlab: evaluate ({spec.evaluate}) ===\n{text}")
    eval_log.unlink(missing_ok=True)
    violations = [*ev.violations, *servers.violations]
    if "rejected" in ev.summary:
        violations.append(f"the evaluation rejected the model: {ev.summary['rejected']}")
    summary.update({k: v for k, v in ev.summary.items() if k != "rejected"})
    failed = ev.returncode != 0 or ev.timed_out
    cpu = sum(c for c in (trained.cpu_seconds, ev.cpu_seconds, servers.cpu_seconds) if c is not None)
    # The tail goes into the proposer's feedback: the training's (which never saw val) and what
    # the harness says, never the evaluation's output, where code that saw val may have printed.
    note = (f"\n[nightlab: the evaluation ({spec.evaluate}) exited {ev.returncode}"
            f"{', timed out' if ev.timed_out else ''}; its output is in {trained.log_path.name}]" if failed else "")
    return replace(trained, returncode=ev.returncode if failed else trained.returncode,
                   timed_out=ev.timed_out, seconds=trained.seconds + ev.seconds, cpu_seconds=cpu,
                   summary={} if failed else summary, tail=(trained.tail + note)[-4000:],
                   violations=violations)  # fmt: skip


def keep_test(program: Program, cwd: Path, saved: list[Path], log: Path, sandboxed: bool,
              pid_file: Path | None = None, protected: dict[str, str] | None = None,
              device: dict[str, str] | None = None) -> SandboxResult:  # fmt: skip
    """A keep's held-out test: the program's test command scores the saved models, in a sandbox
    that reads them and the test split; each model runs in a server of its own, and a fresh copy
    of it, started once that one is gone, answers the scorer's checks. The servers' violations
    are the test's. `device`: the slot's GPU (CUDA_VISIBLE_DEVICES), for the scorer and servers."""
    device = device_env(device or {})
    with model_servers(program, cwd, saved, True, log.with_suffix(".serve.log"), sandboxed, device) as servers:
        env = child_env(program, {**device, "NIGHTLAB_CHECKPOINTS": os.pathsep.join(map(str, saved)), **servers.env})
        res = run_sandboxed(program.spec.test, cwd, env, RunLimits(timeout_s=program.run_timeout_s), log,
                            pid_file=pid_file, protected=protected, pass_fds=servers.pass_fds,
                            view=view(program, "test", cwd, extra_reads=tuple(saved)) if sandboxed else None)  # fmt: skip
    res.violations += servers.violations
    return res


SERVER_LOG_TAIL = 8192  # bytes of each model server's output appended to the run log
SERVED_MODEL = "/nightlab/model.pt"  # where every server sees its model: the same path in every phase


class _Servers:
    """Model servers for one scoring: started, stopped, their logs appended to the run's."""

    def __init__(self, program: Program, cwd: Path, log: Path, sandboxed: bool, device: dict[str, str]):
        self.program, self.cwd, self.log, self.sandboxed, self.device = program, cwd, log, sandboxed, device
        self.procs: dict[str, tuple[subprocess.Popen, Path]] = {}
        self.watch: dict[str, tuple[Watchdog, Callable[[], None]]] = {}
        self.lock = threading.Lock()
        self.pass_fds: tuple[int, ...] = ()  # what the scorer gets: the servers' sockets, the control socket
        self.env: dict[str, str] = {}  # and where it finds them
        self.cpu_seconds = 0.0  # the servers' CPU, as their watchdogs sampled it: a run's compute too
        self.violations: list[str] = []

    def start(self, model: Path, label: str) -> socket.socket:
        """A server for `model`, its socket on fd 0 and its model at SERVED_MODEL: main and verifier
        are started identically, so nothing in its environment says which one it is."""
        if not _regular(model):
            raise InputError(model, "checkpoint", "the saved model is not a regular file")
        mine, theirs = socket.socketpair()
        out = self.log.with_name(f"{self.log.stem}.serve{label}.log")
        spec = self.program.spec
        if self.sandboxed:
            prefix = bwrap.argv(bwrap.View(cwd=self.cwd, mounts=((model, SERVED_MODEL),), hides=tuple(spec.sandbox.hides),
                                           tmp_bytes=spec.sandbox.tmp_mb * 2**20))  # fmt: skip
            env = {**self.device, "NIGHTLAB_CHECKPOINT": SERVED_MODEL, "NIGHTLAB_MODEL_FD": "0"}
        else:
            prefix = list(network_isolation()[0])
            env = {**self.device, "NIGHTLAB_CHECKPOINT": str(model), "NIGHTLAB_MODEL_FD": "0"}
        limits, _ = rlimit_prefix({"data": int(0.8 * physical_memory()), "fsize": 2**30, "core": 0})
        with out.open("wb") as fh:
            proc = subprocess.Popen(with_deathsig([*limits, *prefix, *argv_for(spec.model_server)]), cwd=self.cwd,
                                    env=run_env(child_env(self.program, env)), stdin=theirs.fileno(), stdout=fh,
                                    stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        theirs.close()
        # the same watchdog as a run's: its processes counted (and capped), its CPU sampled
        dog = Watchdog(PROCS_HEADROOM, [], 2**62)
        with self.lock:
            self.procs[label] = (proc, out)
            self.watch[label] = (dog, dog.watch(proc.pid))
        return mine

    def kill(self, label: str) -> None:
        proc, _ = self.procs[label]
        dog, stop = self.watch.pop(label)
        stop()
        kill_group(proc.pid)
        proc.wait()
        self.cpu_seconds += dog.cpu_seconds
        if dog.tripped:
            self.violations.append(f"model server {label} spawned more than {PROCS_HEADROOM} processes/threads")

    def serve_control(self, ctrl: socket.socket, saved: list[Path]) -> None:
        """The scorer's requests for verifiers ("verify <i>"): model i's main server is killed, and
        only then a fresh copy started, whose socket goes back to the scorer. The two never live
        at once, so they share nothing: no lock on a file they both read, no timing."""
        buf = b""
        while True:
            try:
                chunk = ctrl.recv(64)
            except OSError:
                return
            if not chunk:
                return
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                parts = line.decode(errors="replace").split()
                if len(parts) != 2 or parts[0] != "verify" or not parts[1].isdigit() or int(parts[1]) >= len(saved):
                    return
                i = int(parts[1])
                self.kill(f"{i}-main")
                sock = self.start(saved[i], f"{i}-verifier")
                socket.send_fds(ctrl, [b"ok"], [sock.fileno()])
                sock.close()

    def stop(self) -> None:
        with self.log.open("a", encoding="utf-8") as fh:
            for label, (proc, out) in sorted(self.procs.items()):
                if label in self.watch:
                    self.kill(label)
                fh.write(f"\n=== nightlab: model server {label} (exit {proc.returncode}) ===\n{_tail(out)}")
                out.unlink(missing_ok=True)


def _regular(path: Path) -> bool:
    """A regular file, not a link to one: a run's output could link to data it should not reach."""
    try:
        return stat.S_ISREG(path.lstat().st_mode)
    except OSError:
        return False


def _tail(path: Path) -> str:
    if not path.exists():
        return ""
    with path.open("rb") as fh:
        fh.seek(max(0, path.stat().st_size - SERVER_LOG_TAIL))
        return fh.read().decode("utf-8", errors="replace")


def device_env(env: dict[str, str]) -> dict[str, str]:
    """What of a run's environment says which device it has (a slot's GPU): its model servers get
    that and nothing else of it, so they run where the run does."""
    return {k: v for k, v in env.items() if k == "CUDA_VISIBLE_DEVICES"}


@contextmanager
def model_servers(program: Program, cwd: Path, saved: list[Path], verify: bool, log: Path,
                  sandboxed: bool, device: dict[str, str] | None = None) -> Iterator[_Servers]:  # fmt: skip
    """Start the program's model server for each saved model, each in a sandbox of its own that
    reads only the worktree and its model, and yield them: `pass_fds` to hand the scorer and its
    `env` ($NIGHTLAB_MODEL_FDS, and with `verify` $NIGHTLAB_CONTROL_FD, where it asks for each
    model's verifier once that model is done). Without a `model_server` the scorer loads the
    models itself (nothing to pass). The servers' output is appended to `log` before the
    scorer's; every server is killed when the scorer is done, and then `cpu_seconds` and
    `violations` say what they used and did."""
    servers = _Servers(program, cwd, log, sandboxed, device or {})
    if not program.spec.model_server:
        yield servers
        return
    ours: list[socket.socket] = []
    control = None
    try:
        ours = [servers.start(model, f"{i}-main") for i, model in enumerate(saved)]
        pass_fds = [s.fileno() for s in ours]
        servers.env = {"NIGHTLAB_MODEL_FDS": ";".join(map(str, pass_fds))}
        if verify:
            ctrl, theirs = socket.socketpair()
            ours += [ctrl, theirs]
            control = threading.Thread(target=servers.serve_control, args=(ctrl, saved), daemon=True)
            control.start()
            pass_fds.append(theirs.fileno())
            servers.env["NIGHTLAB_CONTROL_FD"] = str(theirs.fileno())
        servers.pass_fds = tuple(pass_fds)
        yield servers
    finally:
        for sock in ours:
            sock.close()
        if control is not None:
            control.join(timeout=60)  # it is between a kill and a start at most
        servers.stop()
