"""Roles and orgs as data: markdown files with YAML front matter and a Jinja body.

`roles/<org>/org.md` wires role kinds to role files; each `roles/<org>/<role>.md` names its
model and sampling settings in front matter, and its body is the system prompt template,
rendered with StrictUndefined so a missing variable is an error, not an empty string.
Every problem becomes `InputError(path, field, message)`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import frontmatter
import jinja2
import jinja2.meta
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from org.errors import InputError
from org.models.names import parse_model

RoleKind = Literal["proposer", "sampler", "director", "reviewer", "compactor"]
ORG_FILE = "org.md"


class OrgSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    roles: dict[RoleKind, str]
    director_every: int = Field(5, ge=1)
    compact_every: int = Field(10, ge=1)
    review: bool = True
    proposals_per_round: int = Field(1, ge=1)
    plateau_after: int = Field(8, ge=1)
    # the memory's embedding model: "minilm" (offline, shipped) or "ollama:<model>[@url]"
    embedding: str = "minilm"
    # With a `sampler` role (an Optuna sampler) and a language-model `proposer`: the share of
    # experiments the proposer takes, spread evenly (0.3: experiments 4, 7, 10, ...); the
    # sampler proposes the rest ("centaur", arXiv 2603.24647)
    llm_share: float | None = Field(None, ge=0, le=1)

    @field_validator("embedding")
    @classmethod
    def _embedding_spec(cls, value: str) -> str:
        from memory.embedding import check_spec

        check_spec(value)  # ValueError -> pydantic error on this field
        return value

    @model_validator(mode="after")
    def _needs_proposer(self) -> OrgSpec:
        if "proposer" not in self.roles:
            raise ValueError("an org needs a 'proposer' role")
        if ("sampler" in self.roles) != (self.llm_share is not None):
            raise ValueError("a 'sampler' role and llm_share go together: the share of experiments the "
                             "language-model proposer takes from the sampler")  # fmt: skip
        return self


class RoleSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str
    fallback: str | None = None
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    max_tokens: int = Field(1024, ge=1)
    mode: Literal["knob", "edit"] | None = None  # proposers only
    timeout_s: float = Field(120.0, gt=0)
    max_attempts: int = Field(3, ge=1, le=20)
    seed: int | None = Field(None, ge=0)  # sampling seed: the same prompt gets the same answer
    startup_trials: int | None = Field(None, ge=1)  # samplers (optuna/tpe, optuna/gp): random trials first
    # Spend caps for this role over the campaign, its failed calls included (USD from litellm's
    # cost data; tokens of hosted models), checked before each call against the most it could
    # cost: past one, the role answers with its local fallback (`on_cap: fallback`, when it has
    # one) or the campaign stops
    cap_usd: float | None = Field(None, ge=0)
    cap_tokens: int | None = Field(None, ge=0)
    on_cap: Literal["fallback", "stop"] = "fallback"
    description: str = ""

    @field_validator("model", "fallback")
    @classmethod
    def _model_string(cls, value: str | None) -> str | None:
        if value is not None:
            parse_model(value)  # ValueError -> pydantic error on this field
        return value


_ENV = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)


@dataclass(frozen=True)
class Role:
    spec: RoleSpec
    path: Path
    body: str

    @property
    def name(self) -> str:
        return self.path.stem

    @cached_property
    def _template(self) -> jinja2.Template:
        return _ENV.from_string(self.body)

    @cached_property
    def variables(self) -> frozenset[str]:
        """Names the body template expects."""
        return frozenset(jinja2.meta.find_undeclared_variables(_ENV.parse(self.body)))

    def render(self, **variables: Any) -> str:
        missing = sorted(self.variables - variables.keys())
        if missing:
            raise InputError(self.path, "body", f"missing template variable {missing[0]!r}")
        try:
            return self._template.render(**variables)
        except jinja2.UndefinedError as e:  # e.g. an attribute missing on a given object
            raise InputError(self.path, "body", f"template error: {e}") from e


@dataclass(frozen=True)
class Org:
    spec: OrgSpec
    path: Path  # the org directory
    description: str
    roles: dict[str, Role] = field(default_factory=dict)  # role kind -> Role

    def proposer_for(self, n: int) -> str:
        """The role kind that proposes experiment `n` (1 is the first after the baseline): the
        `proposer`, or with a `sampler` the proposer on an even llm_share of experiments."""
        share = self.spec.llm_share
        if "sampler" not in self.roles or share is None:
            return "proposer"
        return "proposer" if math.floor(n * share + 1e-9) > math.floor((n - 1) * share + 1e-9) else "sampler"

    def is_sampler(self, kind: str) -> bool:
        return parse_model(self.roles[kind].spec.model).is_sampler


def _read(path: Path) -> tuple[dict[str, Any], str]:
    """Front matter (a mapping) and body of one markdown file."""
    if not path.is_file():
        raise InputError(path, None, "file not found")
    try:
        post = frontmatter.loads(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise InputError(path, "front matter", f"invalid YAML: {e}".replace("\n", " ")) from e
    except UnicodeDecodeError as e:
        raise InputError(path, None, f"not UTF-8 text: {e}") from e
    if not isinstance(post.metadata, dict):
        raise InputError(path, "front matter", "must be a YAML mapping")
    return dict(post.metadata), post.content


def _validate(model: type[BaseModel], data: dict[str, Any], path: Path) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(p) for p in first["loc"] if p != "[key]") or "front matter"
        kind = first["type"]
        msg = "unknown field" if kind == "extra_forbidden" else first["msg"]
        msg = msg.removeprefix("Value error, ")
        if kind not in ("missing", "extra_forbidden", "value_error"):
            msg = f"{msg} (got {first.get('input')!r})"
        more = len(e.errors()) - 1
        raise InputError(path, loc, msg + (f" (+{more} more problems)" if more else "")) from e


def load_role(path: str | Path) -> Role:
    path = Path(path)
    meta, body = _read(path)
    if not meta:
        raise InputError(path, "front matter", "missing (a role file starts with '---' YAML)")
    spec = _validate(RoleSpec, meta, path)
    try:
        _ENV.parse(body)
    except jinja2.TemplateSyntaxError as e:
        raise InputError(path, "body", f"template syntax error on line {e.lineno}: {e.message}")
    return Role(spec=spec, path=path, body=body)


def load_org(path: str | Path) -> Org:
    """Load `roles/<org>/` (or its `org.md`) and every role file it names."""
    path = Path(path)
    org_file = path / ORG_FILE if path.is_dir() else path
    meta, body = _read(org_file)
    spec: OrgSpec = _validate(OrgSpec, meta, org_file)
    roles: dict[str, Role] = {}
    for kind, filename in spec.roles.items():
        role_path = org_file.parent / (filename if filename.endswith(".md") else f"{filename}.md")
        if not role_path.is_file():
            raise InputError(org_file, f"roles.{kind}", f"role file {role_path} not found")
        roles[kind] = load_role(role_path)
    _check_samplers(roles, org_file)
    return Org(spec=spec, path=org_file.parent, description=body.strip(), roles=roles)


def _check_samplers(roles: dict[str, Role], org_file: Path) -> None:
    """A sampler (optuna/...) proposes and does nothing else; with a `sampler` role the proposer
    is the language model that shares the experiments with it."""
    for kind, role in roles.items():
        sampler = parse_model(role.spec.model).is_sampler
        if kind == "sampler" and not sampler:
            raise InputError(role.path, "model", f"the sampler role names a language model ({role.spec.model}); "
                             "name an Optuna sampler: optuna/tpe, optuna/cmaes, optuna/gp or optuna/random")  # fmt: skip
        if sampler and kind not in ("proposer", "sampler"):
            raise InputError(role.path, "model", f"{role.spec.model} is a sampler: it can only propose, "
                             f"not act as the {kind}")  # fmt: skip
        if sampler and kind == "proposer" and "sampler" in roles:
            raise InputError(org_file, "roles.proposer", "with a sampler role the proposer must be a language "
                             "model: it takes the llm_share of experiments")  # fmt: skip
        if sampler and role.spec.fallback:
            raise InputError(role.path, "fallback", "a sampler needs no fallback: it runs here, offline")
        name = parse_model(role.spec.model)
        if name.is_picker and (kind != "proposer" or role.spec.mode == "edit"):
            raise InputError(role.path, "model" if kind != "proposer" else "mode", f"{role.spec.model} picks a "
                             "knob move: it can only be a knob-mode proposer")  # fmt: skip
        if name.is_picker and role.spec.fallback:
            raise InputError(role.path, "fallback", "a move picker needs no fallback: it runs here, offline")
        if role.spec.startup_trials is not None and not sampler:
            raise InputError(role.path, "startup_trials", "only a sampler (optuna/...) has startup trials")
