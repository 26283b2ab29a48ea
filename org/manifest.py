"""The data a campaign's runs read, hashed after setup and checked before every run.

Sandboxed runs see the data cache through read-only binds, so no run can change it; but an
`--unsandboxed` campaign, another campaign on the same cache, or a person can. A file the
harness loads (a pickled tokenizer, a token file) that changed under a campaign would make every
later run incomparable with the earlier ones, or run someone's code: the campaign stops before
the next run and names the file.

Files up to `FULL_HASH_BYTES` are hashed whole; larger ones (token shards) by size, mtime and
their first and last MiB, so the check before each run stays well under a second.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

from org.errors import InputError

FULL_HASH_BYTES = 256 * 2**20
EDGE_BYTES = 2**20


def _file_digest(path: Path) -> str:
    st = path.stat()
    h = hashlib.sha256()
    with path.open("rb") as fh:
        if st.st_size <= FULL_HASH_BYTES:
            for chunk in iter(lambda: fh.read(2**20), b""):
                h.update(chunk)
            return h.hexdigest()
        h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
        h.update(fh.read(EDGE_BYTES))
        fh.seek(-EDGE_BYTES, os.SEEK_END)
        h.update(fh.read(EDGE_BYTES))
    return "edges:" + h.hexdigest()


def digest(roots: Iterable[Path]) -> dict[str, str]:
    """path -> digest of every file under `roots` (a root may be a file; missing roots are skipped)."""
    out: dict[str, str] = {}
    for root in roots:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else []
        for p in files:
            out[str(p)] = _file_digest(p)
    return out


def save(path: Path, manifest: dict[str, str]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True))
    os.replace(tmp, path)


def verify(path: Path, roots: Iterable[Path]) -> None:
    """InputError naming the first file that changed, appeared or vanished since `save`."""
    if not path.is_file():
        return  # a campaign from before manifests: nothing to hold the data against
    then = json.loads(path.read_text())
    now = digest(roots)
    for name in sorted(set(then) | set(now)):
        if then.get(name) != now.get(name):
            what = "appeared" if name not in then else "vanished" if name not in now else "changed"
            raise InputError(Path(name), "data cache", f"{what} since this campaign's setup hashed the data "
                             f"its runs read ({path}); runs after it would not be comparable with those "
                             "before. Start a new campaign (after `python -m trainer.prepare --force` if "
                             "the cache is damaged)")  # fmt: skip
