"""The campaign workspace: a git worktree of the target repo on branch `nightlab/<tag>`.

Every experiment is one commit on that branch. A keep leaves the branch at the experiment commit;
a discard or crash resets it to the best commit. The user's own checkout is never touched.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

from org.errors import HarnessError

_GIT_ID = ["-c", "user.name=nightlab", "-c", "user.email=nightlab@localhost",
           "-c", "commit.gpgsign=false"]  # fmt: skip


def git(cwd: Path, *args: str, check: bool = True) -> str:
    proc = subprocess.run(
        ["git", *_GIT_ID, *args], cwd=cwd, capture_output=True, text=True, check=False,
        env={**os.environ, "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"},
    )  # fmt: skip
    if check and proc.returncode != 0:
        raise HarnessError(f"git {' '.join(args)} failed in {cwd}: {proc.stderr.strip()}")
    return proc.stdout.strip()


def branch_name(tag: str) -> str:
    return f"nightlab/{tag}"


class Workspace:
    def __init__(self, path: Path, keep: tuple[str, ...] = ()):
        self.path = path
        self.keep = list(keep)  # untracked paths `reset` leaves alone: links to the program's data

    @classmethod
    def create(cls, repo: Path, path: Path, tag: str) -> Workspace:
        """Add a worktree at `path` on a new branch from the repo's HEAD."""
        if git(repo, "rev-parse", "--verify", "--quiet", f"refs/heads/{branch_name(tag)}",
               check=False):  # fmt: skip
            raise HarnessError(f"branch {branch_name(tag)} already exists in {repo}")
        path.parent.mkdir(parents=True, exist_ok=True)
        git(repo, "worktree", "add", "-b", branch_name(tag), str(path), "HEAD")
        return cls(path)

    # ---- reading ------------------------------------------------------------------------------

    def head(self) -> str:
        return git(self.path, "rev-parse", "HEAD")

    def read(self, rel: str) -> str:
        return (self.path / rel).read_text(encoding="utf-8")

    def blob_hash(self, rel: str) -> str:
        """sha256 of the file as it is on disk now (what a run would actually execute)."""
        p = self.path / rel
        return hashlib.sha256(p.read_bytes()).hexdigest() if p.exists() else "missing"

    def show(self, commit: str, rel: str) -> str | None:
        """File text at a commit (None if it did not exist there), byte-exact unlike `git()`."""
        proc = subprocess.run(["git", "show", f"{commit}:{rel}"], cwd=self.path, capture_output=True)
        return proc.stdout.decode("utf-8", errors="replace") if proc.returncode == 0 else None

    def changed_files(self, base: str, head: str = "HEAD") -> list[str]:
        out = git(self.path, "diff", "--name-only", "--no-renames", base, head)
        return [line for line in out.splitlines() if line]

    def dirty_files(self) -> list[str]:
        out = git(self.path, "status", "--porcelain", "--untracked-files=all")
        return [line[3:] for line in out.splitlines() if line]

    def diff(self, base: str, head: str = "HEAD", max_chars: int = 6000) -> str:
        text = git(self.path, "diff", "--no-color", "--unified=2", base, head)
        return text if len(text) <= max_chars else text[:max_chars] + "\n[diff truncated]\n"

    def parent(self, commit: str) -> str:
        return git(self.path, "rev-parse", f"{commit}^")

    def is_ancestor(self, a: str, b: str) -> bool:
        proc = subprocess.run(["git", "merge-base", "--is-ancestor", a, b], cwd=self.path,
                              check=False)
        return proc.returncode == 0

    def log(self, base: str) -> list[str]:
        """Commits from `base` (exclusive) to HEAD, oldest first."""
        out = git(self.path, "rev-list", "--reverse", f"{base}..HEAD")
        return [line for line in out.splitlines() if line]

    # ---- writing ------------------------------------------------------------------------------

    def link(self, rel: str, src: Path) -> None:
        """A link at `rel` to `src` (a file the repo git-ignores, its data), unless one is there."""
        path = self.path / rel
        if rel not in self.keep:
            self.keep.append(rel)
        if not path.exists() and not path.is_symlink():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.symlink_to(src.resolve())

    def write(self, rel: str, text: str) -> None:
        (self.path / rel).write_text(text, encoding="utf-8")

    def reset(self, commit: str) -> None:
        """Hard-reset to `commit` and drop untracked files a run or an edit left behind (not the
        links to the program's data files)."""
        git(self.path, "reset", "--hard", "--quiet", commit)
        git(self.path, "clean", "-fdq", *[f"--exclude=/{rel}" for rel in self.keep])

    def commit(self, message: str, paths: list[str]) -> str:
        git(self.path, "add", "--", *paths)
        git(self.path, "commit", "--quiet", "--no-verify", "--allow-empty", "-m", message)
        return self.head()
