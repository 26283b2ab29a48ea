"""docs/graph.md is the graph the code builds, and the drawing shows every route a node declares."""

from __future__ import annotations

from pathlib import Path
from typing import get_args, get_type_hints

from org.graph import NODES, build_graph, drawing

ROOT = Path(__file__).resolve().parents[1]


def test_docs_graph_md_is_current():
    assert (ROOT / "docs" / "graph.md").read_text(encoding="utf-8") == drawing(), (
        "docs/graph.md is stale: run `make graph` (python -m org.graph > docs/graph.md)"
    )


def test_drawing_has_an_edge_for_every_destination_a_node_declares():
    declared = {("__start__", "setup")}
    for name, fn in NODES.items():
        (destinations,) = get_args(get_type_hints(fn)["return"])  # Command[Literal[...]]
        declared |= {(name, goto) for goto in get_args(destinations)}
    drawn = {(e.source, e.target) for e in build_graph().compile().get_graph().edges}
    assert drawn == declared
    assert ("record", "compact") in drawn and ("vet", "run") in drawn  # the loop, not just its nodes
