"""
==============================================================================================
 nightlab FIXED HARNESS: corpus sources for trainer/prepare.py. AGENTS NEVER EDIT THIS FILE.
==============================================================================================

Three sources, each returning documents plus a deterministic manifest (what went in, hashed):
  stdlib    offline default: the .py sources of this Python's standard library + pydoc topics.
            Val and test come only from HELDOUT_PACKAGES, packages no training run imports: the
            run's sandbox hides them wherever a copy exists (program `sandbox.hides`), so a run
            cannot rebuild val and test as the part of the stdlib missing from its train split.
  climbmix  autoresearch's parquet shards, downloaded with retries and atomic renames
  folder    a user's folder of .txt files (one document each) and .parquet files (a `text` column)
"""

from __future__ import annotations

import hashlib
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path

CLIMBMIX_BASE_URL = "https://huggingface.co/datasets/karpathy/climbmix-400b-shuffle/resolve/main"
CLIMBMIX_MAX_SHARD = 6542  # shard_00000 .. shard_06542
DOWNLOAD_ATTEMPTS = 5
MIN_DOC_CHARS = 64  # shorter documents (empty __init__.py files, stubs) carry no signal
# The stdlib packages val and test are drawn from (~20 % of the stdlib's text): IDLE, tkinter,
# the turtle demos and the pydoc topics. No training run needs them, few packages vendor them,
# and a program hides every directory of these names from its runs (`sandbox.hides`). The cpu
# preset sends none of their text to train: pydoc topics nest (`naming` is inside `execmodel`),
# so a topic in train would put part of another in val's or test's text on the training side.
HELDOUT_PACKAGES = ("idlelib", "tkinter", "turtledemo", "pydoc_data")


class DataError(Exception):
    """Bad data input. Always names the path it is about."""

    def __init__(self, path, message: str):
        self.path = str(path)
        super().__init__(f"{self.path}: {message}")


@dataclass(frozen=True)
class Document:
    name: str  # where it came from: a relative path, a topic, or shard:row
    text: str
    holdable: bool = True  # may go to val or test (stdlib: only text a run cannot read)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---- stdlib (offline default) ----


def stdlib_documents() -> tuple[list[Document], list]:
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "test", "tests", "idle_test", "__pycache__"}
    files = sorted(p for p in root.rglob("*.py") if not skip & set(p.relative_to(root).parts))
    docs, manifest = [], []
    for p in files:
        raw = p.read_bytes()
        text = raw.decode("utf-8", "replace")
        if len(text) >= MIN_DOC_CHARS:
            rel = p.relative_to(root).as_posix()
            docs.append(Document(rel, text, holdable=rel.split("/")[0] in HELDOUT_PACKAGES))
            manifest.append([rel, _sha(raw)])
    from pydoc_data.topics import topics

    for name in sorted(topics):
        if len(topics[name]) >= MIN_DOC_CHARS:
            docs.append(Document(f"pydoc:{name}", topics[name], holdable="pydoc_data" in HELDOUT_PACKAGES))
            manifest.append([f"pydoc:{name}", _sha(topics[name].encode())])
    return docs, manifest


# ---- parquet (climbmix shards and user folders) ----


def parquet_documents(path: Path) -> list[Document]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise DataError(path, f"unreadable parquet file ({e})") from e
    if "text" not in pf.schema_arrow.names:
        raise DataError(path, f"parquet file has no `text` column (columns: {pf.schema_arrow.names})")
    try:
        table = pf.read(columns=["text"])
    except (pa.ArrowException, OSError) as e:
        raise DataError(path, f"unreadable parquet file ({e})") from e
    return [Document(f"{path.name}:{i}", t) for i, t in enumerate(table.column("text").to_pylist())
            if isinstance(t, str) and len(t) >= MIN_DOC_CHARS]


def download_file(url: str, dest: Path, attempts: int = DOWNLOAD_ATTEMPTS, log=print) -> Path:
    """Fetch url to dest: stream to a temp file, rename when complete, retry with backoff."""
    import requests

    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    for attempt in range(1, attempts + 1):
        try:
            with requests.get(url, stream=True, timeout=30) as r:
                r.raise_for_status()
                with open(tmp, "wb") as f:
                    for chunk in r.iter_content(1 << 20):
                        f.write(chunk)
            tmp.rename(dest)
            return dest
        except (requests.RequestException, OSError) as e:
            tmp.unlink(missing_ok=True)
            if attempt == attempts:
                raise DataError(url, f"download failed after {attempts} attempts: {e}") from e
            wait = min(2 ** attempt, 30)
            log(f"download {url}: attempt {attempt} failed ({e}); retrying in {wait}s")
            time.sleep(wait)
    raise AssertionError("unreachable")


def climbmix_documents(num_shards: int, base_url: str, cache: Path, log=print) -> tuple[list[Document], list]:
    if not 1 <= num_shards <= CLIMBMIX_MAX_SHARD + 1:
        raise DataError("--num-shards", f"must be in 1..{CLIMBMIX_MAX_SHARD + 1}, got {num_shards}")
    from concurrent.futures import ThreadPoolExecutor

    names = [f"shard_{i:05d}.parquet" for i in range(num_shards)]
    folder = cache / "climbmix"
    with ThreadPoolExecutor(8) as pool:
        paths = list(pool.map(lambda n: download_file(f"{base_url.rstrip('/')}/{n}", folder / n, log=log), names))
    docs, manifest = [], []
    for p in paths:
        docs.extend(parquet_documents(p))
        manifest.append([p.name, p.stat().st_size])
    return docs, manifest


# ---- user folder ----


def folder_documents(path: str | None) -> tuple[list[Document], list]:
    if not path:
        raise DataError("--path", "the folder source needs --path DIR")
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DataError(root, "data folder does not exist")
    files = sorted(p for p in root.rglob("*") if p.suffix in (".txt", ".parquet") and p.is_file())
    if not files:
        raise DataError(root, "data folder has no .txt or .parquet files")
    docs, manifest = [], []
    for p in files:
        rel = p.relative_to(root).as_posix()
        if p.suffix == ".txt":
            raw = p.read_bytes()
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(p, f"not UTF-8 text ({e})") from e
            if len(text) >= MIN_DOC_CHARS:
                docs.append(Document(rel, text))
        else:
            raw = p.read_bytes()
            docs.extend(parquet_documents(p))
        manifest.append([rel, _sha(raw)])
    if not docs:
        raise DataError(root, f"data folder has no documents of at least {MIN_DOC_CHARS} characters")
    return docs, manifest


def load_source(source: str, *, path: str | None, num_shards: int, base_url: str, cache: Path,
                log=print) -> tuple[list[Document], list]:
    if source == "stdlib":
        return stdlib_documents()
    if source == "climbmix":
        return climbmix_documents(num_shards, base_url, cache, log=log)
    if source == "folder":
        return folder_documents(path)
    raise DataError("--source", f"unknown source {source!r}; expected stdlib, climbmix or folder")
