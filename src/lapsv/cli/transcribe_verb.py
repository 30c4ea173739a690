"""CLI verb ``lapsv transcribe``: who said what, with a Whisper-frontend lapsv model."""

from __future__ import annotations

import argparse
import contextlib

from lapsv.cli import options
from lapsv.cli.conversation_verbs import (
    add_diarization_options,
    add_speaker_options,
    diarize_options,
    distinct_stems,
    progress_bar,
)
from lapsv.cli.failures import report_failures
from lapsv.cli.options import audio_inputs, prepare_output
from lapsv.diarization import SileroVAD
from lapsv.errors import AudioError, ConfigError
from lapsv.speaker import load_model
from lapsv.speakers import SpeakerDB, printable_name
from lapsv.transcription import (
    FORMATS,
    TranscribeOptions,
    Transcriber,
    Transcript,
    parse_formats,
    write_transcript,
)


def add_transcribe_parser(verbs: argparse._SubParsersAction) -> None:
    parser = verbs.add_parser(
        "transcribe",
        help="who said what: transcripts with speakers (a Whisper-frontend model)",
    )
    parser.add_argument(
        "model", help="a lapsv model directory whose frontend is Whisper (whisper-base, ...)"
    )
    parser.add_argument("audio", nargs="+", help="audio files, folders (recursive) or wav.scp")
    parser.add_argument(
        "--out",
        type=options.output_folder,
        required=True,
        help="output folder: <stem>.json, .srt, .vtt, .txt per input",
    )
    parser.add_argument(
        "--format",
        type=_formats,
        default=FORMATS,
        help=f"comma-separated output formats out of {', '.join(FORMATS)} (default: all)",
    )
    parser.add_argument(
        "--language",
        default="auto",
        help="language code of the speech (en, fr, ...); auto: detected per recording",
    )
    options.flag(
        parser,
        "no_word_timestamps",
        action="store_true",
        help="attribute whole segments, without timing each word",
    )
    options.flag(
        parser,
        "beam_size",
        type=options.count(1),
        default=TranscribeOptions().beam_size,
        help="beams of the decoder's search (1: greedy, faster)",
    )
    options.flag(
        parser,
        "no_speakers",
        action="store_true",
        help="words only, as plain Whisper: no speech detection, no speakers",
    )
    add_speaker_options(parser, db_help="speaker database: speakers take its names")
    add_diarization_options(parser)
    options.flag(parser, "batch_size", type=options.count(1), default=32)
    options.add_device(parser)
    options.add_trust_pickle(parser)
    parser.set_defaults(func=cmd_transcribe)


def _formats(value: str) -> tuple[str, ...]:
    try:
        return parse_formats(value)
    except ConfigError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def cmd_transcribe(args: argparse.Namespace) -> int:
    settings = TranscribeOptions(
        language=args.language,  # "auto": detected
        word_timestamps=not args.no_word_timestamps,
        speakers=not args.no_speakers,
        beam_size=args.beam_size,
        diarization=diarize_options(args),  # exit 2 on impossible options, before any work
    )
    items = audio_inputs(args.audio)
    stems = distinct_stems(items, "an output file's name")
    model = load_model(args.model, device=args.device, trust_pickle=args.trust_pickle)
    transcriber = Transcriber(model)  # exit 2 for a model that cannot transcribe
    if settings.language is not None:
        transcriber.decoder.check_language(settings.language)  # exit 2 for an unknown one
    out = prepare_output(args.out, what="output folder", folder=True)
    vad = SileroVAD()
    failures: list[tuple[str, str]] = []
    with contextlib.nullcontext() if args.db is None else SpeakerDB(args.db) as db:
        for stem, (_, path) in zip(stems, items, strict=True):
            progress, close = progress_bar(path, stem, ("speech", "transcription"))
            try:
                transcript = transcriber.transcribe(
                    path,
                    file_id=stem,
                    options=settings,
                    speakers=db,
                    name_threshold=args.name_threshold,
                    vad=vad,
                    progress=progress,
                )
            except AudioError as error:
                failures.append((path, error.reason))
                continue
            finally:
                close()
            write_transcript(transcript, out, args.format)
            print(_summary(transcript))
    return report_failures(failures)


def _summary(transcript: Transcript) -> str:
    speakers = [transcript.names.get(s, s) for s in transcript.speakers]
    who = f"{len(speakers)} speaker(s) ({', '.join(map(printable_name, speakers))}), "
    words = sum(len(s.words) for s in transcript.segments)
    timed = f", {words} words" if words else ""
    return (
        f"{transcript.file_id}: {who if speakers else ''}language {transcript.language}, "
        f"{len(transcript.segments)} segments{timed} in {transcript.duration:.1f} s"
    )
