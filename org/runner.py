"""Run one command: own process group, hard timeout, capped log, summary-block metrics.

The run is a child in its own session (process group). A timeout kills the whole group. On Linux
the child also gets SIGKILL if nightlab itself dies (`setpriv --pdeathsig`), and the group id is written
to a pid file so `resume` can kill anything a `kill -9` left behind. `run_command` runs a program's
setup command this way; `org.sandbox` runs experiments through `run_child` with more limits.

Metrics come only from a final `---` block of `key: value` lines that ends the output (a block
followed by other lines, or a FAIL line, is no result), of a run that exited 0; values must be
finite numbers.
"""

from __future__ import annotations

import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from org.environment import setup_env

LOG_CAP_BYTES = 2_000_000  # head + tail kept; the middle of a huge log is dropped
_SUMMARY_KV = re.compile(r"^([A-Za-z_][\w.]*)\s*:\s*(\S.*?)\s*$")


@dataclass
class RunResult:
    returncode: int | None  # None when killed by the timeout
    timed_out: bool
    seconds: float
    summary: dict[str, str] = field(default_factory=dict)  # final `---` block, raw strings
    tail: str = ""  # last few KB of output (for prompts and error messages)
    log_path: Path | None = None
    cpu_seconds: float | None = None  # user + system time of the whole process tree (None: killed)


def argv_for(command: str) -> list[str]:
    """Split a command line; a leading `python` is the interpreter running nightlab."""
    argv = shlex.split(command)
    if argv and argv[0] in ("python", "python3"):
        argv[0] = sys.executable
    return argv


def with_deathsig(argv: list[str]) -> list[str]:
    """Prefix util-linux `setpriv --pdeathsig KILL` where it exists: the run dies with nightlab.

    (A preexec_fn calling prctl would do the same but is unsafe in a threaded parent.) Without
    setpriv the pid file still lets `resume` kill what a dead campaign left running."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", "--", *argv] if setpriv else argv


def kill_stale(pid_file: Path) -> bool:
    """Kill a process group a previous (killed) nightlab left running. True if one was found."""
    if not pid_file.exists():
        return False
    try:
        pgid = int(pid_file.read_text().strip())
        os.killpg(pgid, signal.SIGKILL)
        found = True
    except (ValueError, ProcessLookupError, PermissionError):
        found = False
    pid_file.unlink(missing_ok=True)
    return found


class _CappedSink:
    """Writes the first half of the cap to the log, keeps a rolling tail of the second half."""

    def __init__(self, path: Path, cap: int):
        self.fh = path.open("wb")
        self.head_left = cap // 2
        self.tail_cap = cap - cap // 2
        self.tail = bytearray()
        self.dropped = 0

    def write(self, chunk: bytes) -> None:
        if self.head_left > 0:
            part = chunk[: self.head_left]
            self.fh.write(part)
            self.head_left -= len(part)
            chunk = chunk[len(part) :]
        if chunk:
            self.tail += chunk
            over = len(self.tail) - self.tail_cap
            if over > 0:
                self.dropped += over
                del self.tail[:over]

    def close(self) -> None:
        if self.dropped:
            self.fh.write(f"\n[nightlab: {self.dropped} bytes of output dropped]\n".encode())
        self.fh.write(self.tail)
        self.fh.close()


def kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def spawn(argv: list[str], cwd: Path, env: dict[str, str], sink: _CappedSink, pid_file: Path | None,
          **popen: Any) -> tuple[subprocess.Popen, threading.Thread]:  # fmt: skip
    """Start argv in its own process group (a timeout kills everything it spawned), dying with
    nightlab, its stdout+stderr pumped into `sink` by a thread."""
    proc = subprocess.Popen(with_deathsig(argv), cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                            **popen)  # fmt: skip
    if pid_file is not None:
        pid_file.write_text(str(proc.pid))

    def pump() -> None:
        assert proc.stdout is not None
        for chunk in iter(lambda: proc.stdout.read1(65536), b""):
            sink.write(chunk)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    return proc, reader


def reap(proc: subprocess.Popen, reader: threading.Thread, pid_file: Path | None) -> None:
    """Kill the group either way: a finished leader can leave children holding the pipe."""
    kill_group(proc.pid)
    proc.wait()
    reader.join(timeout=10)
    if pid_file is not None:
        pid_file.unlink(missing_ok=True)


def log_tail(log_path: Path, size: int = 65536) -> str:
    """The end of a run's log (logs are capped, so this is the run's last output)."""
    with log_path.open("rb") as fh:
        fh.seek(max(0, log_path.stat().st_size - size))
        return fh.read().decode("utf-8", errors="replace")


def run_child(
    argv: list[str],
    cwd: Path,
    env: dict[str, str],
    timeout_s: float,
    log_path: Path,
    pid_file: Path | None = None,
    log_cap: int = LOG_CAP_BYTES,
    watch: Callable[[int], Callable[[], None]] | None = None,
    **popen: Any,
) -> tuple[RunResult, str]:
    """Run argv to its end or the timeout; (result, the log's last 64 KB). `watch(pid)` starts
    watching the group and returns the call that stops it (before the group is killed)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    sink = _CappedSink(log_path, log_cap)
    start = time.monotonic()
    proc, reader = spawn(argv, cwd, env, sink, pid_file, **popen)
    stop = watch(proc.pid) if watch else None
    timed_out, cpu = False, None
    try:
        cpu = _wait(proc, start + timeout_s)
        timed_out = cpu is None
    finally:
        if stop:
            stop()
        reap(proc, reader, pid_file)  # the whole group, also when the leader exited first
    sink.close()
    text = log_tail(log_path)
    returncode = None if timed_out else proc.returncode
    result = RunResult(
        returncode=returncode,
        timed_out=timed_out,
        seconds=time.monotonic() - start,
        summary=parse_summary(text) if returncode == 0 else {},
        tail=text[-4000:],
        log_path=log_path,
        cpu_seconds=cpu,
    )
    return result, text


def _wait(proc: subprocess.Popen, deadline: float) -> float | None:
    """Wait for the leader until `deadline` (monotonic); its CPU seconds (user + system, itself and
    every descendant it reaped) as the kernel counted them, or None at the deadline."""
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return usage.ru_utime + usage.ru_stime
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.02)


def run_command(command: str, cwd: Path, env: dict[str, str], timeout_s: float, log_path: Path,
                pid_file: Path | None = None, log_cap: int = LOG_CAP_BYTES) -> RunResult:  # fmt: skip
    """Run a (trusted) setup command with the setup env: the parent's, minus secrets."""
    return run_child(argv_for(command), cwd, setup_env(env), timeout_s, log_path, pid_file, log_cap)[0]


def parse_summary(text: str) -> dict[str, str]:
    """`key: value` lines of a `---` block that ends the output; {} if anything else follows it."""
    lines = [line.strip() for line in text.rstrip().splitlines()]
    if "---" not in lines:
        return {}
    start = len(lines) - 1 - lines[::-1].index("---")
    out: dict[str, str] = {}
    for line in lines[start + 1 :]:
        m = _SUMMARY_KV.match(line)
        if not line or line.startswith("FAIL") or not m:
            return {}
        out[m.group(1)] = m.group(2)
    return out


def parse_number(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        x = float(value)
    except ValueError:
        return None
    return x if math.isfinite(x) else None  # NaN/inf are not results


def metric_from(result: RunResult, metric: str, regex: str | None) -> float | None:
    """The metric of a finished run, or None (crash). Regex mode scans the log tail, last match."""
    if result.timed_out or result.returncode != 0:
        return None
    if regex is None:
        return parse_number(result.summary.get(metric))
    text = result.log_path.read_text(errors="replace")[-65536:] if result.log_path else result.tail
    matches = re.findall(regex, text, flags=re.MULTILINE)
    return parse_number(matches[-1] if matches else None)
