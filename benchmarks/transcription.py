"""Transcripts with speakers (issue 26): the words, the cost of the speakers, attribution.

Items (``--only``):

* **cost**: one seeded conversation of the bundled clips (``benchmarks.diarization``'s
  builder, ``--minutes`` long), the same files in one process, runs interleaved (best of
  ``--repeats``), on an untrained LAP + ASTP over whisper-base (words and speed do not
  depend on the backend's training):

  - words only: ``speakers=False`` (plain Whisper: no VAD, no speakers);
  - shared pass: the decoder's own encoder pass, diarization windows pooled from it;
  - window pass (``lapsv transcribe``'s default): each 1.5 s window through the encoder
    again;
  - two models, WhisperX's way: words only, then ``diarize`` with a second model (GE2E),
    then the attribution;

* **words**: every English Asterisk prompt whose text is speech (Debian
  asterisk-core-sounds-en-wav; the texts of asterisk-core-sounds-en's
  core-sounds-en.txt.gz): ``lapsv transcribe`` (language en, default options) against
  transformers' ASR pipeline on the same converted weights (timestamps on, language en,
  the same decoding): the share of files with identical text, and each one's WER against
  the texts after Whisper's English normalizer;
* **attribution** (``--demo DIR``): the demo's Whisper LAP + ASTP model on its test
  conversations: the speaker error of the transcript's words (shared pass, window pass)
  and with the demo's GE2E LAP + ASTP as the second model.

    python -m benchmarks.transcription --demo lapsv-demo   # every item
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

import lapsv
from benchmarks.common import load_average, machine
from benchmarks.diarization import (
    SEED,
    bundled_clips,
    git_commit,
    thread_count,
    whisper_model,
    write_conversation,
)
from benchmarks.report import render
from lapsv.audio import load_audio
from lapsv.demo.debian import unpacked_package
from lapsv.diarization import DiarizeOptions, SileroVAD, diarize, read_rttm
from lapsv.errors import AudioError
from lapsv.files import atomic_write_text
from lapsv.frontends.hf import import_transformers, quiet_transformers
from lapsv.frontends.whisper_sources import resolve_whisper_source
from lapsv.transcription import TranscribeOptions, Transcriber
from lapsv.transcription.attribution import attribute
from lapsv.transcription.score import speaker_error

HERE = Path(__file__).parent
RESULTS_DIR, MARKDOWN = HERE / "results", HERE / "RESULTS.md"
ITEMS = ("cost", "words", "attribution")
PROMPTS = ("asterisk-core-sounds-en", "asterisk-core-sounds-en-wav")
VOICE = "en_US_f_Allison"
COST_GOAL = 1.15  # words + speakers (shared pass) / words alone


def cost_item(minutes: float, repeats: int, beams: int, log: Callable) -> dict[str, Any]:
    """Seconds of each way to get words and speakers on one conversation, and the ratios."""
    transcriber = Transcriber(whisper_model())
    ge2e, vad = lapsv.load_model("ge2e"), SileroVAD()
    words, shared, window = (
        _options(speakers=False, beams=beams),
        _options("shared", beams=beams),
        _options("window", beams=beams),
    )
    ways: dict[str, Callable[[Path], Any]] = {
        "words only": lambda p: transcriber.transcribe(p, options=words),
        "shared pass": lambda p: transcriber.transcribe(p, options=shared, vad=vad),
        "window pass": lambda p: transcriber.transcribe(p, options=window, vad=vad),
        "two models (GE2E)": lambda p: attribute(
            transcriber.transcribe(p, options=words).segments,
            diarize(ge2e, p, vad=vad).segments,
        ),
    }
    with tempfile.TemporaryDirectory() as folder:
        path, warm = Path(folder) / "talk.flac", Path(folder) / "warm.flac"
        conversation = write_conversation(path, bundled_clips(), minutes * 60)
        write_conversation(warm, bundled_clips(), min(8.0, minutes * 60))
        for way in ways.values():
            way(warm)  # first-call set-up, not timed
        runs: dict[str, list[float]] = {name: [] for name in ways}
        for _ in range(repeats):
            for name, way in ways.items():
                start = time.perf_counter()
                way(path)
                runs[name].append(time.perf_counter() - start)
                log(f"transcription cost: {name}: {runs[name][-1]:.1f} s")
    best = {name: min(seconds) for name, seconds in runs.items()}
    alone = best["words only"]
    return {
        "conversation": conversation,
        "model": "whisper-base + LAP/ASTP (untrained)",
        "runs_s": runs,
        "best_s": best,
        "x_real_time": {n: conversation["seconds"] / s for n, s in best.items()},
        "ratio_to_words_only": {n: s / alone for n, s in best.items()},
        "beam_size": beams,
        "goal": f"shared pass <= {COST_GOAL}x words only",
    }


def _options(
    embedding_pass: str = "window", *, speakers: bool = True, beams: int = 5
) -> TranscribeOptions:
    return TranscribeOptions(
        language="en",
        speakers=speakers,
        beam_size=beams,
        diarization=DiarizeOptions(embedding_pass=embedding_pass),
    )


def prompt_texts(tree: Path) -> dict[str, str]:
    """name -> text of every prompt whose text is speech (not ``[a tone]``, ``(silence)``)."""
    found = next(tree.rglob("core-sounds-en.txt.gz"))
    texts = {}
    with gzip.open(found, "rt", encoding="utf-8", errors="replace") as lines:
        for line in lines:
            name, colon, text = line.partition(":")
            text = text.strip()
            if colon and not line.startswith(";") and text and text[0] not in "[(":
                texts[name.strip()] = text
    return texts


def word_errors(hypothesis: str, reference: str) -> tuple[int, int]:
    """(edits, reference words) between two word sequences (Levenshtein on words)."""
    hyp, ref = hypothesis.split(), reference.split()
    row = list(range(len(hyp) + 1))
    for i, word in enumerate(ref, 1):
        previous, row[0] = row[0], i
        for j, other in enumerate(hyp, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (word != other))
    return row[-1], len(ref)


def words_item(cache: Path, limit: int | None, stride: int, log: Callable) -> dict[str, Any]:
    """lapsv transcribe vs transformers' pipeline on the English prompts (every
    ``stride``-th in name order, at most ``limit``)."""
    texts = prompt_texts(unpacked_package(PROMPTS[0], cache))
    voice = next(unpacked_package(PROMPTS[1], cache).rglob(VOICE))
    files = sorted(p for p in voice.rglob("*.wav") if _name(p, voice) in texts)
    files = files[::stride][:limit]
    library = import_transformers()
    folder = resolve_whisper_source("whisper-base")
    with quiet_transformers():
        pipeline = library.pipeline(
            "automatic-speech-recognition",
            model=folder,
            tokenizer=library.WhisperTokenizerFast.from_pretrained(folder),
            device="cpu",
        )
    transcriber, vad = Transcriber(whisper_model()), SileroVAD()
    normalize = library.models.whisper.english_normalizer.EnglishTextNormalizer({})
    rows, totals = [], {"lapsv": [0, 0], "transformers": [0, 0]}
    unreadable = []
    for number, path in enumerate(files, 1):
        try:
            wave = load_audio(path)
        except AudioError as error:  # a silent "prompt" (silence/1.wav): lapsv refuses it
            unreadable.append(f"{_name(path, voice)}: {error.reason}")
            continue
        try:
            ours = transcriber.transcribe(
                wave, sample_rate=16_000, options=_options(), vad=vad
            ).text
        except AudioError:
            ours = None  # no speech found by the VAD
        with quiet_transformers():
            plain = pipeline(
                wave.copy(),
                return_timestamps=True,
                generate_kwargs={"language": "en", "task": "transcribe"},
            )["text"]
        plain = " ".join(plain.split())
        reference = normalize(texts[_name(path, voice)])
        row = {"file": _name(path, voice), "lapsv": ours, "transformers": plain}
        for system, text in (("lapsv", ours or ""), ("transformers", plain)):
            errors, count = word_errors(normalize(text), reference)
            totals[system][0] += errors
            totals[system][1] += count
        rows.append(row)
        if number % 50 == 0:
            log(f"transcription words: {number} of {len(files)} prompts")
    same = sum(r["lapsv"] == r["transformers"] for r in rows)
    return {
        "voice": VOICE,
        "stride": stride,
        "refused_by_load_audio": unreadable,
        "prompts": len(rows),
        "identical_text": same,
        "identical_share": same / max(len(rows), 1),
        "no_speech_found": sum(r["lapsv"] is None for r in rows),
        "wer": {system: 100.0 * e / max(n, 1) for system, (e, n) in totals.items()},
        "different": [r for r in rows if r["lapsv"] != r["transformers"]],
    }


def _name(path: Path, voice: Path) -> str:
    return path.relative_to(voice).with_suffix("").as_posix()


def attribution_item(demo: Path, beams: int, log: Callable) -> dict[str, Any]:
    """Speaker error of the words on the demo's test conversations."""
    folder = demo / "conversations" / "test"
    references = read_rttm(folder / "all.rttm")
    whisper = lapsv.load_model(demo / "whisper-base" / "stage1" / "lap_astp" / "model")
    ge2e = lapsv.load_model(demo / "stage1" / "lap_astp" / "model")
    transcriber, vad = Transcriber(whisper), SileroVAD()
    systems: dict[str, dict] = {"shared pass": {}, "window pass": {}, "two models (GE2E LAP)": {}}
    seconds = {name: 0.0 for name in systems}
    audio = 0.0
    for number, file_id in enumerate(sorted(references), 1):
        path = folder / f"{file_id}.flac"
        start = time.perf_counter()
        shared = transcriber.transcribe(path, options=_options("shared", beams=beams), vad=vad)
        seconds["shared pass"] += time.perf_counter() - start
        systems["shared pass"][file_id] = shared
        for name, model in (("window pass", whisper), ("two models (GE2E LAP)", ge2e)):
            start = time.perf_counter()
            found = diarize(model, path, vad=vad, options=DiarizeOptions(embedding_pass="window"))
            segments = attribute(shared.segments, found.segments)  # the same words
            systems[name][file_id] = type(shared)(
                shared.file_id, shared.duration, shared.language, tuple(segments)
            )
            seconds[name] += time.perf_counter() - start
        audio += shared.duration
        log(f"transcription attribution: {number} of {len(references)} conversations")
    scores = {}
    for name, transcripts in systems.items():
        overall, per_file = speaker_error(transcripts, references)
        scores[name] = {
            **overall.to_json(),
            "recordings": {k: v.to_json() for k, v in per_file.items()},
            "run_s": seconds[name],
        }
    example = min(references, key=lambda k: systems["window pass"][k].duration)
    return {
        "beam_size": beams,
        "conversations": len(references),
        "audio_s": audio,
        "systems": scores,
        "example": systems["window pass"][example].to_json(),
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=ITEMS, default=None)
    parser.add_argument("--minutes", type=float, default=3.0, help="cost: conversation length")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--beam_size", type=int, default=5, help="cost, attribution: beams")
    parser.add_argument("--limit", type=int, help="words: at most this many prompts")
    parser.add_argument("--stride", type=int, default=1, help="words: every n-th prompt")
    parser.add_argument("--demo", type=Path, help="a `lapsv demo` output (attribution)")
    parser.add_argument("--cache", type=Path, help="Debian packages (default: DEMO/cache)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "transcription-cpu.json")
    parser.add_argument("--markdown", type=Path, default=MARKDOWN)
    args = parser.parse_args(argv)
    items = args.only or [i for i in ITEMS if i != "attribution" or args.demo]
    cache = args.cache or (args.demo / "cache" if args.demo else Path.home() / ".cache/lapsv")
    data: dict[str, Any] = json.loads(args.out.read_text()) if args.out.exists() else {}
    data.update(
        command=" ".join(["python -m benchmarks.transcription", *(argv or sys.argv[1:])]),
        machine=machine(torch.device("cpu")),
        **git_commit(),
        seed=SEED,
        threads=args.threads,
    )
    log = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
    started = time.perf_counter()
    with thread_count(args.threads):
        for item in items:
            if item == "cost":
                data["cost"] = cost_item(args.minutes, args.repeats, args.beam_size, log)
            elif item == "words":
                data["words"] = words_item(cache, args.limit, args.stride, log)
            else:
                data["attribution"] = attribution_item(args.demo, args.beam_size, log)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(args.out, json.dumps(data, indent=1, default=_plain) + "\n")
    data["machine"]["load_average_end"] = load_average()
    data["total_seconds"] = time.perf_counter() - started
    atomic_write_text(args.out, json.dumps(data, indent=1, default=_plain) + "\n")
    atomic_write_text(args.markdown, render(args.out.parent))
    return data


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else str(value)


if __name__ == "__main__":
    main()
