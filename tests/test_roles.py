"""Role and org files: loading, validation errors naming file and field, StrictUndefined."""

from __future__ import annotations

from pathlib import Path

import pytest

from org.errors import InputError
from org.roles import OrgSpec, RoleSpec, load_org, load_role

PROPOSER = """---
model: local/gemma3-270m
fallback: ollama_chat/qwen2.5-coder:7b
temperature: 0.3
max_tokens: 200
mode: knob
description: cheap local proposer
---
You tune {{ target }}. Knobs:
{% for k in knobs %}- {{ k }}
{% endfor %}"""

DIRECTOR = """---
model: anthropic/claude-sonnet-4-5
fallback: local/gemma3-270m
---
Direct the research on {{ target }}.
"""

ORG = """---
name: tiny
roles:
  proposer: proposer.md
  director: director
director_every: 3
review: false
---
A tiny test org.
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def org_dir(tmp_path: Path) -> Path:
    d = tmp_path / "roles" / "tiny"
    write(d / "org.md", ORG)
    write(d / "proposer.md", PROPOSER)
    write(d / "director.md", DIRECTOR)
    return d


def test_load_org_wires_roles_and_defaults(org_dir: Path) -> None:
    org = load_org(org_dir)
    assert org.path == org_dir
    assert org.description == "A tiny test org."
    assert org.spec.director_every == 3 and org.spec.compact_every == 10
    assert org.spec.review is False and org.spec.plateau_after == 8
    assert set(org.roles) == {"proposer", "director"}
    proposer = org.roles["proposer"]
    assert proposer.name == "proposer" and proposer.path == org_dir / "proposer.md"
    assert proposer.spec.mode == "knob" and proposer.spec.temperature == 0.3
    assert org.roles["director"].spec.max_attempts == 3
    assert org.roles["director"].spec.timeout_s == 120
    # the org.md path itself works too
    assert load_org(org_dir / "org.md").roles.keys() == org.roles.keys()


def test_render_fills_template(org_dir: Path) -> None:
    role = load_role(org_dir / "proposer.md")
    text = role.render(target="train.py", knobs=["DEPTH", "MATRIX_LR"])
    assert text.startswith("You tune train.py.")
    assert "- DEPTH\n- MATRIX_LR\n" in text
    assert role.variables == {"target", "knobs"}


def test_render_missing_variable_names_file_and_variable(org_dir: Path) -> None:
    role = load_role(org_dir / "proposer.md")
    with pytest.raises(InputError) as e:
        role.render(target="train.py")
    assert e.value.path == str(org_dir / "proposer.md")
    assert e.value.field == "body"
    assert "missing template variable 'knobs'" in str(e.value)


def test_render_missing_attribute_is_input_error(tmp_path: Path) -> None:
    role = load_role(write(tmp_path / "r.md", "---\nmodel: local/x\n---\n{{ note.title }}"))
    with pytest.raises(InputError, match="body: template error"):
        role.render(note={})


@pytest.mark.parametrize(
    ("front", "field", "needle"),
    [
        ("model: local/x\ncolour: red", "colour", "unknown field"),
        ("model: local/x\ntemperature: hot", "temperature", "valid number"),
        ("model: local/x\nmax_tokens: 0", "max_tokens", "greater than or equal to 1"),
        ("model: local/x\nmode: freestyle", "mode", "'knob' or 'edit'"),
        ("temperature: 0.2", "model", "Field required"),
        ("model: gpt4", "model", "provider/model"),
        ("model: acme/brain-9", "model", "unknown provider 'acme'"),
        ("model: local/x\nfallback: /nothing", "fallback", "provider/model"),
        ("model: [local/x]", "model", "valid string"),
    ],
)
def test_bad_role_front_matter_names_field(tmp_path: Path, front: str, field: str, needle: str) -> None:
    path = write(tmp_path / "bad.md", f"---\n{front}\n---\nbody\n")
    with pytest.raises(InputError) as e:
        load_role(path)
    assert e.value.path == str(path)
    assert e.value.field == field
    assert needle in e.value.message
    assert e.value.exit_code == 2


def test_malformed_yaml_and_missing_front_matter(tmp_path: Path) -> None:
    bad = write(tmp_path / "yaml.md", "---\nmodel: [local/x\n---\nbody")
    with pytest.raises(InputError) as e:
        load_role(bad)
    assert e.value.field == "front matter" and "invalid YAML" in e.value.message
    scalar = write(tmp_path / "scalar.md", "---\njust a string\n---\nbody")
    with pytest.raises(InputError, match="front matter"):
        load_role(scalar)
    none = write(tmp_path / "none.md", "no front matter here")
    with pytest.raises(InputError, match="front matter: missing"):
        load_role(none)
    with pytest.raises(InputError, match="file not found"):
        load_role(tmp_path / "absent.md")


def test_template_syntax_error_at_load(tmp_path: Path) -> None:
    path = write(tmp_path / "r.md", "---\nmodel: local/x\n---\nline one\n{% for x in %}\n")
    with pytest.raises(InputError) as e:
        load_role(path)
    assert e.value.field == "body" and "syntax error" in e.value.message


def test_org_errors_name_org_file_and_field(org_dir: Path) -> None:
    org_md = org_dir / "org.md"
    org_md.write_text(ORG.replace("director: director", "director: ghost"))
    with pytest.raises(InputError) as e:
        load_org(org_dir)
    assert e.value.path == str(org_md) and e.value.field == "roles.director"
    assert "ghost.md not found" in e.value.message

    org_md.write_text(ORG.replace("  director: director\n", "  critic: director\n"))
    with pytest.raises(InputError) as e:
        load_org(org_dir)
    assert e.value.field == "roles.critic"

    org_md.write_text("---\nname: x\nroles:\n  director: director.md\n---\n")
    with pytest.raises(InputError, match="proposer"):
        load_org(org_dir)

    org_md.write_text(ORG.replace("director_every: 3", "director_every: 0"))
    with pytest.raises(InputError) as e:
        load_org(org_dir)
    assert e.value.field == "director_every"

    with pytest.raises(InputError, match="file not found"):
        load_org(org_dir.parent / "nope")


def test_bad_role_file_inside_org_names_role_file(org_dir: Path) -> None:
    write(org_dir / "director.md", "---\nmodel: anthropic/x\nfallbak: local/y\n---\nhi")
    with pytest.raises(InputError) as e:
        load_org(org_dir)
    assert e.value.path == str(org_dir / "director.md") and e.value.field == "fallbak"


def test_specs_forbid_extra_directly() -> None:
    assert RoleSpec(model="local/gemma3-270m").fallback is None
    assert OrgSpec(name="x", roles={"proposer": "p.md"}).proposals_per_round == 1
