"""nightlab's engine: the research org (graph, state, roles, model tiers, CLI)."""

__version__ = "0.1.0"
