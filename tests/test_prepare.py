"""The fixed harness: bpb formula, splits, tokenizer, sources (incl. a real download over loopback), bad input."""

from __future__ import annotations

import http.server
import json
import math
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from trainer import prepare as P
from trainer import scoring
from trainer.corpus import DataError, Document, download_file, folder_documents, parquet_documents

TINY = dict(max_seq_len=32, vocab_size=300, time_budget=1, eval_tokens=64, source="folder",
            val_frac=0.2, test_frac=0.2)


def _docs(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    words = ["alpha", "beta", "gamma", "delta", "loss", "grad", "token", "naïve", "über", "日本"]
    return [f"doc {i}: " + " ".join(rng.choice(words, size=40)) for i in range(n)]


@pytest.fixture
def tiny_preset(monkeypatch):
    monkeypatch.setitem(P.PRESETS, "tiny", dict(TINY))
    return "tiny"


@pytest.fixture
def corpus(tmp_path) -> Path:
    root = tmp_path / "corpus"
    root.mkdir()
    for i, text in enumerate(_docs(120)):
        (root / f"{i:03d}.txt").write_text(text, encoding="utf-8")
    return root


# ---- the metric ----


def test_bits_per_byte_matches_hand_computation():
    # vocab of 5: ids 0..3 are normal tokens of 1, 2, 3, 4 bytes; id 4 is a special token (0 bytes)
    token_bytes = torch.tensor([1, 2, 3, 4, 0])
    targets = torch.tensor([[0, 1, 4], [3, 2, 4]])
    losses = torch.tensor([[0.5, 1.0, 9.0], [2.0, 0.25, 7.0]])
    nats, nbytes = P.bits_per_byte(losses, targets, token_bytes)
    assert nats == pytest.approx(0.5 + 1.0 + 2.0 + 0.25)  # special-token losses excluded
    assert nbytes == 1 + 2 + 4 + 3
    assert nats / (math.log(2) * nbytes) == pytest.approx(3.75 / (math.log(2) * 10))


def test_the_metric_of_a_uniform_model_is_log_vocab_per_byte(tiny_preset, corpus, monkeypatch, tmp_path):
    """The harness's scorer on a tiny cache (the harness's own constants are left alone: the scorer
    refuses to count once they are reassigned)."""
    monkeypatch.setenv("NIGHTLAB_CACHE", str(tmp_path / "cache"))
    P.prepare(tiny_preset, "folder", path=str(corpus), log=lambda *_: None)
    data = P.data_dir(tiny_preset)
    tok = P.Tokenizer.from_directory(data)
    V = tok.get_vocab_size()

    class Uniform(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x):  # logits: the harness computes the cross-entropy
            return torch.zeros(*x.shape, V) + self.w

    def val_batches():
        return P._packed_batches(*P._load_split(P.val_dir(tiny_preset), "val"), tok.get_bos_token_id(), 2, 32, shuffle=False,
                                 buffer_size=1000, device="cpu", seed=0)  # fmt: skip

    tb = P.get_token_bytes("cpu", data)
    bpb = scoring.score(Uniform(), val_batches(), 4, tb)
    # by hand: the same 2 batches of 2 rows the evaluation sees
    loader = val_batches()
    ys = torch.cat([next(loader)[1] for _ in range(2)])
    counted = int((tb[ys] > 0).sum())
    expected = counted * math.log(V) / (math.log(2) * int(tb[ys].sum()))
    assert bpb == pytest.approx(expected, rel=1e-5)

    monkeypatch.setattr(P, "EVAL_TOKENS", 128)  # fewer tokens scored: refused, whoever did it
    with pytest.raises(scoring.ScoringError, match="harness check: trainer.prepare.EVAL_TOKENS was replaced"):
        scoring.score(Uniform(), val_batches(), 4, tb)


# ---- splits ----


def test_splits_are_disjoint_deterministic_and_test_is_kept_apart(tiny_preset, corpus, monkeypatch, tmp_path):
    monkeypatch.setenv("NIGHTLAB_CACHE", str(tmp_path / "cache"))
    docs = [Document(str(i), t) for i, t in enumerate(_docs(300))]
    def assign(docs):
        return {d.text: name for name, ds in P.split_docs(docs, 0.2, 0.2).items() for d in ds}

    assert assign(docs) == assign(list(reversed(docs)))
    counts = {s: sum(v == s for v in assign(docs).values()) for s in ("train", "val", "test")}
    assert all(c > 20 for c in counts.values()), counts
    # each split's share of the text is what the fractions say, not what the hash happened to give
    chars = {s: sum(len(t) for t, v in assign(docs).items() if v == s) for s in counts}
    total = sum(chars.values())
    assert abs(chars["val"] / total - 0.2) < 0.02 and abs(chars["test"] / total - 0.2) < 0.02, chars
    # documents that may not be held out always train
    pinned = [Document(d.name, d.text, holdable=i % 2 == 0) for i, d in enumerate(docs)]
    split = P.split_docs(pinned, 0.2, 0.2)
    assert all(d.holdable for d in split["val"] + split["test"]) and split["val"] and split["test"]

    meta = P.prepare(tiny_preset, "folder", path=str(corpus), log=lambda *_: None)
    data, val_dir, held = P.data_dir(tiny_preset), P.val_dir(tiny_preset), P._heldout_dir(tiny_preset)
    for a, b in [(data, val_dir), (data, held), (val_dir, held)]:  # a sandbox binds each on its own
        assert not a.is_relative_to(b) and not b.is_relative_to(a)
    assert [p.name for p in data.glob("*.bin")] == ["train.bin"]
    # the document list (names and hashes) is not where training reads: hashed against the train
    # split's documents it would say which ones are val and test
    assert not (data / "manifest.json").exists() and (val_dir / "manifest.json").exists()
    assert [p.name for p in val_dir.glob("*.bin")] == ["val.bin"]
    assert [p.name for p in held.glob("*.bin")] == ["test.bin"]
    for d in (val_dir, held):  # each split's directory stands alone: tokenizer, token bytes, meta
        assert P.Tokenizer.from_directory(d).enc.n_vocab == P.Tokenizer.from_directory(data).enc.n_vocab
        assert (d / "token_bytes.npy").read_bytes() == (data / "token_bytes.npy").read_bytes()
    tok = P.Tokenizer.from_directory(data)

    def texts(folder: Path, split: str) -> set[str]:
        tokens = np.fromfile(folder / f"{split}.bin", dtype=np.uint16)
        starts = np.load(folder / f"{split}.idx.npy")
        return {tok.decode(tokens[a + 1:b].tolist()) for a, b in zip(starts[:-1], starts[1:])}

    train, val, test = texts(data, "train"), texts(val_dir, "val"), texts(held, "test")
    assert not (train & val) and not (train & test) and not (val & test)
    assert len(train) + len(val) + len(test) == sum(meta["n_docs"].values()) == 120
    with pytest.raises(AssertionError, match="test split"):
        next(P.make_dataloader(tok, 1, 8, "test"))


def test_the_split_is_secret_unless_named(tiny_preset, corpus):
    """A run can read the corpus (the cpu preset's is the interpreter's own stdlib): without the
    salt it must not be able to tell which documents are val or test. Each build draws a new
    secret salt, recorded only beside val and test; naming one rebuilds the same split."""
    P.prepare(tiny_preset, "folder", path=str(corpus), log=lambda *_: None)
    data, val_dir = P.data_dir(tiny_preset), P.val_dir(tiny_preset)
    salt = json.loads((val_dir / "meta.json").read_text())["split_salt"]
    assert "split_salt" not in json.loads((data / "meta.json").read_text())
    assert salt in (P._heldout_dir(tiny_preset) / "meta.json").read_text()
    assert not any(salt in p.read_bytes().decode("latin-1") for p in data.iterdir())  # nothing training reads
    first = (val_dir / "val.bin").read_bytes()
    P.prepare(tiny_preset, "folder", path=str(corpus), log=lambda *_: None, force=True)
    assert (val_dir / "val.bin").read_bytes() != first  # a new secret, a new split
    P.prepare(tiny_preset, "folder", path=str(corpus), log=lambda *_: None, force=True, split_salt=salt)
    assert (val_dir / "val.bin").read_bytes() == first  # the named salt: the same split
    docs = [Document(str(i), t) for i, t in enumerate(_docs(120))]
    unsalted = {d.text for d in P.split_docs(docs, 0.2, 0.2)["val"]}
    salted = {d.text for d in P.split_docs(docs, 0.2, 0.2, bytes.fromhex(salt))["val"]}
    assert unsalted != salted  # the public hash does not name the val documents


# ---- tokenizer ----


def test_tokenizer_round_trips_and_caches_byte_lengths(tiny_preset, corpus, monkeypatch, tmp_path):
    monkeypatch.setenv("NIGHTLAB_CACHE", str(tmp_path / "cache"))
    P.prepare(tiny_preset, "folder", path=str(corpus), log=lambda *_: None)
    tok = P.Tokenizer.from_directory(P.data_dir(tiny_preset))
    for text in ["def f(x):\n    return x ** 2  # ok", "naïve über 日本 12345", "   \n\t", ""]:
        assert tok.decode(tok.encode(text)) == text
    assert tok.get_vocab_size() == 300
    assert tok.encode("x", prepend=tok.get_bos_token_id())[0] == tok.get_bos_token_id()
    tb = np.load(P.data_dir(tiny_preset) / "token_bytes.npy")
    assert tb[tok.get_bos_token_id()] == 0 and (tb[:256] >= 1).all()
    assert int(tb[tok.encode("gamma")].sum()) == len(b"gamma")


def test_dataloader_packs_bos_aligned_rows_without_padding(tiny_preset, corpus, monkeypatch, tmp_path):
    monkeypatch.setenv("NIGHTLAB_CACHE", str(tmp_path / "cache"))
    P.prepare(tiny_preset, "folder", path=str(corpus), log=lambda *_: None)
    monkeypatch.setattr(P, "PRESET", tiny_preset)
    tok = P.Tokenizer.from_directory()
    x, y, epoch = next(P.make_dataloader(tok, 4, 32, "train", device="cpu"))
    assert x.shape == y.shape == (4, 32) and epoch == 1
    assert (x[:, 0] == tok.get_bos_token_id()).all()  # every row starts at a document
    assert torch.equal(x[:, 1:], y[:, :-1])
    a = next(P.make_dataloader(tok, 4, 32, "val", device="cpu"))[0]
    b = next(P.make_dataloader(tok, 4, 32, "val", device="cpu"))[0]
    assert torch.equal(a, b)  # val order is fixed


# ---- sources ----


def _write_parquet(path: Path, texts: list, column: str = "text") -> None:
    pq.write_table(pa.table({column: texts}), path)


def test_folder_reads_txt_and_parquet(tmp_path):
    (tmp_path / "a.txt").write_text(_docs(1)[0])
    _write_parquet(tmp_path / "b.parquet", _docs(3, seed=1) + ["short", None])
    docs, manifest = folder_documents(str(tmp_path))
    assert len(docs) == 4 and len(manifest) == 2
    assert {d.name for d in docs} >= {"a.txt", "b.parquet:0"}


class _ShardServer(http.server.SimpleHTTPRequestHandler):
    fail_first: set[str] = set()

    def do_GET(self):
        if self.path in self.fail_first:
            self.fail_first.discard(self.path)
            self.send_error(503, "try again")
            return
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture
def shard_server(tmp_path):
    root = tmp_path / "remote"
    root.mkdir()
    handler = lambda *a, **k: _ShardServer(*a, directory=str(root), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_climbmix_download_retries_and_renames_atomically(shard_server, tmp_path, monkeypatch):
    root, url = shard_server
    for i in range(2):
        _write_parquet(root / f"shard_{i:05d}.parquet", _docs(60, seed=i))
    _ShardServer.fail_first = {"/shard_00001.parquet"}
    monkeypatch.setattr("time.sleep", lambda s: None)
    cache = tmp_path / "dl"
    docs, manifest = P.load_source("climbmix", path=None, num_shards=2, base_url=url, cache=cache,
                                   log=lambda *_: None)
    assert len(docs) == 120 and [m[0] for m in manifest] == ["shard_00000.parquet", "shard_00001.parquet"]
    assert not list(cache.rglob("*.tmp"))
    with pytest.raises(DataError, match="after 2 attempts"):
        download_file(f"{url}/missing.parquet", cache / "missing.parquet", attempts=2, log=lambda *_: None)
    assert not (cache / "missing.parquet").exists() and not list(cache.rglob("*.tmp"))


# ---- bad input: clear error naming the path, exit non-zero, no partial cache ----


def test_missing_and_empty_folders_name_the_path(tmp_path):
    with pytest.raises(DataError, match="does not exist") as e:
        folder_documents(str(tmp_path / "nope"))
    assert str(tmp_path / "nope") in str(e.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no .txt or .parquet"):
        folder_documents(str(tmp_path / "empty"))


def test_unreadable_parquet_and_missing_column(tmp_path):
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(DataError, match="unreadable parquet") as e:
        parquet_documents(bad)
    assert str(bad) in str(e.value)
    other = tmp_path / "other.parquet"
    _write_parquet(other, ["x" * 100], column="content")
    with pytest.raises(DataError, match="no `text` column"):
        parquet_documents(other)


def test_too_small_corpus_fails_without_touching_the_existing_cache(tiny_preset, corpus, monkeypatch, tmp_path):
    monkeypatch.setenv("NIGHTLAB_CACHE", str(tmp_path / "cache"))
    P.prepare(tiny_preset, "folder", path=str(corpus), log=lambda *_: None)
    before = (P.data_dir(tiny_preset) / "meta.json").read_text()
    small = tmp_path / "small"
    small.mkdir()
    (small / "one.txt").write_text(_docs(1)[0])
    assert P.main(["--preset", tiny_preset, "--source", "folder", "--path", str(small)]) == 2
    assert (P.data_dir(tiny_preset) / "meta.json").read_text() == before
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith(".")]


def test_cache_from_another_harness_version_is_refused(tiny_preset, corpus, monkeypatch, tmp_path):
    monkeypatch.setenv("NIGHTLAB_CACHE", str(tmp_path / "cache"))
    P.prepare(tiny_preset, "folder", path=str(corpus), log=lambda *_: None)
    meta_path = P.data_dir(tiny_preset) / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "harness_version": 0}))
    with pytest.raises(DataError, match="harness version 0") as e:
        P.Tokenizer.from_directory(P.data_dir(tiny_preset))
    assert str(P.data_dir(tiny_preset)) in str(e.value)
    with pytest.raises(DataError, match="no prepared data"):
        P.Tokenizer.from_directory(tmp_path / "cache" / "data" / "gpu")
    # prepare notices the stale cache and rebuilds it rather than reusing it
    P.prepare(tiny_preset, "folder", path=str(corpus), log=lambda *_: None)
    assert json.loads(meta_path.read_text())["harness_version"] == P.HARNESS_VERSION
