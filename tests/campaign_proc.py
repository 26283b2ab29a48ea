"""Run a campaign in its own process with scripted roles, so tests can `kill -9` it.

    python -m tests.campaign_proc start PROGRAM ORG TAG MAX
    python -m tests.campaign_proc resume TAG MAX
The proposer cycles through a fixed list of knob moves (a duplicate just moves it on), so a
restarted process makes progress without knowing what the killed one said.
"""

from __future__ import annotations

import itertools
import sys

from org import campaign as c
from org.errors import NightlabError
from org.scripted import ScriptedClient
from tests.tiny import APPROVE, DIRECTIVE, knob

MOVES = [("LR", "x2"), ("DEPTH", "+1"), ("USE_GATE", "toggle"), ("LR", "x1.5"), ("DEPTH", "x0.5"),
         ("LR", "x0.67"), ("DEPTH", "-1"), ("LR", "x0.5"), ("SLEEP_S", "x1.5"), ("DEPTH", "x2")]


def client() -> ScriptedClient:
    moves = itertools.cycle(MOVES)
    lessons = {"lessons": []}
    return ScriptedClient(default={"director": DIRECTIVE, "reviewer": APPROVE,
                                   "compactor": lessons,
                                   "proposer": lambda schema, messages: knob(*next(moves))})


def main(argv: list[str]) -> int:
    try:
        if argv[0] == "start":
            c.start(argv[1], argv[2], tag=argv[3], max_experiments=int(argv[4]), models=client())
        else:
            c.resume(argv[1], max_experiments=int(argv[2]), models=client())
    except NightlabError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
