"""The run process: process-group timeout, capped log, metrics only from the final summary."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from org.environment import is_secret, run_env, setup_env
from org.runner import metric_from, parse_summary, run_command


def _script(tmp_path, body: str) -> str:
    path = tmp_path / "t.py"
    path.write_text(body)
    return f"python {path}"


def test_summary_is_the_last_block_only(tmp_path):
    cmd = _script(tmp_path, "print('---'); print('val_bpb: 0.1')\nprint('noise')\n"
                  "print('---'); print('val_bpb:   1.500000'); print('peak_mem_mb: 2048.0')\n")
    res = run_command(cmd, tmp_path, {}, 30, tmp_path / "run.log")
    assert res.returncode == 0 and res.summary == {"val_bpb": "1.500000", "peak_mem_mb": "2048.0"}
    assert metric_from(res, "val_bpb", None) == 1.5
    assert metric_from(res, "val_bpb", r"val_bpb:\s+([\d.]+)") == 1.5  # regex: last match


def test_nan_and_nonzero_exit_are_no_metric(tmp_path):
    res = run_command(_script(tmp_path, "print('---'); print('val_bpb: nan')"), tmp_path, {}, 30,
                      tmp_path / "a.log")
    assert metric_from(res, "val_bpb", None) is None
    res = run_command(_script(tmp_path, "print('---'); print('val_bpb: 1.0'); raise SystemExit(1)"),
                      tmp_path, {}, 30, tmp_path / "b.log")
    assert res.returncode == 1 and metric_from(res, "val_bpb", None) is None


def test_timeout_kills_the_whole_group(tmp_path):
    pidfile = tmp_path / "child.pid"
    body = (f"import subprocess, sys, time\n"
            f"p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
            f"open({str(pidfile)!r}, 'w').write(str(p.pid))\n"
            f"print('---'); print('val_bpb: 1.0', flush=True); time.sleep(60)\n")
    start = time.monotonic()
    res = run_command(_script(tmp_path, body), tmp_path, {}, 2, tmp_path / "run.log",
                      pid_file=tmp_path / "run.pid")
    assert res.timed_out and res.returncode is None and time.monotonic() - start < 10
    assert metric_from(res, "val_bpb", None) is None  # a summary printed before the kill is void
    child = int(pidfile.read_text())
    time.sleep(0.2)
    try:
        state = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        state = "gone"
    assert state in ("gone", "Z")
    assert not (tmp_path / "run.pid").exists()


def test_log_is_capped_and_keeps_the_end(tmp_path):
    body = "import sys\nfor i in range(200000): print('x' * 50)\nprint('---'); print('val_bpb: 2.0')\n"
    res = run_command(_script(tmp_path, body), tmp_path, {}, 60, tmp_path / "big.log", log_cap=100_000)
    size = (tmp_path / "big.log").stat().st_size
    assert size < 101_000 and "bytes of output dropped" in (tmp_path / "big.log").read_text()
    assert metric_from(res, "val_bpb", None) == 2.0


def test_secrets_do_not_reach_the_run(tmp_path, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-secret")
    monkeypatch.setenv("HF_TOKEN", "hf-secret")
    body = "import os\nprint('---')\nprint('leak:', sorted(k for k in os.environ if k.endswith(('_KEY', '_TOKEN'))) or 'none')\nprint('preset:', os.environ['NIGHTLAB_PRESET'])\n"
    res = run_command(_script(tmp_path, body), tmp_path, {"NIGHTLAB_PRESET": "cpu"}, 30, tmp_path / "e.log")
    assert res.summary == {"leak": "none", "preset": "cpu"}
    assert "sk-secret" not in (tmp_path / "e.log").read_text()


def test_parse_summary_without_block():
    assert parse_summary("no summary here\n") == {}
    assert sys.executable and os.sep  # the runner swaps a leading `python` for this interpreter


def test_final_summary_must_end_the_output():
    assert parse_summary("x\n---\nval_bpb: 1.0\ndepth: 4\n") == {"val_bpb": "1.0", "depth": "4"}
    assert parse_summary("---\nval_bpb: 0.1\nmore output\n") == {}
    assert parse_summary("---\nval_bpb: 0.1\nFAIL: nan\n") == {}


def test_setup_and_run_envs_drop_the_same_secrets():
    secrets = ["OPENAI_API_KEY", "GITHUB_TOKEN", "HF_HOME", "AWS_REGION", "MY_DB_PASSWORD", "hf_token"]
    base = {name: "x" for name in secrets} | {"PATH": "/bin", "HF_HUB_OFFLINE": "1", "DATA_URL": "u"}
    setup, run = setup_env({}, base), run_env({"OLLAMA_HOST": "h"}, base)
    assert not any(is_secret(k) for k in [*setup, *run]) and set(secrets).isdisjoint({*setup, *run})
    assert setup["HF_HUB_OFFLINE"] == run["HF_HUB_OFFLINE"] == "1"  # an *_OFFLINE switch is no secret
    assert setup["DATA_URL"] == "u" and "DATA_URL" not in run  # setup gets the wider env
