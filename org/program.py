"""Program files (`programs/*.md`): the target contract in front matter, the strategy in the body.

A program says which repo is the target, which files the org may edit, which it must never touch,
how to prepare and run it, and which number to read from the run. Anything with a command and a
metric can be a target; the defaults describe nightlab's own `trainer/`.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import frontmatter
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from org.environment import is_secret
from org.errors import InputError

if TYPE_CHECKING:
    from org.constraint import Constraint
    from org.proposal import Knob

KnobValue = int | float | bool | str


class StopSpec(BaseModel):
    """When the campaign ends by itself. `None` means no limit on that axis."""

    model_config = ConfigDict(extra="forbid")

    max_experiments: int | None = Field(default=None, ge=0)  # runs after the baseline
    max_hours: float | None = Field(default=None, gt=0)  # wall clock since the campaign started
    max_usd: float | None = Field(default=None, ge=0)  # model spend, checked before every call too
    max_tokens: int | None = Field(default=None, ge=0)  # hosted models' tokens, checked before every call
    # A proposer that never produces a runnable change would otherwise loop forever.
    max_failures_in_row: int = Field(default=20, ge=1)
    # The end of a nightly window (epoch seconds; `nightlab nightly --until`, never in a program):
    # no experiment starts unless the most it could take ends before it
    until: float | None = None

    def overridden(self, **limits: Any) -> StopSpec:
        """This spec with the limits given as not None replaced, as given (`--max-experiments`)."""
        return self.model_copy(update={k: v for k, v in limits.items() if v is not None})

    def reason(self, n_done: int, fails_in_row: int, seconds: float, spend_usd: float, now: float = 0.0,
               next_s: float = 0.0) -> str | None:  # fmt: skip
        """Why the campaign stops now (None: it goes on). `n_done` counts experiments after the
        baseline, `seconds` the wall clock since the campaign started, `spend_usd` the model spend,
        `next_s` the most the next experiment could take (checked against `until` from `now`)."""
        if self.until is not None and now + next_s > self.until:
            import datetime

            close = datetime.datetime.fromtimestamp(self.until).strftime("%H:%M")
            return (f"the window closes at {close}: the next experiment could take up to {next_s / 60:.1f} min "
                    f"and {max(0.0, self.until - now) / 60:.1f} min are left")  # fmt: skip
        if self.max_experiments is not None and n_done >= self.max_experiments:
            return f"reached max_experiments={self.max_experiments}"
        if self.max_hours is not None and seconds >= self.max_hours * 3600:
            return f"reached max_hours={self.max_hours}"
        if self.max_usd is not None and spend_usd >= self.max_usd:
            return f"reached max_usd={self.max_usd}"
        if fails_in_row >= self.max_failures_in_row:
            return f"{fails_in_row} proposals in a row never reached a run"
        return None


class ExecutorSpec(BaseModel):
    """Where runs go and how many at once (org/slots.py)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["local", "ray"] = "local"
    # runs at once, each on a device of its own: default one per visible GPU, or one. On CPU each
    # slot gets its share of the cores.
    slots: int | None = Field(default=None, ge=1, le=64)


class NoiseSpec(BaseModel):
    """How a result is told from noise: the same code run again with another seed.

    The baseline runs `baseline_runs` times; a candidate whose first run is not clearly worse
    gets up to `max_replicates` more runs until a one-sided test (org/noise.py) says it beats
    the best by more than `min_improvement` with `confidence`, or cannot. A replicate sets the
    seed knob (or env var) to the first run's seed plus its index, so every configuration sees
    the same seeds. `max_replicates: 0` with `baseline_runs: 1` is the single-run rule, for
    deterministic targets only."""

    model_config = ConfigDict(extra="forbid")

    baseline_runs: int = Field(default=3, ge=1, le=20)
    max_replicates: int = Field(default=4, ge=0, le=20)  # runs beyond a candidate's first (org.noise.MAX_RUNS - 1)
    confidence: float = Field(default=0.95, gt=0.5, lt=1.0)
    seed_knob: str | None = None  # an int constant in the knob file, e.g. SEED
    seed_env: str | None = None  # or an environment variable the target reads its seed from
    # Drift: every `rebaseline_every` experiments the best is run again with a new seed; a result
    # more than 3 sigma from its record flags drift, and the best is re-measured (0: never).
    rebaseline_every: int = Field(default=10, ge=0)
    # The same seed gives the same metric to the last digit (a FLOP budget, not a clock): then a
    # candidate whose first two runs reproduce the best's runs with those seeds exactly has no
    # effect, and is discarded after them (org/verdict.py). Never for a wall-clock budget or a
    # coarse metric (an accuracy to two decimals ties by chance).
    deterministic: bool = False

    @model_validator(mode="after")
    def _one_way_to_seed(self) -> NoiseSpec:
        if self.seed_knob and self.seed_env:
            raise ValueError("name seed_knob or seed_env, not both")
        if self.max_replicates == 0 and self.baseline_runs != 1:
            raise ValueError("max_replicates: 0 is the single-run rule (a deterministic target): then "
                             "baseline_runs must be 1, or one run would be judged against a mean")
        if self.max_replicates > 0 and self.baseline_runs < 2:
            raise ValueError("replicate runs are judged against the baseline's spread: baseline_runs must be >= 2")
        if self.max_replicates > 0 and not (self.seed_knob or self.seed_env):
            raise ValueError("replicate runs need a new seed: set seed_knob (e.g. SEED) or seed_env, or "
                             "baseline_runs: 1 and max_replicates: 0 for a deterministic target")
        if self.max_replicates > 0:
            from org.noise import check_design

            check_design(self.confidence, 1 + self.max_replicates)  # ValueError: too many early looks
        return self

    @property
    def replicated(self) -> bool:
        return self.max_replicates > 0


class ParseSpec(BaseModel):
    """How the metric is read: the final `---` summary block (default) or a regex on the output."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["summary", "regex"] = "summary"
    regex: str | None = None  # one capture group holding the number; last match wins
    memory_key: str = "peak_mem_mb"  # summary key reported as memory_gb (MB / 1024)

    @model_validator(mode="after")
    def _regex_needs_pattern(self) -> ParseSpec:
        if self.kind == "regex" and not self.regex:
            raise ValueError("parse.kind 'regex' needs parse.regex with one capture group")
        return self


Phase = Literal["run", "evaluate", "test"]


class SandboxSpec(BaseModel):
    """What each phase's bubblewrap sandbox may read besides the worktree (org/bwrap.py), and the
    bounds on compute the budget does not count.

    `reads` paths may use ~ and $NIGHTLAB_CACHE (the data cache nightlab and the target share;
    nightlab sets it for every child). A path that does not exist is not bound. The training run
    should read the train split only: a split it can read is a split it can train on."""

    model_config = ConfigDict(extra="forbid")

    reads: dict[Phase, list[str]] = {}
    # Directory names no sandbox of this program sees, wherever they exist under the system and the
    # interpreter: text the metric is computed on that is also on the machine (the cpu preset's
    # val and test are stdlib packages: trainer.corpus.HELDOUT_PACKAGES).
    hides: list[str] = []
    tmp_mb: int = Field(default=2048, ge=16)  # the run's /tmp and /dev/shm tmpfs, each
    # Untimed compute: a run may use at most this many times the baseline's CPU seconds (user +
    # system, all its processes) / wall seconds, or it is rejected. None: no bound but the timeout.
    cpu_slack: float | None = Field(default=None, gt=1)
    wall_slack: float | None = Field(default=None, gt=1)

    @field_validator("hides")
    @classmethod
    def _names_not_paths(cls, names: list[str]) -> list[str]:
        for name in names:
            if not name or "/" in name or name in (".", ".."):
                raise ValueError(f"{name!r}: write a directory name (hidden wherever it is), not a path")
        return names


class ProgramSpec(BaseModel):
    """Front matter of a program file."""

    model_config = ConfigDict(extra="forbid")

    name: str
    repo: str = "."  # the target git repo, relative to the program file's git repo root
    target: str = "trainer/"  # directory (inside repo) holding editable and protected files
    editable: list[str] = Field(min_length=1)  # relative to target
    protected: list[str] = []  # relative to target; hashes must never change
    knob_file: str | None = None  # relative to target; default: the first editable file
    # How knobs are written (org/proposal.py): upper-case commented constants (autoresearch),
    # plain assignments in a config file (any case), or those assignments also appended to the
    # run command as --name=value (a trainer configured on its command line)
    knob_style: Literal["constants", "assignments", "overrides"] = "constants"
    # Files the repo git-ignores (its data, most often) that runs need: linked into the worktree
    # from the repo at the same paths (relative to the repo) and readable, read-only, in every
    # sandbox. A clean worktree has no ignored files, so without this setup would fetch them again.
    data_files: list[str] = []
    setup: str | None = None  # run once in the worktree before the baseline (e.g. data prep)
    setup_timeout_s: float = Field(default=1800, gt=0)
    run: str  # run command; a leading `python` means the interpreter running nightlab
    # Evaluation in a separate sandbox: after each run the harness runs this command on the model
    # the run saved ($NIGHTLAB_CHECKPOINTS) and takes the metric from its output, never from the
    # run's. The run is told to save its model ($NIGHTLAB_CHECKPOINT) and that it is scored
    # separately ($NIGHTLAB_EVAL=separate). None: the metric is read from the run's own output.
    evaluate: str | None = None
    # A model server: with it, the evaluate and test commands never run the model's code. The
    # harness starts this command once per saved model ($NIGHTLAB_CHECKPOINT), in a sandbox that
    # reads nothing but the worktree and that model, hands it one end of a socket
    # ($NIGHTLAB_MODEL_FD) and the scorer the other ($NIGHTLAB_MODEL_FDS). The held-out test of
    # a keep starts a second, fresh copy beside each (the verifier) that the scorer's checks ask.
    model_server: str | None = None
    sandbox: SandboxSpec = SandboxSpec()
    env: dict[str, str] = {}
    metric: str
    direction: Literal["min", "max"] = "min"
    parse: ParseSpec = ParseSpec()
    time_budget_s: float = Field(default=300, gt=0)  # what the target trains for (it enforces it)
    run_timeout_s: float | None = Field(default=None, gt=0)  # hard kill; default 2*budget + 120
    min_improvement: float = Field(default=0.0, ge=0)  # a keep must beat the best by more than this
    noise: NoiseSpec = NoiseSpec(seed_knob="SEED")  # the default target's seed knob
    # Vetting: smoke-run limit (null: no smoke gate) and sanity bounds on summary values.
    smoke_timeout_s: float | None = Field(default=90, gt=0)
    # No separate smoke run: the full run is its own smoke test, and one that fails within its
    # first `smoke_inline_s` seconds is rejected at vet (not recorded as a crash), as a smoke run
    # would have rejected it. For targets whose run starts as cheaply on the same device as a
    # smoke run would (the cpu preset); a GPU target keeps the separate CPU smoke run.
    smoke_inline_s: float | None = Field(default=None, gt=0)
    # The separate smoke run, for a GPU program: the program's own preset and data (its env), at
    # most `smoke_steps` optimizer steps ($NIGHTLAB_SMOKE_STEPS, counted by the harness), with
    # `smoke_knobs` set in a scratch copy of the changed tree (never committed) so the changed code
    # runs at a size a CPU takes seconds for. `smoke_device: cpu` hides every GPU from it (a smoke
    # never shares a GPU a run is timing on); `same` runs it where the runs run.
    smoke_device: Literal["cpu", "same"] = "cpu"
    smoke_knobs: dict[str, KnobValue] = {}
    smoke_steps: int = Field(default=2, ge=1)
    # Pipelining (org/ahead.py): while a run trains, up to this many next proposals are made and
    # vetted, so the device never waits for a model. 0: propose after each verdict.
    pipeline_depth: int = Field(default=0, ge=0, le=8)
    # Slots (org/slots.py): with more than one, replicates run side by side and free slots run
    # the first runs of the proposals the pipeline has ready (at least slots - 1 are prepared).
    executor: ExecutorSpec = ExecutorSpec()
    # Fan-out (org/rounds.py): experiments come in rounds of this many, each judged against the
    # best the round began on; of those that pass the keep rule, the best mean is kept at the
    # round's end and the others are recorded `beaten` (noted in memory as changes that helped,
    # so they may be tried again on the new best). With as many slots, a round runs side by side.
    fan_out: int = Field(default=1, ge=1, le=8)
    bounds: dict[str, tuple[float, float]] = {}  # key -> [lo, hi]; outside => the run is rejected
    # Held-out test: a command that scores the models a keep's runs saved on data the runs never
    # saw, printing `test_metric` in a final --- block. Each run is told where to save its model
    # ($NIGHTLAB_CHECKPOINT); the command gets them all ($NIGHTLAB_CHECKPOINTS, os.pathsep-joined).
    # It scores every keep (the baseline first); the result sits beside the verdict, never makes it.
    test: str | None = None
    test_metric: str | None = None  # the key the test command prints; default test_<metric>
    stop: StopSpec = StopSpec()
    knobs: dict[str, KnobValue] = {}  # starting overrides, committed before the baseline
    # Knob mode's search space: knobs never moved (no effect on the metric, or not research),
    # [lo, hi] ranges a knob move may not leave, and the only moves a knob may take (`[x2, x0.5]`
    # keeps a head size or a batch a power of two). Seed knobs are never moved in any case.
    fixed_knobs: list[str] = []
    knob_ranges: dict[str, tuple[float, float]] = {}
    knob_moves: dict[str, list[str]] = {}
    # Conditions across knobs every point of the space meets (org/constraint.py), e.g.
    # `TOTAL_BATCH_TOKENS % (DEVICE_BATCH_SIZE * 256) == 0`: no move or sampler trial breaks one.
    knob_constraints: list[str] = []

    @field_validator("knob_constraints")
    @classmethod
    def _constraints_parse(cls, texts: list[str]) -> list[str]:
        from org.constraint import Constraint

        for text in texts:
            Constraint.parse(text)  # ConstraintError is a ValueError: pydantic names the field
        return texts

    @field_validator("env")
    @classmethod
    def _env_is_not_for_secrets(cls, env: dict[str, str]) -> dict[str, str]:
        for key in env:
            if is_secret(key):
                raise ValueError(f"env {key!r} looks like a secret; experiments never get secrets")
        return env

    @model_validator(mode="after")
    def _smoke_knobs_need_a_smoke_run(self) -> ProgramSpec:
        if self.smoke_knobs and (self.smoke_timeout_s is None or self.smoke_inline_s is not None):
            raise ValueError("smoke_knobs shrink the separate smoke run: set smoke_timeout_s, not smoke_inline_s")
        return self

    @field_validator("stop")
    @classmethod
    def _no_window_in_a_program(cls, stop: StopSpec) -> StopSpec:
        if stop.until is not None:
            raise ValueError("until is a night's window, set by `nightlab nightly --until`, not by a program")
        return stop

    @field_validator("data_files")
    @classmethod
    def _data_files_relative(cls, files: list[str]) -> list[str]:
        for f in files:
            if Path(f).is_absolute() or ".." in Path(f).parts or not f.strip():
                raise ValueError(f"data_files: {f!r} must be a path inside the repo, relative to it")
        return files

    @field_validator("knob_ranges")
    @classmethod
    def _ranges_ordered(cls, ranges: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
        for key, (lo, hi) in ranges.items():
            if not lo < hi:
                raise ValueError(f"knob_ranges {key}: [{lo}, {hi}] is empty; write [lo, hi] with lo < hi")
        return ranges

    @field_validator("knob_moves")
    @classmethod
    def _moves_known(cls, moves: dict[str, list[str]]) -> dict[str, list[str]]:
        from org.proposal import ALL_MOVES

        for key, names in moves.items():
            if not names:
                raise ValueError(f"knob_moves {key}: no moves; list some, or put {key} in fixed_knobs")
            if unknown := [m for m in names if m not in ALL_MOVES]:
                raise ValueError(f"knob_moves {key}: unknown move {', '.join(map(repr, unknown))} "
                                 f"(moves: {', '.join(ALL_MOVES)})")  # fmt: skip
        return moves


@dataclass(frozen=True)
class Program:
    spec: ProgramSpec
    strategy: str  # the markdown body, given to every role
    path: Path
    repo: Path  # resolved git repo root of the target

    def target_path(self, rel: str) -> str:
        """Repo-relative path of a file named relative to the target dir."""
        return str(Path(self.spec.target) / rel)

    @property
    def editable_paths(self) -> list[str]:
        return [self.target_path(p) for p in self.spec.editable]

    @property
    def protected_paths(self) -> list[str]:
        return [self.target_path(p) for p in self.spec.protected]

    @property
    def knob_path(self) -> str:
        return self.target_path(self.spec.knob_file or self.spec.editable[0])

    @property
    def test_key(self) -> str:
        return self.spec.test_metric or f"test_{self.spec.metric}"

    def sandbox_reads(self, phase: Phase) -> tuple[Path, ...]:
        """The paths `phase`'s sandbox may read, with ~ and $NIGHTLAB_CACHE expanded, and the
        program's data files (the worktree links to them)."""
        from org.settings import cache_dir

        out = [src.resolve() for _, src in self.data_links()]
        for raw in self.spec.sandbox.reads.get(phase, []):
            text = raw.replace("${NIGHTLAB_CACHE}", "$NIGHTLAB_CACHE").replace("$NIGHTLAB_CACHE", str(cache_dir()))
            path = Path(text).expanduser()
            if "$" in text or not path.is_absolute():
                raise InputError(self.path, f"sandbox.reads.{phase}", f"{raw!r}: write an absolute path; "
                                 "only ~ and $NIGHTLAB_CACHE are expanded")  # fmt: skip
            out.append(path)
        return tuple(out)

    @property
    def run_timeout_s(self) -> float:
        """Hard limit for one run: startup, compile and evaluation on top of the budget."""
        return self.spec.run_timeout_s or 2 * self.spec.time_budget_s + 120

    def point(self, source: str) -> dict[str, KnobValue]:
        """The knob file's (`source`) knob values by name: where a constraint is evaluated."""
        return {k.name: k.value for k in self.knobs_of(source)}

    def knobs_of(self, source: str) -> list[Knob]:
        """The knobs of the knob file's text `source`, in this program's knob style."""
        from org.proposal import parse_knobs

        return parse_knobs(source, self.knob_path, self.spec.knob_style)

    @property
    def constraints(self) -> list[Constraint]:
        from org.constraint import parse_all

        return parse_all(self.spec.knob_constraints)

    def search_space(self, source: str, constrained: bool = True) -> list[Knob]:
        """The knob file's knobs (`source`) within this program's search space, each with the moves
        it may take alone (`constrained`: none that breaks a knob constraint). Seed knobs never
        move: a seed change is noise, and the rules reject it anyway."""
        from org.proposal import within
        from org.rules import SEED_NAMES

        spec = self.spec
        fixed = lambda name: name in spec.fixed_knobs or bool(SEED_NAMES.search(name.upper()))
        return within(self.knobs_of(source), fixed, spec.knob_ranges, spec.knob_moves,
                      self.constraints if constrained else ())

    def data_links(self) -> list[tuple[str, Path]]:
        """(path in the worktree, file in the repo) for each of `data_files`."""
        return [(rel, self.repo / rel) for rel in self.spec.data_files]

    def seed_knob(self, source: str) -> Knob | None:
        """The knob file's (`source`) seed knob as an int constant, or None (no seed knob named, or
        the file has none: a replicate then cannot change the seed)."""
        name = self.spec.noise.seed_knob
        knob = {k.name: k for k in self.knobs_of(source)}.get(name) if name else None
        return knob if knob is not None and knob.type == "int" else None

    def better(self, a: float, b: float | None) -> bool:
        """Is metric `a` better than `b` by more than min_improvement?"""
        if b is None:
            return True
        margin = self.spec.min_improvement
        return a < b - margin if self.spec.direction == "min" else a > b + margin


def _git_root(start: Path) -> Path | None:
    proc = subprocess.run(
        ["git", "rev-parse", "--show-toplevel"], cwd=start, capture_output=True, text=True,
        check=False,
    )
    return Path(proc.stdout.strip()) if proc.returncode == 0 else None


def _field_of(err: ValidationError) -> tuple[str, str]:
    first = err.errors()[0]
    field = ".".join(str(p) for p in first["loc"]) or "front matter"
    return field, first["msg"]


def load_program(path: str | Path) -> Program:
    """Parse and validate a program file; every problem names the file and the field."""
    path = Path(path).resolve()
    if not path.is_file():
        raise InputError(path, None, "program file not found")
    try:
        post = frontmatter.loads(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise InputError(path, "front matter", f"not valid YAML: {e}") from e
    if not post.metadata:
        raise InputError(path, "front matter", "missing (expected a --- YAML block at the top)")
    try:
        spec = ProgramSpec.model_validate(post.metadata)
    except ValidationError as e:
        field, msg = _field_of(e)
        raise InputError(path, field, msg) from e

    base = _git_root(path.parent) or path.parent
    repo_dir = (base / spec.repo).resolve()
    repo = _git_root(repo_dir) if repo_dir.is_dir() else None
    if repo is None:
        raise InputError(path, "repo", f"{repo_dir} is not inside a git repository")
    program = Program(spec=spec, strategy=post.content.strip(), path=path, repo=repo)
    if spec.knob_style == "constants":
        for field in ("knobs", "fixed_knobs", "knob_ranges", "knob_moves"):
            if lower := [key for key in getattr(spec, field) if not key.isupper()]:
                raise InputError(path, field, f"knob {lower[0]!r} must be an UPPER_CASE constant name (or set "
                                 "knob_style: assignments for a config file of lower-case names)")  # fmt: skip

    # Every named file must exist in the target now; a campaign must not discover it at 3 am.
    named = [("editable", p) for p in program.editable_paths]
    named += [("protected", p) for p in program.protected_paths]
    if spec.knob_file:
        named.append(("knob_file", program.knob_path))
    from org.constraint import check_start

    for field, rel in named:
        if not (repo / rel).is_file():
            raise InputError(path, field, f"{rel} does not exist in {repo}")
    for rel, src in program.data_links():
        if not src.resolve().is_relative_to(repo.resolve()):
            raise InputError(path, "data_files", f"{rel} resolves to {src.resolve()}, outside {repo}")
        if not src.exists():
            raise InputError(path, "data_files", f"{rel} does not exist in {repo} (data_files name files the "
                             "repo has but git ignores; prepare them there first)")  # fmt: skip
    _check_seed(program)
    check_start(program)  # org/constraint.py: the baseline is a point of the space
    for phase in ("run", "evaluate", "test"):
        program.sandbox_reads(phase)  # InputError naming the field
    overlap = set(program.editable_paths) & set(program.protected_paths)
    if overlap:
        raise InputError(path, "protected", f"{sorted(overlap)} are also listed as editable")
    return program


def _check_seed(program: Program) -> None:
    """The seed a replicate changes must exist: an int knob, or an env var some target file reads."""
    noise, path = program.spec.noise, program.path
    if noise.seed_knob:
        if program.seed_knob((program.repo / program.knob_path).read_text(encoding="utf-8")) is None:
            raise InputError(path, "noise.seed_knob", f"{noise.seed_knob} is not an int constant in "
                             f"{program.knob_path}")  # fmt: skip
    if noise.seed_env:
        target = program.repo / program.spec.target
        files = [p for p in target.rglob("*") if p.is_file() and p.suffix in (".py", ".sh", ".yaml", ".toml")]
        if not any(noise.seed_env in p.read_text(encoding="utf-8", errors="replace") for p in files):
            raise InputError(path, "noise.seed_env", f"no file under {program.spec.target} reads "
                             f"{noise.seed_env}")  # fmt: skip
