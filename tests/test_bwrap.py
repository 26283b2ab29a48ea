"""The bubblewrap sandbox (org/bwrap.py), attacked the ways a run's code would try.

Each probe runs inside a real sandbox and reports what it could do; every way to one goal
(reaching val, writing the cache, leaving a file for the next run, the network) is tried in
several forms: direct paths, `..` traversal, /proc, symlinks made inside, renames, other
syscalls. Skipped only where bubblewrap cannot run at all (CI installs it: .ci/run).
"""

from __future__ import annotations

import json
import socket
import textwrap
from pathlib import Path

import pytest

from org import bwrap
from org.sandbox import RunLimits, run_sandboxed

pytestmark = pytest.mark.skipif(bwrap.unavailable() is not None, reason=str(bwrap.unavailable()))

PROBES = r'''
import glob, json, os, socket, subprocess, sys
data, val, secret, out, port = sys.argv[1:6]
r = {}

def attempt(name, fn):
    try:
        fn()
        r[name] = True
    except Exception as e:  # noqa: BLE001
        r[name] = False

def read(path):
    with open(path, "rb") as fh:
        fh.read()

def write(path):
    with open(path, "ab") as fh:
        fh.write(b"poison")

# reaching val or anything outside the view, by every road
attempt("read_data", lambda: read(os.path.join(data, "train.bin")))
attempt("read_val", lambda: read(os.path.join(val, "val.bin")))
attempt("read_val_dotdot", lambda: read(os.path.join(data, "..", "val", "val.bin")))
attempt("read_val_proc_root", lambda: read("/proc/1/root" + os.path.join(val, "val.bin")))
attempt("read_val_glob", lambda: [read(p) for p in glob.glob(os.path.dirname(val) + "/**/*.bin", recursive=True)
                                  if "val" in p] or 1 / 0)
os.symlink(os.path.join(val, "val.bin"), "/tmp/v")
attempt("read_val_symlink", lambda: read("/tmp/v"))
attempt("read_secret", lambda: read(secret))
attempt("read_shadow", lambda: read("/etc/shadow"))
attempt("read_home", lambda: os.listdir(os.path.expanduser("~root")) and read(secret))
# changing what later runs read
attempt("write_data", lambda: write(os.path.join(data, "train.bin")))
attempt("write_data_osopen", lambda: os.close(os.open(os.path.join(data, "new.pkl"), os.O_CREAT | os.O_WRONLY)))
attempt("rename_data", lambda: os.rename(os.path.join(data, "train.bin"), os.path.join(data, "t.bin")))
attempt("unlink_data", lambda: os.unlink(os.path.join(data, "train.bin")))
attempt("chmod_data", lambda: os.chmod(os.path.join(data, "train.bin"), 0o777))
attempt("write_worktree", lambda: write("notes.txt"))
attempt("mkdir_pycache", lambda: os.mkdir("__pycache__"))
attempt("write_out", lambda: write(os.path.join(out, "model.pt")))
attempt("write_tmp", lambda: write("/tmp/scratch"))
# the network: the host's loopback server, and the world
def connect(host, p):
    s = socket.create_connection((host, p), timeout=2)
    s.close()
attempt("net_host_loopback", lambda: connect("127.0.0.1", int(port)))
attempt("net_world", lambda: connect("1.1.1.1", 53))
# processes and namespaces
r["pids"] = len([p for p in os.listdir("/proc") if p.isdigit()])
attempt("nested_userns", lambda: subprocess.run(["unshare", "-r", "true"], check=True, capture_output=True))
r["home"] = os.environ.get("HOME")
r["pycache_prefix"] = os.environ.get("PYTHONPYCACHEPREFIX")
r["writes_bytecode"] = not sys.dont_write_bytecode
print(json.dumps(r))
'''


@pytest.fixture
def world(tmp_path):
    cache = tmp_path / "cache"
    data, val = cache / "data" / "cpu", cache / "val" / "cpu"
    for d, name in ((data, "train.bin"), (val, "val.bin")):
        d.mkdir(parents=True)
        (d / name).write_bytes(b"\x01\x02" * 64)
    secret = tmp_path / "home" / ".ssh" / "id_ed25519"
    secret.parent.mkdir(parents=True)
    secret.write_text("PRIVATE KEY")
    work, out = tmp_path / "worktree", tmp_path / "out"
    work.mkdir()
    out.mkdir()
    (work / "probe.py").write_text(PROBES)
    return {"data": data, "val": val, "secret": secret, "work": work, "out": out}


def _probe(world, port: int) -> dict:
    view = bwrap.View(cwd=world["work"], reads=(world["data"],), writes=(world["out"],), tmp_bytes=16 * 2**20)
    cmd = f"python probe.py {world['data']} {world['val']} {world['secret']} {world['out']} {port}"
    res = run_sandboxed(cmd, world["work"], {}, RunLimits(60), world["work"].parent / "probe.log", view=view)
    assert res.returncode == 0, res.tail
    return json.loads(res.tail.strip().splitlines()[-1])


def test_a_run_reads_its_data_and_nothing_else(world):
    with socket.create_server(("127.0.0.1", 0)) as server:
        r = _probe(world, server.getsockname()[1])
    assert r["read_data"] is True
    for road in ("read_val", "read_val_dotdot", "read_val_proc_root", "read_val_glob", "read_val_symlink",
                 "read_secret", "read_shadow", "read_home"):
        assert r[road] is False, road


def test_a_run_cannot_change_what_later_runs_read(world):
    with socket.create_server(("127.0.0.1", 0)) as server:
        r = _probe(world, server.getsockname()[1])
    for road in ("write_data", "write_data_osopen", "rename_data", "unlink_data", "chmod_data",
                 "write_worktree", "mkdir_pycache"):
        assert r[road] is False, road
    assert r["write_out"] is True and r["write_tmp"] is True
    assert (world["data"] / "train.bin").read_bytes() == b"\x01\x02" * 64
    assert sorted(p.name for p in world["work"].iterdir()) == ["probe.py"]  # no pycache, no notes
    assert (world["out"] / "model.pt").read_bytes() == b"poison"  # its own output: allowed
    assert r["home"] == "/tmp/home" and r["pycache_prefix"] is None and r["writes_bytecode"] is False


def test_a_run_has_no_network_no_host_processes_and_no_nested_namespaces(world):
    with socket.create_server(("127.0.0.1", 0)) as server:
        r = _probe(world, server.getsockname()[1])
    assert r["net_host_loopback"] is False and r["net_world"] is False
    assert r["pids"] <= 3  # bwrap's init, the probe (and the unshare attempt, gone by now)
    assert r["nested_userns"] is False


def test_the_scratch_tmpfs_is_a_real_disk_cap(world):
    (world["work"] / "fill.py").write_text(textwrap.dedent("""
        import os
        try:
            with open("/tmp/big", "wb") as fh:
                for _ in range(64):
                    fh.write(os.urandom(2**20))
            print("wrote 64 MiB")
        except OSError as e:
            print("refused:", e.strerror)
    """))
    view = bwrap.View(cwd=world["work"], writes=(world["out"],), tmp_bytes=8 * 2**20)
    res = run_sandboxed("python fill.py", world["work"], {}, RunLimits(60), world["out"] / "fill.log", view=view)
    assert "refused: No space left on device" in res.tail


SURVIVOR = r'''
import ctypes, os, signal, sys, time
token, how = sys.argv[1], sys.argv[2]
libc = ctypes.CDLL(None)
PR_SET_PDEATHSIG = 1


def linger():
    libc.prctl(PR_SET_PDEATHSIG, 0, 0, 0, 0)  # no death signal of its own
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    os.execvp(sys.executable, [sys.executable, "-c", "import time; time.sleep(120)", token])


if how == "itself":  # the command clears its death signal and outlives its timeout
    linger()
if how == "daemon":  # a grandchild in a session of its own, never waited for
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            linger()
        os._exit(0)
    time.sleep(120)
if how == "kill-init":  # the namespace's init out of the way first, then linger
    for sig in (signal.SIGKILL, signal.SIGTERM, signal.SIGSTOP):
        try:
            os.kill(1, sig)
        except OSError:
            pass
    linger()
'''


def _alive_with(token: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and token.encode() in (entry / "cmdline").read_bytes():
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if state not in ("Z", "X"):
                    found.append(int(entry.name))
        except OSError:
            continue
    return found


@pytest.mark.parametrize("how", ["itself", "daemon", "kill-init"])
def test_a_run_that_clears_its_death_signal_dies_with_its_sandbox(tmp_path, how):
    """The harness kills a run by killing bwrap; what is inside dies with the namespace's init,
    whose death signal is nightlab's (bwrap.INIT), not the command's to clear."""
    import os
    import signal
    import time

    work = tmp_path / "w"
    work.mkdir()
    (work / "survive.py").write_text(SURVIVOR)
    token = f"nightlab-survivor-{os.getpid()}-{how}"
    view = bwrap.View(cwd=work, tmp_bytes=16 * 2**20)
    res = run_sandboxed(f"python survive.py {token} {how}", work, {}, RunLimits(3), tmp_path / "s.log", view=view)
    assert res.timed_out
    deadline = time.monotonic() + 5
    while _alive_with(token) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = _alive_with(token)
    for pid in left:  # never leave one behind, whatever the verdict
        os.kill(pid, signal.SIGKILL)
    assert left == [], (tmp_path / "s.log").read_text()[-2000:]


def test_the_view_binds_parents_before_children(tmp_path):
    """A data directory under the worktree (or an output directory under a read-only one) must
    land inside it, writable where asked: bind order is by depth."""
    work = tmp_path / "w"
    (work / "out").mkdir(parents=True)
    argv = bwrap.argv(bwrap.View(cwd=work, writes=(work / "out",)))
    binds = [(argv[i], argv[i + 1]) for i in range(len(argv) - 1) if argv[i] in ("--bind", "--ro-bind")]
    order = [path for _, path in binds]
    assert order.index(str(work.resolve())) < order.index(str((work / "out").resolve()))
    assert ("--bind", str((work / "out").resolve())) in binds
    assert ("--ro-bind", str(work.resolve())) in binds
    assert not any(path in ("/", "/root", "/home", str(Path.home())) for _, path in binds)


HELDOUT_PROBE = r'''
import importlib, json, os, sys, sysconfig
wanted = set(json.load(open(sys.argv[1])))
r = {"found": [], "import": [], "open": []}
# 1. every text file on the machine the run can see, whatever its name or path (other Pythons,
# vendored copies, docs): any line of the held-out text found anywhere is a leak
for top, dirs, files in os.walk("/", onerror=lambda e: None):
    if top in ("/proc", "/sys", "/dev"):
        dirs[:] = []
        continue
    for f in files:
        if f.endswith((".py", ".pyi", ".txt", ".rst", ".html", ".md", ".tcl")):
            try:
                with open(os.path.join(top, f), "rb") as fh:
                    text = fh.read().decode("utf-8", "replace")
            except OSError:
                continue
            r["found"] += [s for s in (ln.strip() for ln in text.splitlines()) if s in wanted]
# 2. the import system, and paths built from the interpreter's own configuration
for name in ("pydoc_data.topics", "idlelib.editor", "tkinter", "turtledemo"):
    try:
        if importlib.import_module(name).__file__:  # an empty directory imports as a namespace package
            r["import"].append(name)
    except Exception:
        pass
for base in (sysconfig.get_paths()["stdlib"], "/proc/1/root" + sysconfig.get_paths()["stdlib"], "/usr/lib/python3.11"):
    for rel in ("pydoc_data/topics.py", "idlelib/editor.py", "tkinter/__init__.py"):
        try:
            open(os.path.join(base, rel), "rb").read(1)
            r["open"].append(os.path.join(base, rel))
        except OSError:
            pass
r["found"] = sorted(set(r["found"]))[:50]
print(json.dumps(r))
'''


@pytest.mark.slow
def test_the_cpu_presets_val_and_test_text_is_nowhere_a_run_can_read(tmp_path):
    """The cpu corpus is this machine's stdlib; val and test come only from the packages the
    quickstart hides (trainer.corpus.HELDOUT_PACKAGES). A run that could read them could train on
    the very text it is scored on (the review found all of val and test as the complement of the
    train split). The probe looks for every distinctive line of that text in every text file the
    run can see, imports it, and opens it by built paths."""
    from org.measure import view
    from org.program import load_program
    from trainer.corpus import HELDOUT_PACKAGES, stdlib_documents

    program = load_program(Path(__file__).parents[1] / "programs" / "quickstart.md")
    assert set(HELDOUT_PACKAGES) <= set(program.spec.sandbox.hides)
    docs, _ = stdlib_documents()
    train_lines = {ln.strip() for d in docs if not d.holdable for ln in d.text.splitlines()}
    held = [d for d in docs if d.holdable]
    assert sum(len(d.text) for d in held) > 1_000_000  # enough text for val and test
    from trainer.prepare import PRESETS, split_docs

    cpu = PRESETS["cpu"]  # none of it trains: pydoc topics nest, a topic in train would be part of another
    assert not any(d.holdable for d in split_docs(docs, cpu["val_frac"], cpu["test_frac"], b"salt")["train"])
    wanted = {s for d in held for s in (ln.strip() for ln in d.text.splitlines())
              if len(s) >= 40 and s not in train_lines}
    work = tmp_path / "work"
    work.mkdir()
    (work / "wanted.json").write_text(json.dumps(sorted(wanted)))
    (work / "probe.py").write_text(HELDOUT_PROBE)
    res = run_sandboxed("python probe.py wanted.json", work, {}, RunLimits(300), tmp_path / "probe.log",
                        view=view(program, "run", work))
    assert res.returncode == 0, res.tail
    r = json.loads(res.tail.strip().splitlines()[-1])
    assert r["import"] == [] and r["open"] == []
    # A few generic lines (rulers, `with open(filename, encoding='utf-8') as f:`) occur elsewhere;
    # the text itself does not: unhidden, ~80 % of these lines are found.
    assert len(r["found"]) < min(50, 0.005 * len(wanted)), r["found"]
