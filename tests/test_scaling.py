"""Complexity guards: every path whose input can grow stays linear.

Each test times one bulk path at size N and 8N in the same process, on synthetic data, and
fails when the time grows more than 16x: linear work grows 8x (less, with fixed costs),
quadratic work 64x. A ratio measured in one process holds on a busy or slow machine where
an absolute time would not; each size takes the best of a few runs, so one hiccup does not
decide. A per-item call that rebuilds something O(N) (an id index, a matrix, a query over
the whole table) makes the whole job O(N^2), and these tests catch it at sizes where the
quadratic term dominates: before issue 23's fix, bulk import grew 32x (57x with a speaker
map) and identify of many queries 19x here; after it, 7x and 6x.
"""

from __future__ import annotations

import gc
import itertools
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from lapsv.data.manifest import Manifest
from lapsv.data.manifest import Utterance as ManifestUtterance
from lapsv.diarization.clustering import viterbi_resegmentation
from lapsv.diarization.embedding import cut_windows
from lapsv.diarization.segments import Segment, clip_segments, windows_to_segments
from lapsv.diarization.windows import bridged_regions, scaled_windows
from lapsv.distributed import assign_chunks, plan_chunks
from lapsv.embeddings import EmbeddingSet
from lapsv.identification import identify_embeddings, import_embeddings
from lapsv.scoring import evaluate as evaluate_module
from lapsv.scoring.evaluate import score_trials
from lapsv.scoring.norm import as_norm, cosine_scores, speaker_cohort
from lapsv.scoring.state import fit_scoring_state
from lapsv.scoring.trials import read_trials
from lapsv.speakers import SpeakerDB, Utterance
from lapsv.speakers.index import SpeakerIndex
from lapsv.transcription.attribution import attribute
from lapsv.transcription.transcript import TranscriptSegment, Word

DIM = 32
GROWTH = 8  # the large size is GROWTH times the small one
LIMIT = 16  # linear: 8x; quadratic: 64x
MIN_SECONDS = 0.005  # a quick path runs several times per measurement, at both sizes
MODEL_ID = "scaling-model"
_folders = itertools.count()


def best_times(
    small: Callable[[], object], large: Callable[[], object], repeats: int
) -> tuple[float, float]:
    """The fastest of ``repeats`` runs of each, taken in turn (so a busy spell of the
    machine hits both sizes), with the garbage collector paused as ``timeit`` does."""
    times: tuple[list[float], list[float]] = ([], [])
    gc.collect()
    gc.disable()
    try:
        for _ in range(repeats):
            for run, spent in zip((small, large), times, strict=True):
                start = time.perf_counter()
                run()
                spent.append(time.perf_counter() - start)
    finally:
        gc.enable()
    return min(times[0]), min(times[1])


def assert_linear(
    make: Callable[[int], Callable[[], object]], n: int, *, repeats: int = 3
) -> float:
    """Time ``make(n)()`` and ``make(GROWTH * n)()``; fail when the time grows > LIMIT x.

    ``make(size)`` prepares the inputs of one size (not timed) and returns the work, which
    may run many times (a quick one several times per measurement). A ratio over the limit
    is measured once more, with twice the runs, before it fails: a busy machine seldom
    slows the large size twice, a quadratic path always does. Returns the ratio."""
    small, large = make(n), make(GROWTH * n)
    start = time.perf_counter()
    small()  # warm-up, and how many runs make one measurement of at least MIN_SECONDS
    runs = max(1, math.ceil(MIN_SECONDS / (time.perf_counter() - start)))
    if runs > 1:
        small, large = _repeated(small, runs), _repeated(large, runs)
    for attempt in range(2):
        small_s, large_s = best_times(small, large, repeats * (1 + attempt))
        ratio = large_s / small_s
        print(f"{n} -> {GROWTH * n}: {small_s:.4f} s -> {large_s:.4f} s, {ratio:.1f}x")
        if ratio <= LIMIT:
            return ratio
    raise AssertionError(
        f"{GROWTH}x the input took {ratio:.1f}x the time ({small_s:.4f} s -> {large_s:.4f} s): "
        f"more than linear (linear is {GROWTH}x, quadratic {GROWTH**2}x)"
    )


def _repeated(run: Callable[[], object], times: int) -> Callable[[], None]:
    def repeated() -> None:
        for _ in range(times):
            run()

    return repeated


def unit_vectors(n: int, seed: int) -> np.ndarray:
    vectors = np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def embedding_set(n: int, seed: int = 0) -> EmbeddingSet:
    return EmbeddingSet([f"u{i:07d}" for i in range(n)], unit_vectors(n, seed), np.full(n, 4.0))


class ScoringModel:
    """What identification needs of a model: an id and a scoring state (mean, AS-norm
    cohort, QMF), fitted on a synthetic cohort."""

    model_id = MODEL_ID

    def __init__(self) -> None:
        cohort = unit_vectors(800, seed=7)
        labels = [f"c{i // 4}" for i in range(len(cohort))]
        self.scoring = fit_scoring_state(
            cohort, np.full(len(cohort), 4.0), labels, top_n=50, calibrate=True
        )


@pytest.fixture(scope="module")
def scoring_model() -> ScoringModel:
    return ScoringModel()


def fresh_db(folder: Path) -> SpeakerDB:
    return SpeakerDB(folder / f"speakers-{next(_folders)}.db", create=True)


@pytest.mark.parametrize("with_map", [False, True], ids=["one-per-speaker", "speaker-map"])
def test_bulk_import_is_linear(tmp_path, with_map):
    """``lapsv speakers import``: N speakers (one embedding each, or 2 via a spk2utt map)."""

    def make(n: int) -> Callable[[], object]:
        embeddings = embedding_set(2 * n if with_map else n)
        speakers = None
        if with_map:
            speakers = {f"s{i}": embeddings.ids[2 * i : 2 * i + 2] for i in range(n)}

        def run() -> None:
            with fresh_db(tmp_path) as db:
                import_embeddings(db, embeddings, MODEL_ID, speakers=speakers)

        return run

    assert_linear(make, 600, repeats=2)


def test_reimport_of_enrolled_speakers_is_linear(tmp_path):
    """Importing speakers that are already enrolled updates each one (another path)."""

    def make(n: int) -> Callable[[], object]:
        embeddings = embedding_set(n)
        db = fresh_db(tmp_path)
        import_embeddings(db, embeddings, MODEL_ID)
        again = EmbeddingSet(embeddings.ids, unit_vectors(n, seed=1), embeddings.seconds)
        return lambda: import_embeddings(db, again, MODEL_ID)

    assert_linear(make, 400, repeats=2)


def test_single_enrolments_stay_linear(tmp_path):
    """``lapsv enroll`` one speaker at a time: each costs the same at any database size."""

    def make(n: int) -> Callable[[], object]:
        vectors = unit_vectors(n, seed=2)

        def run() -> None:
            with fresh_db(tmp_path) as db:
                for i, vector in enumerate(vectors):
                    db.enroll(f"x{i}", [Utterance(f"k{i}", "-", 1.0, vector)], model_id=MODEL_ID)

        return run

    assert_linear(make, 60, repeats=2)


@pytest.mark.parametrize("path", ["rows", "rows-one-by-one", "trial_rows", "in_order"])
def test_embedding_rows_over_many_ids_are_linear(path):
    """Looking up rows of many ids (scoring, enrolment maps, import): in one call, and one
    call per id (each costs its own ids: the id index is built once)."""

    def make(n: int) -> Callable[[], object]:
        table = embedding_set(n)
        wanted = [str(u) for u in np.random.default_rng(0).permutation(table.ids)]
        calls = {
            "rows": lambda: table.rows(wanted),
            "rows-one-by-one": lambda: [table.rows((utt,)) for utt in wanted],
            "trial_rows": lambda: table.trial_rows(wanted, table.ids),
            "in_order": lambda: table.in_order(wanted),
        }
        return calls[path]

    assert_linear(make, 2_000 if path == "rows-one-by-one" else 1_000, repeats=5)


def test_identify_many_queries_is_linear(tmp_path, scoring_model):
    """``identify_embeddings`` of N queries in one call (search, AS-norm, QMF shortlist)."""
    db = fresh_db(tmp_path)
    speakers = embedding_set(3000, seed=3)
    import_embeddings(db, speakers, MODEL_ID)
    index = SpeakerIndex(db, mean=scoring_model.scoring.mean, store=False)

    def make(n: int) -> Callable[[], object]:
        queries = speakers.embeddings[np.arange(n) % len(speakers)] + 0.3 * unit_vectors(n, 4)
        sources = [f"q{i}" for i in range(n)]
        return lambda: identify_embeddings(
            db, scoring_model, queries, [4.0] * n, sources, index=index
        )

    assert_linear(make, 1_000, repeats=2)


def test_scoring_a_long_trial_list_is_linear(tmp_path, monkeypatch):
    """``lapsv eval``: read a trial list, find its rows, score, compute metrics, write the
    scores (the DET and histogram plots are left out: matplotlib's cost is not ours)."""
    monkeypatch.setattr(evaluate_module, "plot_det", lambda *a, **k: tmp_path / "det.png")
    monkeypatch.setattr(
        evaluate_module, "plot_score_histogram", lambda *a, **k: tmp_path / "hist.png"
    )

    def make(n: int) -> Callable[[], object]:
        table = embedding_set(n // 4, seed=5)
        rng = np.random.default_rng(6)
        enroll, test = rng.integers(0, len(table), (2, n))
        path = tmp_path / f"trials-{n}.txt"
        path.write_text(
            "".join(
                f"{int(e % 2)} {table.ids[e]} {table.ids[t]}\n"
                for e, t in zip(enroll, test, strict=True)
            )
        )
        out = tmp_path / f"eval-{n}"
        return lambda: score_trials(table, read_trials(path), out=out)

    assert_linear(make, 20_000, repeats=2)


def test_as_norm_is_linear():
    """AS-norm of N trials over N / 4 utterances: cohort statistics of every utterance used,
    and the cohort itself built from N / 2 labelled utterances."""
    cohort_source = unit_vectors(40_000, seed=8)

    def make(n: int) -> Callable[[], object]:
        vectors = unit_vectors(n // 4, seed=9)
        rng = np.random.default_rng(10)
        pairs_e, pairs_t = rng.integers(0, len(vectors), (2, n))
        labels = [f"spk{i // 4}" for i in range(n // 2)]
        source = cohort_source[: n // 2]

        def run() -> None:
            cohort = speaker_cohort(source, labels)
            raw = cosine_scores(vectors, vectors, pairs_e, pairs_t)
            as_norm(raw, vectors, vectors, pairs_e, pairs_t, cohort[:300], top_n=100)

        return run

    assert_linear(make, 4_000)


def test_index_catch_up_is_linear(tmp_path):
    """A search index stored earlier applies N changes (new and replaced speakers) made by
    other processes since: opening it and its first search."""

    def make(n: int) -> Callable[[], object]:
        db = fresh_db(tmp_path)
        import_embeddings(db, embedding_set(2000, seed=11), MODEL_ID)
        SpeakerIndex(db)  # stores the base, as of now
        changed = embedding_set(n, seed=12)  # ids u0000000..: the first 2000 replace speakers
        import_embeddings(db, changed, MODEL_ID)
        queries = unit_vectors(4, seed=13)
        return lambda: SpeakerIndex(db).search(queries, 5)

    assert_linear(make, 2_000, repeats=3)


def test_distributed_chunk_plan_is_linear():
    """Planning an extraction job's chunks and sharing them among 8 processes."""

    def make(n: int) -> Callable[[], object]:
        durations = np.random.default_rng(14).uniform(1, 20, n)

        def run() -> None:
            chunks = plan_chunks(durations, 64)
            assign_chunks([float(durations[c].sum()) for c in chunks], 8)

        return run

    assert_linear(make, 50_000)


def test_cohort_sampling_from_a_training_manifest_is_linear(tmp_path):
    """``Manifest.sample_per_speaker`` (the AS-norm / QMF cohort of a training list): N
    utterances of N / 10 speakers."""

    def make(n: int) -> Callable[[], object]:
        utterances = tuple(
            ManifestUtterance(f"u{i}", f"spk{i % (n // 10)}", 3.0, f"a/{i}.wav") for i in range(n)
        )
        manifest = Manifest(tmp_path, utterances)
        return lambda: manifest.sample_per_speaker(5)

    assert_linear(make, 2_000)


def test_the_guard_fails_on_quadratic_work():
    """The guard itself: quadratic work over the sizes above fails it, linear work passes."""
    assert assert_linear(lambda n: lambda: sum(range(n * 200)), 2_000) <= LIMIT

    def quadratic(n: int) -> Callable[[], object]:
        items = list(range(n))
        return lambda: [items.index(i) for i in items[::4]]

    with pytest.raises(AssertionError, match="more than linear"):
        assert_linear(quadratic, 600)


def test_diarization_windows_and_segments_are_linear():
    """A long recording's windows: placed over its speech regions joined across short
    pauses (at three lengths, each window paired with the nearest longer ones), cut from a
    stream of 30 s blocks, resegmented by Viterbi decoding, joined back into segments and
    cut to the speech (all but the clustering, which is W x W)."""

    def make(n: int) -> Callable[[], object]:
        starts = np.arange(n) * 3.5
        regions = np.stack([starts, starts + np.where(np.arange(n) % 2, 3.0, 3.2)], axis=1)
        samples = int(regions[-1, 1] * 16_000) + 16_000  # pauses of 0.3 s and 0.5 s
        block = np.zeros(30 * 16_000, np.float32)
        blocks = [block[: min(len(block), samples - i)] for i in range(0, samples, len(block))]
        labels = [f"S{i % 3}" for i in range(8 * n)]
        clusters = np.arange(8 * n) % 3
        embeddings = np.random.default_rng(0).normal(size=(8 * n, 16))

        def run() -> None:
            joined = bridged_regions(regions, 0.4)
            scaled = scaled_windows(joined, window=1.5, hop=0.75, longer=(2.0, 3.0))
            windows = scaled.windows
            spans = np.round(scaled.spans * 16_000).astype(np.int64)
            for _ in cut_windows(blocks, spans):
                pass
            w = len(windows)
            viterbi_resegmentation(embeddings[:w], windows, clusters[:w], switch_penalty=0.2)
            clip_segments(windows_to_segments(windows, labels[:w]), regions)

        return run

    assert_linear(make, 200)


def test_transcript_attribution_is_linear():
    """Every word of a long transcript finds its speaker by bisection, not by a scan of
    all the speaker segments (words x segments would be quadratic)."""

    def make(n: int) -> Callable[[], object]:
        speakers = [Segment(i * 2.0, i * 2.0 + 1.8, f"S{i % 3}") for i in range(n)]
        segments = [
            TranscriptSegment(
                i * 2.0,
                i * 2.0 + 2.0,
                " a b c d",
                None,
                tuple(Word(i * 2.0 + k * 0.5, i * 2.0 + k * 0.5 + 0.4, " w") for k in range(4)),
            )
            for i in range(n)
        ]
        return lambda: attribute(segments, speakers)

    assert_linear(make, 300)
