"""NoteStore: SQLite (source of truth, FTS5) + a Chroma index derived from it.

Write order is SQLite first, then Chroma. If the Chroma write fails the note is still recorded,
and the next open sees the index out of sync and rebuilds it. The sync check at open compares
counts and probes the newest ids (cheap at 100k notes); `verify()` compares every id.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlite_utils

from memory.database import open_database
from memory.embedding import DEFAULT_EMBEDDING
from memory.errors import StoreError
from memory.migrations import schema
from memory.notes import HELPED, LessonDraft, Note, NoteIn, Status, experiment_text, now_iso

SYNC_PROBE = 256  # newest ids checked at open


class NoteStore:
    """Notes for every campaign and target under `home` (memory.db + chroma/).

    `ollama_host` is the server an "ollama:<model>" embedding without "@<url>" talks to."""

    def __init__(
        self,
        home: Path,
        *,
        embedding: str = DEFAULT_EMBEDDING,
        dup_threshold: float = 0.8,
        ollama_host: str | None = None,
    ):
        self.home = Path(home)
        self.db_path = self.home / "memory.db"
        self.chroma_path = self.home / "chroma"
        self.embedding = embedding
        self.ollama_host = ollama_host
        self.dup_threshold = dup_threshold
        self.db = open_database(self.db_path, schema())
        self._index: Any = None
        # How many notes pass a (target, kinds) filter, for the vector over-fetch. Only a size
        # estimate: a stale value (another process wrote) costs speed, never results.
        self.filter_counts: dict[tuple[str, tuple[Any, ...]], int] = {}
        self.reindexed_at_open = False

    # ---- the vector index (opened lazily: chromadb and the model are slow to load) ----
    @property
    def index(self) -> Any:
        if self._index is None:
            from memory.index import NoteIndex

            self._index = NoteIndex(self.chroma_path, self.embedding, self.ollama_host)
            if not self._in_sync(full=False):
                self.reindex()
                self.reindexed_at_open = True
        return self._index

    def warm(self) -> None:
        """Open the vector index and load its embedding model now (~5 s on 2 cores, once per
        process): a campaign does it while its baseline trains, not while its first proposal waits."""
        self.index.warm()

    def _in_sync(self, full: bool) -> bool:
        n = self.count()
        if self._index.count() != n:
            return False
        if full:
            return self._index.all_ids() == set(self._ids())
        newest = [
            r[0]
            for r in self.db.execute("select id from notes order by id desc limit ?", [SYNC_PROBE])
        ]
        return not self._index.missing(newest)

    def verify(self) -> bool:
        """Full id-by-id comparison of Chroma against SQLite."""
        _ = self.index
        return self._in_sync(full=True)

    def reindex(self, batch: int = 512) -> int:
        """Rebuild the Chroma collection from SQLite; returns the number of notes indexed."""
        if self._index is None:
            from memory.index import NoteIndex

            self._index = NoteIndex(self.chroma_path, self.embedding, self.ollama_host)
        return self._index.rebuild(self._batches(batch))

    def _batches(self, size: int) -> Iterator[list[Note]]:
        last = 0
        while True:
            rows = list(
                self.db.query("select * from notes where id > ? order by id limit ?", [last, size])
            )
            if not rows:
                return
            yield [Note.from_row(r) for r in rows]
            last = rows[-1]["id"]

    # ---- writing ----
    @contextmanager
    def _write_lock(self) -> Iterator[None]:
        """BEGIN IMMEDIATE: take SQLite's write lock before reading max(id), so a second
        process (a CLI next to a campaign) waits instead of racing for the same ids."""
        conn = self.db.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            conn.rollback()
            raise
        conn.commit()

    def add_note(self, note: NoteIn) -> Note:
        return self.add_notes([note])[0]

    def add_notes(
        self, notes: Sequence[NoteIn], embeddings: Sequence[Any] | None = None
    ) -> list[Note]:
        """Insert in one transaction, then index (embeddings computed unless given)."""
        _ = self.index  # sync check before writing, so a rebuild cannot double-add these
        created = now_iso()
        with self._write_lock():  # ids max+1.. are ours until commit
            first = int(self.db.execute("select coalesce(max(id), 0) from notes").fetchone()[0]) + 1
            out = [
                Note(id=first + i, created=created, **n.model_dump()) for i, n in enumerate(notes)
            ]
            self.db["notes"].insert_all((n.to_row() for n in out), batch_size=500)
        self.filter_counts.clear()
        self.index.upsert(out, embeddings)
        for note in out:
            if note.kind == "experiment":
                self._auto_refute(note)
        return out

    def add_experiment(
        self,
        campaign: str,
        target: str,
        *,
        hypothesis: str,
        change: str,
        status: Status,
        metric: float | None = None,
        metric_delta: float | None = None,
        knob_move: str | None = None,
        diff: str | None = None,
        commit: str | None = None,
        experiment_id: str | None = None,
        tags: Sequence[str] = (),
    ) -> Note:
        """One note per experiment: the change in one line, the hypothesis, the result.

        Idempotent per `experiment_id`: a campaign killed between writing the note and marking it
        noted writes it again on resume, and gets the first note back instead of a twin."""
        from memory.duplicate import diff_hash

        evidence = [f"commit:{commit}"] if commit else []
        if experiment_id:
            tag = f"exp:{experiment_id}"
            evidence.append(tag)
            same = self.db.execute(
                "select id from notes where kind='experiment' and campaign=? and evidence like ? "
                "order by id limit 1",
                [campaign, "%" + json.dumps(tag) + "%"],
            ).fetchone()
            if same:
                return self.get(same[0])
        return self.add_note(
            NoteIn(
                campaign=campaign,
                target=target,
                kind="experiment",
                text=experiment_text(change, hypothesis),
                tags=list(tags),
                knob_move=knob_move,
                diff_hash=diff_hash(diff) if diff else None,
                status=status,
                metric=metric,
                metric_delta=metric_delta,
                evidence=evidence,
            )
        )

    def add_direction(
        self, campaign: str, target: str, text: str, evidence: Sequence[str] = ()
    ) -> Note:
        return self.add_note(
            NoteIn(
                campaign=campaign,
                target=target,
                kind="direction",
                text=text,
                evidence=list(evidence),
            )
        )

    def add_lesson(
        self, campaign: str, target: str, draft: LessonDraft, evidence: Sequence[str] = ()
    ) -> Note:
        """A lesson that cites `draft.note_ids` (+ extra evidence) and supersedes those notes."""
        cited = [self.get(i) for i in draft.note_ids]
        ev = [f"note:{n.id}" for n in cited] + [
            e for n in cited for e in n.evidence if not e.startswith("note:")
        ]
        ev += list(evidence)
        lesson = self.add_note(
            NoteIn(
                campaign=campaign,
                target=target,
                kind="lesson",
                text=draft.text,
                tags=draft.tags,
                knob_move=draft.knob_move,
                effect=draft.effect,
                confidence=draft.confidence,
                metric_delta=draft.metric_delta,
                evidence=list(dict.fromkeys(ev)),
            )
        )
        self.supersede([n.id for n in cited], lesson.id)
        return self.get(lesson.id)

    def add_rejection(
        self, campaign: str, target: str, text: str, matching: Note | None = None
    ) -> Note:
        """A proposal turned away before any run (duplicate gate, reviewer), citing the note it
        repeated, so the proposer can be shown both."""
        evidence = [f"note:{matching.id}"] if matching else []
        return self.add_note(
            NoteIn(campaign=campaign, target=target, kind="rejection", text=text, evidence=evidence)
        )

    def supersede(self, ids: Iterable[int], by: int) -> None:
        ids = list(ids)
        with self.db.conn:
            for i in ids:
                self.db["notes"].update(i, {"superseded_by": by})
        self.index.update_meta([self.get(i) for i in ids])

    def refute(self, lesson_id: int, by_note_id: int) -> Note:
        """Mark a lesson refuted by a later note (kept, never deleted)."""
        lesson, by = self.get(lesson_id), self.get(by_note_id)
        if lesson.kind != "lesson":
            raise StoreError(
                f"note #{lesson_id} is a {lesson.kind}, not a lesson: cannot refute it"
            )
        with self.db.conn:
            self.db["notes"].update(lesson.id, {"refuted_by": by.id})
        refuted = self.get(lesson.id)
        self.index.update_meta([refuted])
        return refuted

    def _auto_refute(self, exp: Note) -> list[Note]:
        """The refutation rule, both ways: a current lesson claiming knob move X hurts (or does
        nothing) is refuted by a later *keep* of the same move on the same target (or a *beaten*
        one: it helped, another change helped more), and one claiming X helps by a later *discard*. A crash says nothing about the move's effect. Nothing
        subtler: deltas near noise are the statistics module's call, not memory's."""
        contradicts: tuple[str, ...] = ()
        if exp.status in HELPED:
            contradicts = ("hurts", "no_effect")
        elif exp.status == "discard":
            contradicts = ("helps",)
        if not contradicts or not exp.knob_move:
            return []
        marks = ",".join("?" * len(contradicts))
        rows = self.db.query(
            "select id from notes where kind='lesson' and target=? and knob_move=? and effect in "
            f"({marks}) and superseded_by is null and refuted_by is null and id < ?",
            [exp.target, exp.knob_move, *contradicts, exp.id],
        )
        return [self.refute(r["id"], exp.id) for r in list(rows)]

    # ---- reading ----
    def get(self, note_id: int) -> Note:
        try:
            return Note.from_row(self.db["notes"].get(note_id))
        except sqlite_utils.db.NotFoundError:
            raise StoreError(f"{self.db_path}: no note #{note_id}") from None

    def count(self) -> int:
        return int(self.db.execute("select count(*) from notes").fetchone()[0])

    def _ids(self) -> list[int]:
        return [r[0] for r in self.db.execute("select id from notes")]

    def notes(
        self,
        *,
        target: str | None = None,
        kind: str | None = None,
        campaign: str | None = None,
        current_only: bool = False,
        limit: int | None = None,
        newest_first: bool = False,
    ) -> list[Note]:
        where, args = [], []
        for col, val in (("target", target), ("kind", kind), ("campaign", campaign)):
            if val is not None:
                where.append(f"{col} = ?")
                args.append(val)
        if current_only:
            where.append("superseded_by is null and refuted_by is null")
        sql = "select * from notes" + (" where " + " and ".join(where) if where else "")
        sql += " order by id desc" if newest_first else " order by id"
        if limit is not None:
            sql += f" limit {int(limit)}"
        return [Note.from_row(r) for r in self.db.query(sql, args)]

    def search(
        self,
        text: str,
        k: int = 10,
        target: str | None = None,
        *,
        kinds: Iterable[str] | None = None,
        current_only: bool = False,
    ) -> list[Note]:
        """The k notes most related to `text` (meaning + identifiers), best first."""
        from memory.retrieval import search

        if k <= 0:
            return []
        ids = search(self.db, self.index, self.filter_counts, text, k, target, kinds, current_only)
        if not ids:
            return []
        marks = ",".join("?" * len(ids))
        rows = {r["id"]: r for r in self.db.query(f"select * from notes where id in ({marks})", ids)}
        if len(rows) != len(ids):  # the index named a note SQLite lacks: it is stale, rebuild it
            self.reindex()
        return [Note.from_row(rows[i]) for i in ids if i in rows]

    def vector_hits(
        self,
        text: str,
        k: int,
        target: str | None = None,
        kinds: Iterable[str] | None = None,
        current_only: bool = False,
    ) -> list[tuple[int, float]]:
        """(note id, cosine similarity) from the vector index alone, best first."""
        from memory.retrieval import vector_hits

        return vector_hits(
            self.db, self.index, self.filter_counts, text, k, target, kinds, current_only
        )

    # ---- the campaign-loop API implemented in sibling modules ----
    def context_for(self, query: str, target: str, budget_tokens: int, k: int = 8) -> str:
        from memory.context import context_for

        return context_for(self, query, target, budget_tokens, k=k)

    def check_duplicate(
        self, target: str, knob_move: str | None, diff: str | None, text: str
    ) -> Note | None:
        from memory.duplicate import check_duplicate

        return check_duplicate(self, target, knob_move, diff, text)

    def tried_knob_moves(self, target: str, moves: list[str]) -> dict[str, Note]:
        from memory.duplicate import tried_knob_moves

        return tried_knob_moves(self, target, moves)

    def compact(
        self, target: str, summarize: Callable[[list[Note]], list[LessonDraft]] | None = None
    ) -> list[Note]:
        from memory.compaction import compact

        return compact(self, target, summarize)

    def stats(self) -> dict[str, Any]:
        by_kind = dict(self.db.execute("select kind, count(*) from notes group by kind").fetchall())
        q = "select count(*) from notes where "
        return {
            "notes": self.count(),
            "by_kind": by_kind,
            "targets": [
                r[0] for r in self.db.execute("select distinct target from notes order by 1")
            ],
            "campaigns": self.db.execute("select count(distinct campaign) from notes").fetchone()[
                0
            ],
            "superseded": self.db.execute(q + "superseded_by is not null").fetchone()[0],
            "refuted": self.db.execute(q + "refuted_by is not null").fetchone()[0],
            "indexed": self.index.count(),
            "embedding": self.embedding,
            "db": str(self.db_path),
        }

    def close(self) -> None:
        self.db.conn.close()
