"""Identification at scale (issue 16): a speaker database of N synthetic speakers.

For each N (10k / 100k / 1M; E = 192):

* **enrol**: N speakers through the bulk-import API (``import_embeddings``, one
  transaction, AS-norm statistics stored), and 500 more one at a time through
  ``SpeakerDB.enroll`` (each its own transaction, as ``lapsv enroll``): speakers/s;
* **index build**: the first :class:`~lapsv.speakers.index.SpeakerIndex` (exact up to
  200k speakers, HNSW above), stored beside the database;
* **open**: in a fresh process, open the database and its stored index;
* **identify**: ``identify_embeddings`` with the full scoring path (cosine search, then
  AS-norm with stored statistics and the QMF LLR on the 100-candidate shortlist), one
  query at a time (p50 / p95 latency), 100 queries in one call, and 1,000 in one call twice
  (the first reads most of its candidates' models from the database file, the second
  finds them in the page cache);
* **memory**: resident set size of that process after the queries (VmRSS) and its peak;
* **accuracy**: top-1 answers and top-5 cosine candidates against exact brute-force search
  over the same model vectors, for 1,000 queries; and the exact search's own single-query
  latency (FAISS flat, one thread), the "exact-search ratio".

Speakers are synthetic with the structure of real embeddings (a rank-64 speaker subspace
plus noise, PLDA's model), not uniform on the sphere; each query is an enrolled speaker
plus noise (cosine about 0.7 to its speaker, as a new recording of a known voice).

    python -m benchmarks.identification --size full   # 10k, 100k, 1M (small: 10k, 100k)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import machine
from benchmarks.report import render
from lapsv.embeddings import EmbeddingSet
from lapsv.files import atomic_write_text
from lapsv.identification import cohort_statistics_of, identify_embeddings, import_embeddings
from lapsv.scoring.state import ScoringState, fit_scoring_state
from lapsv.speakers import SpeakerDB, Utterance
from lapsv.speakers.index import EXACT_LIMIT, SpeakerIndex, faiss_module, top_k

DIM, RANK, COHORT = 192, 64, 2000
QUERIES, SINGLE = 1000, 200
HERE = Path(__file__).parent
RESULTS_DIR, MARKDOWN = HERE / "results", HERE / "RESULTS.md"
SIZES = {  # (speakers, exact_limit): an exact limit of 0 forces the approximate HNSW index
    "tiny": ((2_000, EXACT_LIMIT), (2_000, 0)),
    "small": ((10_000, EXACT_LIMIT), (100_000, EXACT_LIMIT), (100_000, 0)),
    "full": (
        (10_000, EXACT_LIMIT),
        (100_000, EXACT_LIMIT),
        (100_000, 0),
        (1_000_000, EXACT_LIMIT),
        (1_000_000, 10**9),  # exact search at 1M: the exact-search ratio
    ),
}


@dataclasses.dataclass
class SyntheticModel:
    """What identification needs of a model: an id and a scoring state."""

    scoring: ScoringState
    model_id: str = "synthetic-192"


def speakers(n: int, seed: int) -> np.ndarray:
    """(n, DIM) unit vectors: a shared rank-RANK subspace plus isotropic noise."""
    basis = np.random.default_rng(12345).normal(size=(RANK, DIM)).astype(np.float32)
    rng = np.random.default_rng(seed)
    out = np.empty((n, DIM), np.float32)
    for start in range(0, n, 100_000):
        m = min(100_000, n - start)
        x = rng.normal(size=(m, RANK)).astype(np.float32) @ basis
        x += 0.5 * rng.normal(size=(m, DIM)).astype(np.float32)
        out[start : start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def queries_of(vectors: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n queries near random enrolled speakers (cosine ~0.7) and those speakers' rows."""
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(vectors), n, replace=False)
    noise = rng.normal(size=(n, DIM)).astype(np.float32)
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    return vectors[rows] + noise, rows


def model() -> SyntheticModel:
    """A scoring state fitted on a synthetic cohort: mean, AS-norm (top 300), QMF."""
    cohort = speakers(COHORT * 4, seed=7)
    labels = [f"c{i // 4}" for i in range(len(cohort))]
    state = fit_scoring_state(cohort, np.full(len(cohort), 4.0), labels, top_n=300, calibrate=True)
    return SyntheticModel(state)


def build(path: Path, n: int, exact_limit: int) -> dict[str, Any]:
    """Create the database (bulk import + 500 single enrolments) and its index."""
    spk = model()
    vectors = speakers(n, seed=1)
    embeddings = EmbeddingSet([f"s{i:07d}" for i in range(n)], vectors, np.full(n, 6.0))
    queries, truth = queries_of(vectors, QUERIES, seed=3)
    np.savez(path.with_name("queries.npz"), queries=queries, truth=truth)
    with SpeakerDB(path, create=True) as db:
        start = time.perf_counter()
        import_embeddings(db, embeddings, spk.model_id, model=spk)
        bulk = time.perf_counter() - start
        extra, stats = speakers(500, seed=2), cohort_statistics_of(spk)
        start = time.perf_counter()
        for i, vector in enumerate(extra):
            utterance = Utterance(f"x{i}", f"x{i}", 6.0, vector)
            db.enroll(f"x{i:04d}", [utterance], model_id=spk.model_id, stats=stats)
        single = time.perf_counter() - start
        start = time.perf_counter()
        index = SpeakerIndex(db, mean=spk.scoring.mean, exact_limit=exact_limit)
        built = time.perf_counter() - start
        kind = index.kind
    return {
        "speakers": n + 500,
        "bulk_import_speakers_per_s": n / bulk,
        "bulk_import_s": bulk,
        "enroll_one_at_a_time_per_s": 500 / single,
        "index_build_s": built,
        "index_kind": kind,
        "db_mb": path.stat().st_size / 2**20,
    }


def _memory_mb(field: str) -> float:
    """VmRSS (resident now) or VmHWM (its peak) of this process, in MB: unlike ru_maxrss,
    the peak does not inherit the parent's size across fork + exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure(path: Path, n: int) -> dict[str, Any]:
    """In a fresh process: open, identify one by one and in a batch, memory, accuracy."""
    spk = model()
    saved = path.with_name("queries.npz")  # written by build(): no N x E matrix here
    if saved.is_file():
        with np.load(saved) as stored:
            queries, truth = stored["queries"], stored["truth"]
    else:
        queries, truth = queries_of(speakers(n, seed=1), QUERIES, seed=3)
    start = time.perf_counter()
    db = SpeakerDB(path)
    index = SpeakerIndex(db, mean=spk.scoring.mean)
    opened = time.perf_counter() - start
    seconds = [6.0] * QUERIES
    latencies, answers = [], []
    identify_embeddings(db, spk, queries[-20:], seconds[:20], ["w"] * 20, index=index)  # warm
    for i in range(SINGLE):
        start = time.perf_counter()
        answer = identify_embeddings(db, spk, queries[i : i + 1], seconds[:1], ["q"], index=index)
        latencies.append(time.perf_counter() - start)
        answers.append(answer[0].candidates[0].name)
    start = time.perf_counter()
    batch = identify_embeddings(db, spk, queries[:100], seconds[:100], ["q"] * 100, index=index)
    batch_s = time.perf_counter() - start
    all_s = []  # the first call reads most of its ~100k candidates' models from disk
    for _ in range(2):
        start = time.perf_counter()
        identify_embeddings(db, spk, queries, seconds, ["q"] * QUERIES, index=index)
        all_s.append(time.perf_counter() - start)
    rss, peak = _memory_mb("VmRSS"), _memory_mb("VmHWM")
    found, _ = index.search(queries, 5)
    accuracy = _accuracy(db, index, queries, found, truth)
    db.close()
    return {
        "open_s": opened,
        "identify_one_p50_ms": 1000 * float(np.median(latencies)),
        "identify_one_p95_ms": 1000 * float(np.percentile(latencies, 95)),
        "identify_100_s": batch_s,
        f"identify_{QUERIES}_s": all_s[0],
        f"identify_{QUERIES}_again_s": all_s[1],
        "batch_agrees_with_single": [b.candidates[0].name for b in batch] == answers[:100],
        "rss_mb": rss,
        "peak_rss_mb": peak,
        **accuracy,
    }


def _accuracy(
    db: SpeakerDB, index: SpeakerIndex, queries: np.ndarray, found: np.ndarray, truth: np.ndarray
) -> dict[str, Any]:
    """Top-1 / top-5 agreement with exact search over the stored model vectors."""
    _, _, ids, vectors = db.changes_since(-1)
    prepared = index._prepare(vectors)
    _, exact_ids = top_k(index._prepare(queries), prepared, ids, 5)
    faiss = faiss_module()
    exact_ms = float("nan")
    if faiss is not None:
        flat = faiss.IndexFlatIP(DIM)
        flat.add(prepared)
        faiss.omp_set_num_threads(1)
        start = time.perf_counter()
        for query in index._prepare(queries[:50]):
            flat.search(query[None], 5)
        exact_ms = 1000 * (time.perf_counter() - start) / 50
    recall = np.mean([len(set(a) & set(e)) / 5 for a, e in zip(found, exact_ids, strict=True)])
    sweep = {}
    if index.kind == "faiss-hnsw":  # recall and latency against efSearch
        default = index._base.ef_search
        for ef in (256, 512, 1024, 2048):
            index._base.ef_search = ef
            start = time.perf_counter()
            for query in queries[:100]:
                index.search(query[None], 5)
            ms = 1000 * (time.perf_counter() - start) / 100
            ids_ef, _ = index.search(queries, 5)
            hits = [len(set(a) & set(e)) / 5 for a, e in zip(ids_ef, exact_ids, strict=True)]
            sweep[str(ef)] = {"recall_at_5": float(np.mean(hits)), "search_one_ms": ms}
        index._base.ef_search = default
    best = db.models(np.unique(exact_ids[:, 0]))
    name_of = dict(zip(best.ids.tolist(), best.names, strict=True))
    true_names = [f"s{row:07d}" for row in truth]
    exact_names = [name_of[i] for i in exact_ids[:, 0].tolist()]
    return {
        "top1_equals_exact": float(np.mean(found[:, 0] == exact_ids[:, 0])),
        "recall_at_5": float(recall),
        "exact_search_one_ms": exact_ms,
        "ef_search_sweep": sweep,
        "exact_top1_is_the_true_speaker": float(
            np.mean([a == b for a, b in zip(exact_names, true_names, strict=True)])
        ),
    }


def run(size: str, log) -> dict[str, Any]:
    """Every size of ``SIZES[size]``; the query phase in a fresh process per size."""
    results = {}
    for n, exact_limit in SIZES[size]:
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "speakers.db"
            log(f"identification: building {n:,} speakers")
            built = build(path, n, exact_limit)
            log(f"identification: {built}")
            code = (
                "import json; from pathlib import Path; "
                "from benchmarks import identification as b; "
                f"print(json.dumps(b.measure(Path({str(path)!r}), {n})))"
            )
            done = subprocess.run(
                [sys.executable, "-c", code], capture_output=True, text=True, check=True
            )
            measured = json.loads(done.stdout.strip().splitlines()[-1])
            log(f"identification: {measured}")
            key = f"{n}-{built['index_kind']}"
            results[key] = {**built, **measured}
    return {"identification": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--out", default=str(RESULTS_DIR / "identification-cpu.json"))
    args = parser.parse_args()
    started = time.perf_counter()
    data = {"size": args.size, "machine": machine(torch.device("cpu"))}
    data.update(run(args.size, lambda message: print(message, file=sys.stderr, flush=True)))
    data["total_seconds"] = time.perf_counter() - started
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(data, indent=1) + "\n")
    atomic_write_text(MARKDOWN, render(RESULTS_DIR))
    print(json.dumps(data, indent=1))


if __name__ == "__main__":
    main()
