"""CLI verb of conversations: ``lapsv diarize``, who spoke when."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from lapsv.audio import audio_duration
from lapsv.cli import options
from lapsv.cli.failures import report_failures
from lapsv.cli.options import audio_inputs, prepare_output
from lapsv.diarization import (
    Diarization,
    DiarizeOptions,
    SileroVAD,
    VADOptions,
    diarize,
    read_references,
    score_diarization,
    write_rttm,
)
from lapsv.diarization.embedding import EMBEDDING_PASSES
from lapsv.diarization.pipeline import CENTRINGS, CLUSTERINGS
from lapsv.diarization.score import STANDARD_COLLARS
from lapsv.diarization.segments import Segment, speech_regions_of
from lapsv.errors import AudioError, ConfigError
from lapsv.files import atomic_write_text
from lapsv.speaker import load_model
from lapsv.speakers import SpeakerDB, printable_name

PROGRESS_SECONDS = 300.0  # recordings at least this long get a progress bar


def add_diarize_parser(verbs: argparse._SubParsersAction) -> None:
    diarize = verbs.add_parser(
        "diarize", help="who spoke when: speaker segments (RTTM) of conversations"
    )
    diarize.add_argument("model", help=options.MODEL_HELP)
    diarize.add_argument("audio", nargs="+", help="audio files, folders (recursive) or wav.scp")
    diarize.add_argument(
        "--out",
        type=options.output_folder,
        required=True,
        help="output folder: <stem>.rttm per input, all.rttm, segments.json",
    )
    add_speaker_options(
        diarize,
        db_help="speaker database: clusters take the "
        "names of the enrolled speakers they are identified as",
    )
    diarize.add_argument(
        "--reference",
        help="reference RTTM file, or a folder of <stem>.rttm: print DER and JER",
    )
    options.flag(
        diarize,
        "oracle_vad",
        action="store_true",
        help="use the reference's speech regions instead of the VAD's",
    )
    add_diarization_options(diarize)
    options.flag(diarize, "batch_size", type=options.count(1), default=32)
    options.add_device(diarize)
    options.add_trust_pickle(diarize)
    diarize.set_defaults(func=cmd_diarize)


def add_speaker_options(parser: argparse.ArgumentParser, *, db_help: str) -> None:
    """The speaker count, the speaker database and its naming threshold (diarize, transcribe)."""
    options.flag(
        parser, "num_speakers", type=options.count(1), help="the number of speakers, if known"
    )
    options.flag(parser, "min_speakers", type=options.count(1), default=1)
    options.flag(parser, "max_speakers", type=options.count(1), default=10)
    parser.add_argument("--db", type=options.speaker_database, help=db_help)
    options.flag(
        parser,
        "name_threshold",
        type=options.finite,
        help="identification threshold for names (default: LLR 0 if the model is calibrated)",
    )


def add_diarization_options(parser: argparse.ArgumentParser) -> None:
    """Clustering, windows and VAD options of ``lapsv diarize`` (defaults: DiarizeOptions)."""
    defaults = DiarizeOptions()
    parser.add_argument(
        "--clustering",
        choices=CLUSTERINGS,
        default=defaults.clustering,
        help="spectral (eigen-gap speaker count) or ahc (average linkage at --threshold, or at "
        "LLR 0 for a calibrated model)",
    )
    parser.add_argument(
        "--threshold", type=options.finite, help="ahc: the cosine at which clusters merge"
    )
    options.flag(
        parser,
        "centring",
        choices=CENTRINGS,
        default=defaults.centring,
        help="the mean taken from the embeddings before clustering: the recording's own "
        "(its windows) or the model's training mean",
    )
    options.flag(
        parser,
        "smoothing",
        type=options.count(0),
        default=defaults.smoothing,
        help="average each window's embedding with this many neighbours on each side (0: none)",
    )
    options.flag(
        parser,
        "resegment",
        action=argparse.BooleanOptionalAction,
        default=defaults.resegment,
        help="after clustering, re-assign the windows to the cluster means by Viterbi "
        "decoding (--no-resegment: keep the clustering's labels)",
    )
    options.flag(
        parser,
        "switch_penalty",
        type=options.at_least(0.0),
        default=defaults.switch_penalty,
        help="resegmentation's cost (in cosine) of a change of speaker between touching "
        "windows (0: each window's nearest cluster mean)",
    )
    options.flag(
        parser,
        "embedding_pass",
        choices=EMBEDDING_PASSES,
        default=defaults.embedding_pass,
        help="window: each window alone; shared: one frontend pass per 30 s (lapsv models)",
    )
    options.flag(
        parser,
        "long_windows",
        type=options.at_least(0.0),
        nargs="*",
        default=list(defaults.long_windows),
        help="longer windows (seconds) embedded as well, whose cosines are averaged with the "
        "windows' own before clustering (multi-scale); none: one scale",
    )
    for name, help_ in (
        ("window", "embedding window (seconds)"),
        ("hop", "step between windows (seconds)"),
        (
            "window_bridge",
            "windows span speech pauses shorter than this (seconds); segments are cut "
            "back to the speech",
        ),
        ("min_segment", "shorter segments are dropped (seconds)"),
    ):
        options.flag(
            parser, name, type=options.at_least(0.0), default=getattr(defaults, name), help=help_
        )
    _add_vad_options(parser, defaults.vad)


def _add_vad_options(parser: argparse.ArgumentParser, vad: VADOptions) -> None:
    """Silero VAD flags of ``lapsv diarize`` (and ``lapsv transcribe``)."""
    options.flag(
        parser,
        "vad_threshold",
        type=options.finite,
        default=vad.threshold,
        help="Silero VAD speech probability threshold",
    )
    for name in ("min_speech", "min_silence", "speech_pad"):
        options.flag(
            parser,
            name,
            type=options.at_least(0.0),
            default=getattr(vad, name),
            help=f"VAD {name.replace('_', ' ')} (seconds)",
        )
    for name, default, help_ in (
        (
            "energy_gate",
            vad.energy_gate or 0.0,
            "frames this many dB quieter than the recording's loud speech are not speech "
            "(background voices, noise); 0: no gate",
        ),
        (
            "floor_gate",
            vad.floor_gate,
            "frames below this share of the way, in dB, from the recording's background "
            "level up to its loud speech are not speech (babble, other voices); 0: no gate",
        ),
        (
            "vad_max_gain",
            vad.max_gain,
            "amplify a quiet recording by up to this many dB, so that its loud frames reach "
            "full scale, before the VAD (Silero misses quiet speech); 0: as recorded",
        ),
    ):
        options.flag(parser, name, type=options.at_least(0.0), default=default, help=help_)


def diarize_options(args: argparse.Namespace) -> DiarizeOptions:
    """The library options named by the flags (ConfigError for impossible ones)."""
    vad = VADOptions(
        threshold=args.vad_threshold,
        min_speech=args.min_speech,
        min_silence=args.min_silence,
        speech_pad=args.speech_pad,
        energy_gate=args.energy_gate or None,
        floor_gate=args.floor_gate,
        max_gain=args.vad_max_gain,
    )
    return DiarizeOptions(
        num_speakers=args.num_speakers,
        min_speakers=args.min_speakers,
        max_speakers=args.max_speakers,
        clustering=args.clustering,
        threshold=args.threshold,
        centring=args.centring,
        smoothing=args.smoothing,
        resegment=args.resegment,
        switch_penalty=args.switch_penalty,
        window=args.window,
        long_windows=tuple(args.long_windows),
        window_bridge=args.window_bridge,
        hop=args.hop,
        min_segment=args.min_segment,
        embedding_pass=args.embedding_pass,
        batch_size=args.batch_size,
        vad=vad,
    )


def cmd_diarize(args: argparse.Namespace) -> int:
    options = diarize_options(args)  # before any work: exit 2 on impossible options
    items = audio_inputs(args.audio)
    stems = distinct_stems(items, "an RTTM file id")
    if args.oracle_vad and args.reference is None:
        raise ConfigError("--oracle_vad takes the speech regions of --reference: give both")
    references = None if args.reference is None else read_references(args.reference, stems)
    out = prepare_output(args.out, what="output folder", folder=True)
    model = load_model(args.model, device=args.device, trust_pickle=args.trust_pickle)
    vad = None if args.oracle_vad else SileroVAD()
    results: dict[str, Diarization] = {}
    failures: list[tuple[str, str]] = []
    with contextlib.nullcontext() if args.db is None else SpeakerDB(args.db) as db:
        for stem, (_, path) in zip(stems, items, strict=True):
            speech = None
            if args.oracle_vad:
                speech = speech_regions_of(references.get(stem, []))
            try:
                result = _diarize_one(model, path, stem, options, db, args, vad, speech)
            except AudioError as error:
                failures.append((path, error.reason))
                continue
            write_rttm(out / f"{stem}.rttm", {stem: result.segments})  # kept if a later one fails
            results[stem] = result
            print(_summary(result))
    _write_outputs(out, results)
    if references is not None and results:
        _print_scores(out, references, results)
    return report_failures(failures)


def distinct_stems(items: list[tuple[str, str]], what: str) -> list[str]:
    """The file stem of each (id, path) input; ConfigError when two share one."""
    stems = [Path(path).stem for _, path in items]
    repeated = [stem for stem, n in Counter(stems).items() if n > 1]
    if repeated:
        raise ConfigError(
            f"two inputs are named {repeated[0]!r}: {what} is the file's stem, so give files "
            "with distinct names"
        )
    return stems


def progress_bar(path: str, stem: str, stages: tuple[str, ...]):
    """A progress callback (stage, seconds done) over ``stages`` passes of a long file
    (none for a short or unreadable one), and a function that closes its bar."""
    try:
        seconds = audio_duration(path)
    except AudioError:
        seconds = 0.0  # the pipeline names the problem
    bar = None
    if seconds >= PROGRESS_SECONDS:
        bar = tqdm(total=round(len(stages) * seconds), unit="s", desc=stem, leave=False)
    done = dict.fromkeys(stages, 0.0)

    def progress(stage: str, at: float) -> None:
        done[stage] = at
        if bar is not None:
            bar.update(round(sum(done.values())) - bar.n)

    return progress, (bar.close if bar is not None else lambda: None)


def _diarize_one(model, path, stem, options, db, args, vad, speech) -> Diarization:
    progress, close = progress_bar(path, stem, ("speech", "embeddings"))
    try:
        return diarize(
            model,
            path,
            file_id=stem,
            options=options,
            speakers=db,
            name_threshold=args.name_threshold,
            vad=vad,
            speech=speech,
            progress=progress,
        )
    finally:
        close()


def _summary(result: Diarization) -> str:
    names = f" ({', '.join(map(printable_name, result.speakers))})" if result.names else ""
    return (
        f"{result.file_id}: {len(result.speakers)} speaker(s){names}, "
        f"{result.speech_seconds:.1f} s of speech in {result.duration:.1f} s, "
        f"{len(result.segments)} segments"
    )


def _write_outputs(out: Path, results: dict[str, Diarization]) -> None:
    write_rttm(out / "all.rttm", {stem: r.segments for stem, r in results.items()})
    payload = {"recordings": [r.to_json() for r in results.values()]}
    atomic_write_text(out / "segments.json", json.dumps(payload, indent=1) + "\n")


def _print_scores(
    out: Path, references: dict[str, list[Segment]], results: dict[str, Diarization]
) -> None:
    """DER / JER at the standard collars, per recording and overall (scores.json too)."""
    hypothesis = {stem: list(r.segments) for stem, r in results.items()}
    durations = {stem: r.duration for stem, r in results.items()}
    scored = {stem: segs for stem, segs in references.items() if stem in results}
    missing = sorted(set(results) - set(references))
    if missing:
        print(f"not in the reference (not scored): {', '.join(missing)}", file=sys.stderr)
    report = {}
    for collar in STANDARD_COLLARS:
        overall, per_file = score_diarization(
            scored, hypothesis, collar=collar, durations=durations
        )
        report[f"collar {collar:g}"] = {
            "overall": overall.to_json(),
            "recordings": {stem: s.to_json() for stem, s in per_file.items()},
        }
        if len(per_file) > 1:
            for stem, score in per_file.items():
                width = f"±{collar / 2:g} s"
                print(f"  {stem}: DER {score.der:.2f} %  JER {score.jer:.2f} %  (collar {width})")
        parts = overall.to_json()
        print(
            f"DER {overall.der:.2f} % (missed {parts['missed %']:.2f}, false alarm "
            f"{parts['false alarm %']:.2f}, confusion {parts['confusion %']:.2f})  "
            f"JER {overall.jer:.2f} %  [collar ±{collar / 2:g} s, overlap scored, "
            f"{len(per_file)} recording(s)]"
        )
    atomic_write_text(out / "scores.json", json.dumps(report, indent=1) + "\n")
