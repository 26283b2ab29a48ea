"""The Chroma side of memory: a derived vector index over the notes, rebuildable from SQLite.

One collection per embedding model, cosine space. Chroma ids are the SQLite note ids as strings;
metadata carries what queries filter on (target, kind, campaign, current). Nothing here is the
source of truth: when in doubt, `rebuild()` from SQLite.
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import structlog

from memory.embedding import collection_name, embedding_function
from memory.notes import Note

OVERFETCH = 3  # fetch ~3x the expected number of candidates before filtering
OVERFETCH_MAX = 400  # beyond this many, chroma's filtered query is the cheaper path


def _meta(note: Note) -> dict[str, Any]:
    return {
        "target": note.target,
        "kind": note.kind,
        "campaign": note.campaign,
        "current": note.current,
    }


class NoteIndex:
    def __init__(self, path: Path, embedding: str, ollama_host: str | None = None):
        import chromadb
        from chromadb.config import Settings

        self.path = path
        self.embedding = embedding
        self.fn = embedding_function(embedding, ollama_host)
        self.name = collection_name(embedding)
        settings = Settings(anonymized_telemetry=False, allow_reset=False)
        try:
            self.client = chromadb.PersistentClient(path=str(path), settings=settings)
            self.collection = self._collection()
        except (ImportError, MemoryError):
            raise  # a broken install or a full machine is not a broken index: touch nothing
        except Exception as e:  # noqa: BLE001 - chroma raises many types for a bad dir
            # An unreadable index is only a cache: set it aside (kept for inspection) and start
            # an empty one; the store sees the count mismatch and rebuilds from SQLite.
            aside = path.with_name(f"{path.name}.broken-{int(time.time())}")
            structlog.get_logger(__name__).warning(
                "chroma index unreadable; set aside",
                path=str(path),
                aside=str(aside),
                error=repr(e),
            )
            shutil.move(str(path), str(aside))
            self.client = chromadb.PersistentClient(path=str(path), settings=settings)
            self.collection = self._collection()
        self.batch = self.client.get_max_batch_size()

    def warm(self) -> None:
        """Load the embedding model now (the first embedding loads it: seconds)."""
        self.fn(["warm-up"])

    def _collection(self) -> Any:
        return self.client.get_or_create_collection(
            self.name, embedding_function=self.fn, configuration={"hnsw": {"space": "cosine"}}
        )

    def count(self) -> int:
        return int(self.collection.count())

    def missing(self, ids: Sequence[int]) -> list[int]:
        """Which of `ids` the index lacks."""
        if not ids:
            return []
        got = set(self.collection.get(ids=[str(i) for i in ids], include=[])["ids"])
        return [i for i in ids if str(i) not in got]

    def all_ids(self) -> set[int]:
        return {int(i) for i in self.collection.get(include=[])["ids"]}

    def embed(self, texts: list[str]) -> list[Any]:
        return list(self.fn(texts))

    def upsert(self, notes: Sequence[Note], embeddings: Sequence[Any] | None = None) -> None:
        """Add or replace notes; embeddings are computed unless given (precomputed bulk loads)."""
        for start in range(0, len(notes), self.batch):
            part = notes[start : start + self.batch]
            kwargs: dict[str, Any] = {
                "ids": [str(n.id) for n in part],
                "documents": [n.text for n in part],
                "metadatas": [_meta(n) for n in part],
            }
            if embeddings is not None:
                kwargs["embeddings"] = list(embeddings[start : start + self.batch])
            self.collection.upsert(**kwargs)

    def update_meta(self, notes: Sequence[Note]) -> None:
        if notes:
            self.collection.update(
                ids=[str(n.id) for n in notes], metadatas=[_meta(n) for n in notes]
            )

    def query(
        self,
        text: str,
        k: int,
        target: str | None = None,
        kinds: Iterable[str] | None = None,
        current_only: bool = False,
        matching: int | None = None,
        total: int | None = None,
    ) -> list[tuple[int, float]]:
        """(note id, cosine similarity) best first, among notes passing the filters.

        Chroma's filtered query scans metadata (~370 ms at 100k notes on 2 cores) while a plain
        HNSW query takes ~1-6 ms. So when the caller says how many notes pass the filters
        (`matching` of `total`, from SQLite) and they are not too rare, we over-fetch unfiltered and filter
        here; only when that comes up short do we pay for chroma's filtered query.
        """
        kinds = list(kinds) if kinds is not None else None
        emb = self.fn([text])

        def ok(meta: Any) -> bool:
            return (
                (target is None or meta.get("target") == target)
                and (kinds is None or meta.get("kind") in kinds)
                and (not current_only or meta.get("current") is True)
            )

        total = self.count() if total is None else total  # chroma's count() is ~19 ms at 100k
        if total == 0 or k <= 0:
            return []
        filtered = target is not None or kinds is not None or current_only
        if matching is not None and filtered and matching > 0:
            n = min(total, math.ceil(OVERFETCH * k * total / matching))
            if n <= OVERFETCH_MAX:
                res = self.collection.query(
                    query_embeddings=emb, n_results=n, include=["distances", "metadatas"]
                )
                hits = [
                    (int(i), 1.0 - float(d))
                    for i, d, m in zip(res["ids"][0], res["distances"][0], res["metadatas"][0])
                    if ok(m)
                ]
                if len(hits) >= k or n == total:
                    return hits[:k]
        clauses: list[dict[str, Any]] = []
        if target is not None:
            clauses.append({"target": target})
        if kinds is not None:
            clauses.append({"kind": {"$in": kinds}})
        if current_only:
            clauses.append({"current": True})
        where = clauses[0] if len(clauses) == 1 else ({"$and": clauses} if clauses else None)
        res = self.collection.query(
            query_embeddings=emb, n_results=k, where=where, include=["distances"]
        )
        return [(int(i), 1.0 - float(d)) for i, d in zip(res["ids"][0], res["distances"][0])]

    def rebuild(self, batches: Iterable[list[Note]]) -> int:
        """Drop the collection and re-add every note from `batches` (SQLite order)."""
        from chromadb.errors import NotFoundError

        try:
            self.client.delete_collection(self.name)
        except NotFoundError:  # nothing to drop yet
            pass
        self.collection = self._collection()
        n = 0
        for notes in batches:
            self.upsert(notes)
            n += len(notes)
        return n
