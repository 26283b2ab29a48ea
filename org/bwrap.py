"""Bubblewrap: what an experiment process can see, write and reach.

An experiment's code is untrusted (an edit-mode proposer writes it). Every run, evaluation and
held-out test runs under bubblewrap (`bwrap`, Debian/Ubuntu package `bubblewrap`) in a root
that is empty but for what `View` names:
- read-only: the system (`/usr` and the merged-/usr links, a few files of `/etc`, `/sys`), the
  Python that runs nightlab (its prefix and the venv), the worktree, and the data the program
  says this phase reads (`sandbox.reads`: the training run sees the tokenizer and the train
  split; only the evaluation sees val, only the test sees test);
- hidden: every directory named in `View.hides`, wherever one exists under what is bound (the
  cpu preset's val and test text is stdlib packages; copies in other Pythons are hidden too);
- writable: a size-capped tmpfs at /tmp (also HOME and TMPDIR) and /dev/shm, and the run's
  private output directory (its saved model). Nothing a run writes reaches another run: not the
  data cache, not the repo, not `__pycache__`. Python writes no bytecode
  (PYTHONDONTWRITEBYTECODE) and reads the installed packages' own, which no run can write: a
  bytecode cache on the scratch tmpfs (PYTHONPYCACHEPREFIX) would start empty and compile torch
  from source in every process (`import torch` 8.0 s instead of 3.2 s on Machine A);
- nothing else: no network (only loopback), its own PID, IPC, UTS and user namespaces, no
  capabilities, no nested user namespaces, a new session (no terminal injection), killed when
  nightlab dies (`--die-with-parent`). GPU device nodes are passed through where they exist.
"""

from __future__ import annotations

import functools
import glob
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

INSTALL_HINT = "install bubblewrap (Debian/Ubuntu: sudo apt-get install bubblewrap; Fedora: sudo dnf install bubblewrap)"
# System directories a process needs; each is bound read-only, or re-created as the same symlink
# where it is one (merged /usr: /bin -> usr/bin).
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/opt")
# From /etc only what programs read to start: users, the dynamic linker, time zone, TLS roots,
# Debian's alternatives. Not shadow files, not ssh keys, not the machine's secrets.
ETC_FILES = ("passwd", "group", "nsswitch.conf", "hosts", "ld.so.cache", "ld.so.conf", "ld.so.conf.d",
             "localtime", "alternatives", "ssl", "ca-certificates", "mime.types")  # fmt: skip
GPU_DEVICES = ("/dev/nvidia*", "/dev/nvidia-caps", "/dev/dri", "/dev/kfd")
SCRATCH = "/tmp"  # the tmpfs: HOME, TMPDIR and the bytecode cache live here, and die with the run


@dataclass(frozen=True)
class View:
    """What one sandboxed process sees besides the system and the interpreter."""

    cwd: Path  # the worktree: read-only, the working directory
    reads: tuple[Path, ...] = ()  # data this phase may read (read-only)
    writes: tuple[Path, ...] = ()  # private output directories (read-write, on disk)
    mounts: tuple[tuple[Path, str], ...] = ()  # (file, where the sandbox sees it), read-only
    tmp_bytes: int = 2 * 2**30  # the /tmp tmpfs (and /dev/shm) cap: a real disk cap, in memory
    hides: tuple[str, ...] = ()  # directory names hidden wherever they are (an empty read-only tmpfs)

    def describe(self) -> str:
        reads = ", ".join(str(p) for p in self.reads) or "no data"
        return (f"bubblewrap: no network, read-only worktree and data ({reads}), writes only to "
                f"{SCRATCH} ({self.tmp_bytes / 2**30:.3g} GiB tmpfs) and its output directory")


@functools.lru_cache(maxsize=1)
def unavailable() -> str | None:
    """Why bubblewrap cannot sandbox a run on this machine (None: it can). Probed once."""
    exe = shutil.which("bwrap")
    if exe is None:
        return f"bubblewrap is not installed: {INSTALL_HINT}"
    probe = [exe, *_namespaces(), "--ro-bind", "/", "/", "true"]
    try:
        proc = subprocess.run(probe, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"bubblewrap does not start here ({e})"
    if proc.returncode != 0:
        why = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"
        return f"bubblewrap cannot create its namespaces here ({why}); unprivileged user namespaces may be off"
    return None


def _namespaces() -> list[str]:
    # --as-pid-1 with INIT as the command: nightlab's own init is the namespace's PID 1 (see INIT)
    return ["--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent", "--new-session",
            "--as-pid-1", "--cap-drop", "ALL"]  # fmt: skip


# The PID namespace's init, run by the interpreter that runs nightlab (`python -I -S -c INIT cmd
# args...`): it starts the command and reaps every process until the command exits, then exits
# with its status (128 + the signal that killed it, as bwrap reports). It is a child of bwrap's
# own process, which reaps it, so the CPU time of the command and of everything reaped under it
# reaches the rusage nightlab waits for (under bwrap's init the count stopped at the namespace:
# that init is never reaped by its parent). It, not the command, holds the death signal bwrap
# sets (`--die-with-parent`): a command that clears its own still dies with the namespace when
# this init does, and a process inside cannot kill or signal its namespace's init. Signals
# Python ignores are set back to their defaults for the command (a file over RLIMIT_FSIZE must
# kill it with SIGXFSZ, as the sandbox expects).
INIT = """\
import os, signal, sys
pid = os.fork()
if pid == 0:
    for s in (signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(s, signal.SIG_DFL)
    try:
        os.execvp(sys.argv[1], sys.argv[1:])
    except OSError as e:
        print(f"nightlab init: cannot run {sys.argv[1]}: {e}", file=sys.stderr)
        os._exit(127)
while True:
    done, status = os.waitpid(-1, 0)
    if done == pid:
        code = os.waitstatus_to_exitcode(status)
        os._exit(code if code >= 0 else 128 - code)
"""


def _interpreter_paths() -> list[Path]:
    """The Python running nightlab (runs start it as `python`): its prefixes, real and as named."""
    paths = {Path(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix)}
    paths |= {p.resolve() for p in paths} | {Path(sys.executable).resolve().parent.parent}
    return sorted(paths)


@functools.lru_cache(maxsize=64)
def hidden_dirs(names: tuple[str, ...], root: Path) -> tuple[Path, ...]:
    """Every directory under `root` whose name is one of `names` (symlinks not followed: a link
    resolves to a directory found under its own root, or to one not bound at all). Walking /usr,
    /opt and the interpreter takes ~2 s on Machine A: once per process, names and root."""
    found = []
    for top, dirs, _ in os.walk(root, onerror=lambda e: None):
        found += [Path(top, d) for d in dirs if d in names]
        dirs[:] = [d for d in dirs if d not in names]
    return tuple(found)


def argv(view: View) -> list[str]:
    """The bwrap command line that runs a command in `view` (the command follows), under INIT."""
    exe = shutil.which("bwrap")
    if exe is None:
        raise RuntimeError(f"bubblewrap is not installed: {INSTALL_HINT}")
    a = [exe, *_namespaces(), "--size", str(view.tmp_bytes), "--tmpfs", SCRATCH, "--proc", "/proc",
         "--dev", "/dev", "--size", str(view.tmp_bytes), "--tmpfs", "/dev/shm"]  # fmt: skip
    for d in SYSTEM_DIRS:
        p = Path(d)
        if p.is_symlink():
            a += ["--symlink", str(p.readlink()), d]
        elif p.is_dir():
            a += ["--ro-bind", d, d]
    a += [x for name in ETC_FILES if Path("/etc", name).exists() for x in ("--ro-bind", f"/etc/{name}", f"/etc/{name}")]
    if Path("/sys").is_dir():
        a += ["--ro-bind", "/sys", "/sys"]
    for dev in sorted({d for pattern in GPU_DEVICES for d in glob.glob(pattern)}):
        a += ["--dev-bind", dev, dev]
    # Parents before children: a bind under another one lands inside it, not under it.
    ro = {*_interpreter_paths(), view.cwd.resolve(), *(p.resolve() for p in view.reads)}
    rw = {p.resolve() for p in view.writes}
    for path in sorted(ro | rw, key=lambda p: len(p.parts)):
        if path.exists():
            a += ["--bind" if path in rw else "--ro-bind", str(path), str(path)]
    for src, dest in view.mounts:
        a += ["--ro-bind", str(src), dest]
    if view.hides:
        roots = [Path(d) for d in SYSTEM_DIRS if Path(d).is_dir() and not Path(d).is_symlink()]
        roots += [p for p in sorted(ro) if p.is_dir()]
        names = tuple(sorted(set(view.hides)))
        for d in sorted({d for root in roots for d in hidden_dirs(names, root)}):
            a += ["--size", "4096", "--tmpfs", str(d), "--remount-ro", str(d)]
    a += ["--setenv", "HOME", f"{SCRATCH}/home", "--setenv", "TMPDIR", SCRATCH,
          "--setenv", "PYTHONDONTWRITEBYTECODE", "1", "--unsetenv", "PYTHONPYCACHEPREFIX", "--dir", f"{SCRATCH}/home",
          "--chdir", str(view.cwd.resolve()), "--", sys.executable, "-I", "-S", "-c", INIT]  # fmt: skip
    return a
