"""CLI verbs of the speaker database: enroll, identify, speakers (list / delete / import).

A new speaker name is checked by the rule of every entry point
(:func:`~lapsv.speakers.check_speaker_name`) before any work; every name printed goes
through :func:`~lapsv.speakers.printable_name`, so a name stored by an older version
cannot send control characters to the terminal."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lapsv.audio import AUDIO_SUFFIXES
from lapsv.cli.failures import report_failures
from lapsv.cli.options import audio_inputs, prepare_output
from lapsv.embeddings import EmbeddingSet
from lapsv.identification import (
    Identification,
    enroll_files,
    identify_files,
    identify_stored,
    import_embeddings,
)
from lapsv.scoring.trials import read_enrollment_map
from lapsv.speaker import load_model
from lapsv.speakers import SpeakerDB, SpeakerNameError, check_speaker_name, printable_name


def _audio_paths(inputs: list[str]) -> list[str]:
    return [path for _, path in audio_inputs(inputs)]


def cmd_enroll(args: argparse.Namespace) -> int:
    if Path(args.name).suffix.lower() in AUDIO_SUFFIXES and Path(args.name).is_file():
        print(
            f"error: {printable_name(args.name)} is an audio file; the speaker's NAME comes "
            "first: lapsv enroll MODEL --db SPEAKERS.db NAME AUDIO...",
            file=sys.stderr,
        )
        return 2
    name = check_speaker_name(args.name)  # exit 2 before any work
    paths = _audio_paths(args.audio)
    prepare_output(args.db, what="speaker database")  # before any work
    model = load_model(args.model, device=args.device, trust_pickle=args.trust_pickle)
    with SpeakerDB(args.db, create=True) as db:
        result, failures = enroll_files(
            db,
            model,
            name,
            paths,
            model_name=str(args.model),
            replace=args.replace,
            batch_size=args.batch_size,
            max_seconds=args.max_seconds,
            progress=len(paths) >= 20,
        )
    if result is None:
        print(
            f"error: no recording of {name} could be embedded: nothing enrolled",
            file=sys.stderr,
        )
        report_failures(failures)
        return 2
    what = "enrolled new speaker" if result.new_speaker else "updated speaker"
    removed = f", {result.removed} removed" if args.replace else ""
    print(
        f"{what} {printable_name(result.name)}: {result.added} recording(s) added, "
        f"{result.updated} updated{removed}; {result.total} in total ({result.seconds:.1f} s) "
        f"in {args.db} [model {model.model_id}]"
    )
    return report_failures(failures)


def _format_candidate(rank: int, candidate, score_name: str) -> str:
    parts = [
        f"{rank:>4}. {printable_name(candidate.name):<24} {score_name} {candidate.score:+8.3f}"
    ]
    if score_name != "cosine":
        parts.append(f"cosine {candidate.cosine:+.3f}")
    if candidate.asnorm is not None and score_name != "AS-norm":
        parts.append(f"AS-norm {candidate.asnorm:+.3f}")
    return "   ".join(parts)


def cmd_identify(args: argparse.Namespace) -> int:
    stored = [path for path in args.audio if Path(path).suffix.lower() == ".npz"]
    if stored and len(args.audio) > 1:
        print(
            f"error: {stored[0]} is an embeddings file: give one embeddings file (lapsv embed's "
            ".npz) or audio, not both: lapsv identify MODEL --db SPEAKERS.db AUDIO...",
            file=sys.stderr,
        )
        return 2
    answers, failures = _identify(args, stored[0] if stored else None)
    for answer in answers:
        print(f"{answer.source} -> {_verdict(answer)}")
        for rank, candidate in enumerate(answer.candidates, start=1):
            print(_format_candidate(rank, candidate, answer.score_name))
    if answers and answers[0].answer is None:
        print(
            f"no threshold: scores are {answers[0].score_name}s, so pass --threshold (say the "
            "EER threshold `lapsv eval` finds on your data) to answer 'unknown' below it, or "
            "calibrate the model (`lapsv eval MODEL ... --cohort TRAIN.tsv --calibrate qmf "
            "--save-scoring`) "
            "to decide at LLR 0"
        )
    return report_failures(failures)


def _identify(
    args: argparse.Namespace, embeddings_file: str | None
) -> tuple[list[Identification], list[tuple[str, str]]]:
    """The answers and failures of ``lapsv identify``: of the audio files, or of each row
    of ``embeddings_file`` (read, like the audio list, before the model loads)."""
    stored = None if embeddings_file is None else EmbeddingSet.load(embeddings_file)
    paths = [] if stored is not None else _audio_paths(args.audio)
    model = load_model(args.model, device=args.device, trust_pickle=args.trust_pickle)
    decision = {"top_k": args.top_k, "threshold": args.threshold, "model_name": str(args.model)}
    with SpeakerDB(args.db) as db:
        if stored is not None:
            return identify_stored(db, model, *stored, **decision), []
        return identify_files(
            db,
            model,
            paths,
            **decision,
            batch_size=args.batch_size,
            max_seconds=args.max_seconds,
            progress=len(paths) >= 20,
        )


def _verdict(answer: Identification) -> str:
    if not answer.candidates:  # every speaker was deleted while the search ran
        return "unknown (no speaker enrolled)"
    best = printable_name(answer.candidates[0].name)
    if answer.answer is None:
        return f"best match {best} (no threshold: no decision)"
    known = answer.answer != "unknown"
    score = answer.candidates[0].score
    return (
        f"{printable_name(answer.answer)} ({'' if known else f'best {best}: '}"
        f"{answer.score_name} {score:+.3f} {'>=' if known else '<'} threshold "
        f"{answer.threshold:+.3f}, {answer.threshold_source})"
    )


def cmd_speakers(args: argparse.Namespace) -> int:
    if not args.db:
        print("error: give the database: lapsv speakers --db SPEAKERS.db ACTION", file=sys.stderr)
        return 2
    if args.speakers_verb == "import":
        return _import_speakers(args)
    with SpeakerDB(args.db) as db:
        if args.speakers_verb == "delete":
            unknown = [printable_name(n) for n in args.names if db.speaker_id(n) is None]
            if unknown:
                print(f"error: {args.db} has no speaker {', '.join(unknown)}", file=sys.stderr)
                return 2
            for name in dict.fromkeys(args.names):
                count = db.delete(name)
                print(f"deleted {printable_name(name)} ({count} recording(s)) from {args.db}")
            return 0
        speakers = db.speakers()
        meta = db.meta()
        model = meta.get("model_id", "none yet")
        if meta.get("model_name"):
            model += f" ({meta['model_name']})"
        print(f"{args.db}: {len(speakers)} speaker(s); model {model}")
        if speakers:
            print(f"  {'name':<24} {'recordings':>10} {'seconds':>9}  updated (UTC)")
        for speaker in speakers:
            print(
                f"  {printable_name(speaker.name):<24} {speaker.utterances:>10} "
                f"{speaker.seconds:>9.1f}  {speaker.updated}"
            )
            if args.utterances:
                for utterance in sorted(db.utterances(speaker.name), key=lambda u: u.source):
                    print(f"      {utterance.seconds:6.1f} s  {utterance.source}")
    return 0


def _import_speakers(args: argparse.Namespace) -> int:
    embeddings, model_id = EmbeddingSet.load(args.embeddings)
    speakers = None if args.spk2utt is None else read_enrollment_map(args.spk2utt)
    model = None
    if args.model is not None:
        model = load_model(args.model, trust_pickle=args.trust_pickle)
    if Path(args.db).is_file():  # embeddings of another model: the first thing to fix
        with SpeakerDB(args.db) as db:
            db.check_model(model_id)
    _check_import_names(args, embeddings.ids if speakers is None else list(speakers))
    prepare_output(args.db, what="speaker database")
    with SpeakerDB(args.db, create=True) as db:
        new, updated = import_embeddings(
            db,
            embeddings,
            model_id,
            speakers=speakers,
            model=model,
            model_name=str(args.model or args.embeddings),
        )
        total = db.count()
    print(
        f"imported {new + updated} speaker(s) from {args.embeddings} into {args.db}: {new} new, "
        f"{updated} updated; {total} in total [model {model_id}]"
    )
    return 0


def _check_import_names(args: argparse.Namespace, names: list[str]) -> None:
    """Refuse the whole import, before anything is written, at its first speaker name the
    rule refuses: the ``--spk2utt`` line naming it, or the embedding id taken as a name."""
    fix = (
        "without --spk2utt each embedding is a speaker named by its id: name the speakers "
        "with --spk2utt (lines 'NAME utt1 utt2 ...')"
    )
    for name in names:
        if args.spk2utt is None:
            check_speaker_name(name, where=f"{args.embeddings}: ", fix=fix)
            continue
        try:
            check_speaker_name(name)
        except SpeakerNameError:
            lines = Path(args.spk2utt).read_text(errors="replace").splitlines()
            number = next((i for i, line in enumerate(lines, 1) if line.split()[:1] == [name]), "?")
            check_speaker_name(name, where=f"{args.spk2utt}:{number}: ")
