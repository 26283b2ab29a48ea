"""Run a campaign in its own process with scripted roles, so tests can `kill -9` it.

    python -m tests.campaign_proc start PROGRAM ORG TAG MAX
    python -m tests.campaign_proc resume TAG MAX
With NIGHTLAB_TEST_DIE_BEFORE=NODE:K the process dies as a kill -9 would, in the narrowest window
there is: the task that routes to NODE for the K-th time has saved its writes, and the checkpoint
after it is not saved yet.
The proposer cycles through a fixed list of knob moves (a duplicate just moves it on), so a
restarted process makes progress without knowing what the killed one said.
"""

from __future__ import annotations

import itertools
import os
import sys
import time

from org import campaign as c
from org.errors import EDGE_ERRORS, exit_code
from tests.scripted import ScriptedClient
from tests.tiny import APPROVE, DIRECTIVE, knob

MOVES = [("LR", "x2"), ("DEPTH", "+1"), ("USE_GATE", "toggle"), ("LR", "x1.5"), ("DEPTH", "x0.5"),
         ("LR", "x0.67"), ("DEPTH", "-1"), ("LR", "x0.5"), ("SLEEP_S", "x1.5"), ("DEPTH", "x2")]


def client() -> ScriptedClient:
    moves = itertools.cycle(MOVES)
    lessons = {"lessons": []}
    return ScriptedClient(default={"director": DIRECTIVE, "reviewer": APPROVE,
                                   "compactor": lessons,
                                   "proposer": lambda schema, messages: knob(*next(moves))})


def die_before_checkpoint(spec: str) -> None:
    from langgraph.checkpoint.sqlite import SqliteSaver

    node, k = spec.split(":")
    put = SqliteSaver.put
    seen = 0

    def put_or_die(self, config, checkpoint, metadata, new_versions):  # noqa: ANN001, ANN202
        nonlocal seen
        if f"branch:to:{node}" in new_versions:
            seen += 1
            if seen == int(k):
                parent = config["configurable"]["checkpoint_id"]
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:  # the writes are saved on another thread
                    with self.cursor(transaction=False) as cur:
                        cur.execute("SELECT count(*) FROM writes WHERE checkpoint_id = ?", (parent,))
                        if cur.fetchone()[0]:
                            os._exit(137)
                    time.sleep(0.01)
                raise AssertionError(f"the writes before {spec} were never saved")
        return put(self, config, checkpoint, metadata, new_versions)

    SqliteSaver.put = put_or_die


def main(argv: list[str]) -> int:
    if spec := os.environ.get("NIGHTLAB_TEST_DIE_BEFORE"):
        die_before_checkpoint(spec)
    try:
        if argv[0] == "start":
            c.start(argv[1], argv[2], tag=argv[3], max_experiments=int(argv[4]), models=client())
        else:
            c.resume(argv[1], max_experiments=int(argv[2]), models=client())
    except EDGE_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return exit_code(e)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
