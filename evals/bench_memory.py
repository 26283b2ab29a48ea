"""Benchmark the note store: retrieval over N notes, inserting 1k notes, prompt assembly.

Targets: top-10 retrieval over 100k notes <= 50 ms median; inserting 1k notes <= 10 s
on 2 cores *including* embedding; prompt assembly (context_for) <= 100 ms.

How the N-note store is built: embedding 100k texts with MiniLM on 2 cores would take hours, so
we embed --base distinct synthetic experiment/insight texts with the real model once, then bulk-
insert N notes whose text is a base text plus a serial suffix and whose embedding is that base
embedding plus small Gaussian noise (re-normalized), through the normal `add_notes(...,
embeddings=...)` path (SQLite + FTS5 triggers + Chroma HNSW). The 1k-insert measurement then uses
fresh texts embedded for real. Queries are new texts embedded at query time, as in production.

    python evals/bench_memory.py --notes 100000
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

KNOBS = [
    "DEPTH",
    "MATRIX_LR",
    "EMBED_LR",
    "WARMUP_STEPS",
    "TOTAL_BATCH_TOKENS",
    "SEQ_LEN",
    "N_HEAD",
    "WEIGHT_DECAY",
    "MUON_MOMENTUM",
    "LOGIT_SOFTCAP",
    "USE_VALUE_EMBEDS",
    "WARMDOWN_FRAC",
]
WHY = [
    "to add capacity",
    "for faster convergence",
    "to reduce gradient noise",
    "to stabilise early steps",
    "to fit more tokens in the budget",
    "to regularise",
    "to lower memory use",
    "to speed up each step",
]
TOPICS = [
    "attention",
    "optimizer",
    "learning rate schedule",
    "batch size",
    "tokenizer",
    "initialisation",
    "normalisation",
    "embeddings",
    "throughput",
    "evaluation noise",
]


def synthetic_text(rng: random.Random, i: int) -> tuple[str, str | None]:
    knob = rng.choice(KNOBS)
    if rng.random() < 0.7:
        a = rng.randint(1, 64)
        return (
            f"{knob} {a} -> {a * 2}: change {knob.lower()} {rng.choice(WHY)} (variant {i})",
            f"{knob} {a}->{a * 2}",
        )
    return (
        f"Insight {i}: the {rng.choice(TOPICS)} matters when {knob.lower()} is {rng.choice(['high', 'low'])}",
        None,
    )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--notes", type=int, default=100_000, help="size of the store to query")
    ap.add_argument(
        "--base", type=int, default=2_000, help="distinct texts embedded for real when building"
    )
    ap.add_argument("--queries", type=int, default=50, help="retrieval queries timed")
    ap.add_argument(
        "--insert",
        type=int,
        default=1_000,
        help="notes inserted (with embedding) in the insert test",
    )
    ap.add_argument("--budget", type=int, default=1_500, help="token budget for prompt assembly")
    ap.add_argument("--home", type=Path, default=None, help="store dir (default: a temp dir)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import numpy as np

    from memory import NoteIn, NoteStore

    rng = random.Random(args.seed)
    nrng = np.random.default_rng(args.seed)
    home = args.home or Path(tempfile.mkdtemp(prefix="bench-memory-"))
    t0 = time.perf_counter()
    store = NoteStore(home)
    fn = store.index.fn  # loads chromadb and the model
    load_s = time.perf_counter() - t0

    # ---- build the N-note store from --base real embeddings plus noise ----
    t0 = time.perf_counter()
    base = [synthetic_text(rng, i) for i in range(args.base)]
    base_emb = np.asarray(fn([t for t, _ in base]), dtype=np.float32)
    base_embed_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    chunk = 5_000
    for start in range(0, args.notes, chunk):
        n = min(chunk, args.notes - start)
        pick = nrng.integers(0, args.base, n)
        emb = base_emb[pick] + nrng.normal(0, 0.02, (n, base_emb.shape[1])).astype(np.float32)
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        notes = []
        for j, b in enumerate(pick):
            text, move = base[b]
            kind = "experiment" if move else "insight"
            notes.append(
                NoteIn(
                    campaign=f"bench-{(start + j) // 500}",
                    target="nano" if j % 4 else "other",
                    kind=kind,
                    text=f"{text} #{start + j}",
                    knob_move=move,
                    status="discard" if move else None,
                    metric_delta=round(rng.gauss(0.001, 0.003), 5) if move else None,
                )
            )
        store.add_notes(notes, embeddings=list(emb))
    build_s = time.perf_counter() - t0

    # ---- inserting 1k fresh notes, embedding included (one batch, as a compaction/import does) ----
    fresh = [
        NoteIn(
            campaign="bench-insert",
            target="nano",
            kind="insight",
            text=synthetic_text(rng, 10**7 + i)[0],
        )
        for i in range(args.insert)
    ]
    t0 = time.perf_counter()
    store.add_notes(fresh)
    insert_s = time.perf_counter() - t0
    single = []
    for i in range(20):  # the campaign loop adds one note per experiment
        t0 = time.perf_counter()
        store.add_note(
            NoteIn(
                campaign="bench-single",
                target="nano",
                kind="insight",
                text=synthetic_text(rng, 2 * 10**7 + i)[0],
            )
        )
        single.append(time.perf_counter() - t0)

    # ---- retrieval ----
    queries = [synthetic_text(rng, 3 * 10**7 + i)[0] for i in range(args.queries)]
    store.search(queries[0], 10, "nano")  # warm
    vec, hyb = [], []
    for q in queries:
        t0 = time.perf_counter()
        store.vector_hits(q, 10, "nano")
        vec.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        store.search(q, 10, "nano", current_only=True)
        hyb.append(time.perf_counter() - t0)
    embed_only = []
    for q in queries[:20]:
        t0 = time.perf_counter()
        fn([q])
        embed_only.append(time.perf_counter() - t0)

    # ---- prompt assembly ----
    store.add_direction("bench", "nano", "Focus on the optimizer: learning rates and momentum.")
    for k in range(10):
        store.add_note(
            NoteIn(
                campaign="bench",
                target="nano",
                kind="lesson",
                text=f"Lesson {k}: " + "detail " * 40,
                confidence=0.1 * k,
            )
        )
    store.context_for(queries[0], "nano", args.budget)  # warm (tiktoken load)
    ctx = []
    for q in queries[:20]:
        t0 = time.perf_counter()
        store.context_for(q, "nano", args.budget)
        ctx.append(time.perf_counter() - t0)

    ms = lambda xs: f"{statistics.median(xs) * 1000:.1f}"
    p95 = lambda xs: f"{sorted(xs)[int(0.95 * (len(xs) - 1))] * 1000:.1f}"
    print("---")
    print(f"notes: {store.count()}")
    print(f"cpu_count: {os.cpu_count()}")
    print(f"load_s: {load_s:.2f}")
    print(f"base_texts_embedded: {args.base}")
    print(f"base_embed_s: {base_embed_s:.2f}")
    print(f"build_bulk_s: {build_s:.1f}")
    print(f"insert_{args.insert}_s: {insert_s:.2f}")
    print(f"add_note_single_median_ms: {ms(single)}")
    print(f"query_embed_median_ms: {ms(embed_only)}")
    print(f"top10_vector_median_ms: {ms(vec)}")
    print(f"top10_vector_p95_ms: {p95(vec)}")
    print(f"top10_hybrid_median_ms: {ms(hyb)}")
    print(f"top10_hybrid_p95_ms: {p95(hyb)}")
    print(f"context_for_median_ms: {ms(ctx)}")
    print(f"context_for_p95_ms: {p95(ctx)}")
    print(f"store: {home}")


if __name__ == "__main__":
    main()
