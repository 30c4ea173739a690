"""Command-line interface. The only module that prints or exits; verbs call the library.

Flag names equal the library's parameter names.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from lapsv import __version__
from lapsv.audio import AUDIO_SUFFIXES
from lapsv.errors import LapsvError
from lapsv.files import check_writable_file, check_writable_folder


def expand_audio_inputs(inputs: Iterable[str]) -> list[tuple[str, str]]:
    """(utterance id, path) pairs from files, folders (recursive) and Kaldi ``wav.scp`` files.

    A folder contributes every audio file under it, its id the path relative to the folder's
    parent; a ``.scp`` file contributes ``<id> <path>`` lines; any other path is one file.
    """
    items: list[tuple[str, str]] = []
    for raw in inputs:
        path = Path(raw)
        if path.is_dir():
            for file in sorted(p for p in path.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES):
                items.append((str(file.relative_to(path.parent)), str(file)))
        elif path.suffix == ".scp" and path.is_file():
            for line in path.read_text().splitlines():
                if line.strip():
                    utt, _, location = line.strip().partition(" ")
                    items.append((utt, location.strip()))
        else:
            items.append((raw, raw))
    return items


def cmd_embed(args: argparse.Namespace) -> int:
    from lapsv.inference import extract_embeddings
    from lapsv.loading import load_model

    check_writable_file(args.out, what="embeddings file")  # before any work
    model = load_model(args.model, device=args.device, trust_pickle=args.trust_pickle)
    items = expand_audio_inputs(args.audio)
    if not items:
        print("error: no audio files found in the given inputs", file=sys.stderr)
        return 2
    result = extract_embeddings(
        model,
        items,
        batch_size=args.batch_size,
        device=args.device,
        progress=len(items) >= 20,
        max_seconds=args.max_seconds,
    )
    out = Path(args.out)
    result.save(out, model_id=str(args.model))
    print(
        f"embedded {len(result.ids)} of {len(items)} files ({result.seconds.sum():.1f} s of "
        f"audio) with {args.model}: {model.embed_dim}-d embeddings -> {out}"
    )
    for utt, vector in zip(result.ids[: args.show], result.embeddings[: args.show], strict=False):
        preview = " ".join(f"{v:+.3f}" for v in vector[:6])
        print(f"  {utt}  |e|={np.linalg.norm(vector):.3f}  [{preview} ...]")
    return _report_failures(result.failures)


def cmd_eval(args: argparse.Namespace) -> int:
    from lapsv.evaluate import evaluate, format_metrics

    check_writable_folder(args.out, what="results folder")  # before any work
    result = evaluate(
        args.model,
        args.trials,
        args.audio_root,
        out=args.out,
        cohort=args.cohort,
        norm=args.norm,
        calibrate=args.calibrate,
        top_n=args.top_n,
        batch_size=args.batch_size,
        device=args.device,
        progress=True,
        trust_pickle=args.trust_pickle,
    )
    reuse = (
        "reused cached embeddings"
        if result.newly_embedded == 0
        else (f"embedded {result.newly_embedded} utterances")
    )
    print(f"{len(result.trials)} trials, {reuse}; results in {result.out_dir}")
    if result.skipped_trials:
        print(f"skipped {result.skipped_trials} trials whose audio could not be embedded")
    if "eer" in result.metrics:
        model_path = Path(str(args.model))
        name = model_path.parent.name if model_path.name == "model" else model_path.name
        label = f"{name} ({args.norm}" + (", qmf)" if args.calibrate == "qmf" else ")")
        print(format_metrics({label: result.metrics}))
    for kind, path in result.files.items():
        print(f"  {kind}: {path}")
    return _report_failures(result.failures)


def cmd_score(args: argparse.Namespace) -> int:
    import json

    from lapsv.scoring.metrics import compute_metrics

    if args.out:
        check_writable_file(args.out, what="score file")  # before any work
    if args.scores:
        from lapsv.scoring.trials import read_scores

        trials, scores = read_scores(args.scores)
    else:
        if not (args.embeddings and args.trials):
            print(
                "error: give --scores FILE, or --embeddings FILE.npz --trials FILE", file=sys.stderr
            )
            return 2
        trials, scores = _score_embeddings(args)
    if trials.labels is None:
        print("error: the trials carry no labels: nothing to measure", file=sys.stderr)
        return 2
    metrics = compute_metrics(scores, trials.labels, calibrated=args.calibrated)
    print(json.dumps(metrics, indent=1))
    return 0


def _score_embeddings(args: argparse.Namespace):
    from lapsv.inference import EmbeddingSet
    from lapsv.scoring.norm import cosine_scores, embedding_mean, embedding_table, enroll_models
    from lapsv.scoring.trials import read_enrollment_map, read_trials, write_scores

    embeddings, _ = EmbeddingSet.load(args.embeddings)
    trials = read_trials(args.trials)
    enroll_ids, enroll_vectors = list(embeddings.ids), embeddings.embeddings
    if args.enroll:
        enroll_ids, enroll_vectors = enroll_models(
            embeddings.ids, embeddings.embeddings, read_enrollment_map(args.enroll)
        )
    mean = None
    if args.mean_from:
        mean = embedding_mean(EmbeddingSet.load(args.mean_from)[0].embeddings)
    pairs_e = embedding_table(enroll_ids, enroll_vectors).rows(trials.enroll)
    pairs_t = embedding_table(embeddings.ids, embeddings.embeddings).rows(trials.test)
    scores = cosine_scores(enroll_vectors, embeddings.embeddings, pairs_e, pairs_t, mean=mean)
    if args.out:
        write_scores(args.out, trials, scores)
    return trials, scores


def cmd_info(args: argparse.Namespace) -> int:
    import torch

    from lapsv.config import dump_yaml, to_dict
    from lapsv.loading import load_model
    from lapsv.model import SpeakerModel

    model = load_model(args.model, trust_pickle=args.trust_pickle)
    if not isinstance(model, torch.nn.Module):  # an exported file
        print(f"model: {args.model} ({model.kind}, exported by lapsv from {model.source})")
        print(f"embedding size: {model.embed_dim}   sample rate: {model.sample_rate} Hz")
        print(f"model id: {model.model_id}   calibrated: {model.scoring.calibrated}")
        return 0
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {args.model}")
    print(f"embedding size: {model.embed_dim}   sample rate: {model.sample_rate} Hz")
    print(f"parameters: {n_params:,}")
    if isinstance(model, SpeakerModel):
        backend_params = sum(p.numel() for p in model.backend.parameters())
        print(f"backend parameters: {backend_params:,}")
        print(dump_yaml(to_dict(model.config)), end="")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from lapsv.training import load_recipe, train

    overrides = [*(args.set or []), *(["data.drop_invalid=true"] if args.drop_invalid else [])]
    config = load_recipe(args.recipe, overrides)
    out = Path(args.out) if args.out else Path("runs") / Path(args.recipe).stem
    outputs = train(config, out, progress=not args.quiet, trust_pickle=args.trust_pickle)
    for name, path in outputs.items():
        print(f"{name}: final model -> {path}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from lapsv.verification import Verifier

    verifier = Verifier(args.model, device=args.device, trust_pickle=args.trust_pickle)
    result = verifier.verify_files(
        args.a, args.b, threshold=args.threshold, max_seconds=args.max_seconds
    )
    kind = "cosine (mean-subtracted)" if verifier.mean is not None else "cosine"
    print(f"{kind}: {result.cosine:.4f}")
    if result.asnorm is not None:
        print(f"AS-norm: {result.asnorm:.4f}")
    if result.llr is not None:
        print(f"calibrated LLR: {result.llr:+.3f}")
    if result.same is None:
        print(
            "decision: none (no threshold: pass --threshold, or calibrate the model with "
            "`lapsv eval MODEL ... --cohort TRAIN.tsv --calibrate qmf`)"
        )
        return 0
    verdict = "SAME speaker" if result.same else "DIFFERENT speakers"
    print(
        f"decision: {verdict} (score {result.decision_score:+.4f} vs threshold "
        f"{result.threshold:+.4f} from {result.threshold_source})"
    )
    return 0


def _audio_paths(inputs: Iterable[str]) -> list[str]:
    return [path for _, path in expand_audio_inputs(inputs)]


def cmd_enroll(args: argparse.Namespace) -> int:
    from lapsv.loading import load_model
    from lapsv.speakerdb import SpeakerDB, enroll_files

    if Path(args.name).suffix.lower() in AUDIO_SUFFIXES and Path(args.name).is_file():
        print(
            f"error: {args.name} is an audio file; the speaker's NAME comes first: "
            "lapsv enroll MODEL --db SPEAKERS.db NAME AUDIO...",
            file=sys.stderr,
        )
        return 2
    paths = _audio_paths(args.audio)
    if not paths:
        print("error: no audio files found in the given inputs", file=sys.stderr)
        return 2
    model = load_model(args.model, device=args.device, trust_pickle=args.trust_pickle)
    with SpeakerDB(args.db, create=True) as db:
        result, failures = enroll_files(
            db,
            model,
            args.name,
            paths,
            model_name=str(args.model),
            replace=args.replace,
            batch_size=args.batch_size,
            max_seconds=args.max_seconds,
            progress=len(paths) >= 20,
        )
    if result is None:
        print(
            f"error: no recording of {args.name} could be embedded: nothing enrolled",
            file=sys.stderr,
        )
        _report_failures(failures)
        return 2
    what = "enrolled new speaker" if result.new_speaker else "updated speaker"
    removed = f", {result.removed} removed" if args.replace else ""
    print(
        f"{what} {result.name}: {result.added} recording(s) added, {result.updated} "
        f"updated{removed}; {result.total} in total ({result.seconds:.1f} s) in {args.db} "
        f"[model {model.model_id}]"
    )
    return _report_failures(failures)


def _format_candidate(rank: int, candidate, score_name: str) -> str:
    parts = [f"{rank:>4}. {candidate.name:<24} {score_name} {candidate.score:+8.3f}"]
    if score_name != "cosine":
        parts.append(f"cosine {candidate.cosine:+.3f}")
    if candidate.asnorm is not None and score_name != "AS-norm":
        parts.append(f"AS-norm {candidate.asnorm:+.3f}")
    return "   ".join(parts)


def cmd_identify(args: argparse.Namespace) -> int:
    from lapsv.loading import load_model
    from lapsv.speakerdb import SpeakerDB, identify_files

    paths = _audio_paths(args.audio)
    if not paths:
        print("error: no audio files found in the given inputs", file=sys.stderr)
        return 2
    model = load_model(args.model, device=args.device, trust_pickle=args.trust_pickle)
    with SpeakerDB(args.db) as db:
        answers, failures = identify_files(
            db,
            model,
            paths,
            top_k=args.top_k,
            threshold=args.threshold,
            model_name=str(args.model),
            batch_size=args.batch_size,
            max_seconds=args.max_seconds,
            progress=len(paths) >= 20,
        )
    for answer in answers:
        best = answer.candidates[0]
        if answer.answer is None:
            verdict = f"best match {best.name} (no threshold: no decision)"
        else:
            known = answer.answer != "unknown"
            verdict = (
                f"{answer.answer} ({'' if known else f'best {best.name}: '}"
                f"{answer.score_name} {best.score:+.3f} {'>=' if known else '<'} threshold "
                f"{answer.threshold:+.3f}, {answer.threshold_source})"
            )
        print(f"{answer.source} -> {verdict}")
        for rank, candidate in enumerate(answer.candidates, start=1):
            print(_format_candidate(rank, candidate, answer.score_name))
    if answers and answers[0].answer is None:
        print(
            f"no threshold: scores are {answers[0].score_name}s, so pass --threshold (say the "
            "EER threshold `lapsv eval` finds on your data) to answer 'unknown' below it, or "
            "calibrate the model (`lapsv eval MODEL ... --cohort TRAIN.tsv --calibrate qmf`) "
            "to decide at LLR 0"
        )
    return _report_failures(failures)


def cmd_speakers(args: argparse.Namespace) -> int:
    from lapsv.speakerdb import SpeakerDB

    if not args.db:
        print("error: give the database: lapsv speakers --db SPEAKERS.db ACTION", file=sys.stderr)
        return 2
    with SpeakerDB(args.db) as db:
        if args.speakers_verb == "delete":
            unknown = sorted(set(args.names) - {s.name for s in db.speakers()})
            if unknown:
                print(f"error: {args.db} has no speaker {', '.join(unknown)}", file=sys.stderr)
                return 2
            for name in args.names:
                count = db.delete(name)
                print(f"deleted {name} ({count} recording(s)) from {args.db}")
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
                f"  {speaker.name:<24} {speaker.utterances:>10} {speaker.seconds:>9.1f}  "
                f"{speaker.updated}"
            )
            if args.utterances:
                for utterance in sorted(db.utterances(speaker.name), key=lambda u: u.source):
                    print(f"      {utterance.seconds:6.1f} s  {utterance.source}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from lapsv.export import export_model
    from lapsv.loading import load_model

    model = load_model(args.model, trust_pickle=args.trust_pickle)
    result = export_model(model, args.out, format=args.format, source=str(args.model))
    size = result.path.stat().st_size / 1e6
    print(
        f"exported {args.model} -> {result.path} ({args.format}, {size:.1f} MB): waveforms "
        f"(batch, samples) float32 at {model.sample_rate} Hz + lengths (batch,) int64 -> "
        f"embeddings (batch, {model.embed_dim})"
    )
    checks = "  ".join(
        f"{'batch of all' if seconds == 0 else f'{seconds:g} s'}: {diff:.1e}"
        for seconds, diff in result.max_abs_diff.items()
    )
    print(f"max |exported - PyTorch| embedding difference: {checks}")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from lapsv.audio import load_audio
    from lapsv.inspection import dominant_layers, layer_view, plot_layer_weights, winner_statistics
    from lapsv.loading import load_model
    from lapsv.model import SpeakerModel

    if args.plot:
        check_writable_file(args.plot, what="plot file")  # before any work
    model = load_model(args.model, trust_pickle=args.trust_pickle)
    if not isinstance(model, SpeakerModel):
        print(f"error: {args.model} has no layer aggregation to inspect", file=sys.stderr)
        return 2
    view = layer_view(model, load_audio(args.audio, sample_rate=model.sample_rate))
    weights = view.weights
    heads, frames, layers = weights.shape
    aggregation = model.config.backend.aggregation
    print(f"{aggregation} layer weights: {heads} head(s) x {frames} frames x {layers} layers")
    for layer, score in dominant_layers([weights], top=min(3, layers)):
        print(f"  layer {layer:2d}: mean weight {score:.3f}")
    if view.winners is not None:
        stats = winner_statistics([view.winners], n_layers=layers)
        shares = " ".join(f"{100 * share:.0f}%" for share in stats["share_per_layer"])
        print(f"max over layers: cells won per layer {shares}")
        print(
            f"  one layer wins >90% of frames on {stats['dominated_channels']} of "
            f"{stats['channels']} channels; a channel's winner changes on "
            f"{100 * stats['switch_rate']:.0f}% of consecutive frames"
        )
    if args.plot:
        plot_layer_weights(
            weights,
            args.plot,
            title=f"{aggregation} layer weights",
            frames_per_second=view.frames_per_second,
        )
        print(f"plot -> {args.plot}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from lapsv.demo import SIDES, run_demo

    check_writable_folder(args.out, what="demo output folder")  # before any work
    frontends = SIDES if args.frontend == "all" else (args.frontend,)
    result = run_demo(
        args.out,
        frontends=tuple(frontends),
        budget_minutes=args.budget_minutes,
        seeds=args.seeds,
        overrides=args.set or [],
    )
    print(f"done in {result.seconds / 60:.1f} min; open {result.report}")
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    if args.data_verb == "validate":
        from lapsv.data.validate import validate_manifest

        report = validate_manifest(
            args.manifest,
            crop_seconds=args.crop_seconds,
            min_utterances=args.min_utterances,
            sample_rate=args.sample_rate or None,
        )
        print(report.format())
        return 0 if report.ok else 1
    if args.data_verb == "demo-corpus":
        from lapsv.data.demo_corpus import build_demo_corpus

        summary = build_demo_corpus(Path(args.out), cache=Path(args.cache) if args.cache else None)
        print(summary.format_table())
    elif args.data_verb == "demo-noise":
        from lapsv.data.demo_noise import build_demo_noise

        speech = Path(args.speech_manifest) if args.speech_manifest else None
        cache = Path(args.cache) if args.cache else None
        info = build_demo_noise(Path(args.out), speech_manifest=speech, cache=cache)
        for name, value in info.items():
            print(f"{name}: {value}")
    else:
        from lapsv.data.prepare import prepare_corpus

        summary = prepare_corpus(
            Path(args.source),
            Path(args.out),
            layout=args.data_verb.removeprefix("prepare-"),
            val_speakers=args.val_speakers,
            seed=args.seed,
        )
        print(summary)
    return 0


def _report_failures(failures: Sequence[tuple[str, str]]) -> int:
    if not failures:
        return 0
    print(f"{len(failures)} file(s) failed:", file=sys.stderr)
    for path, reason in failures:
        print(f"  {path}: {reason}", file=sys.stderr)
    return 1


def _option(parser: argparse.ArgumentParser, name: str, **kwargs) -> None:
    """Add ``--name`` (the library parameter's name) and its ``--dashed-spelling``."""
    spellings = [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])
    parser.add_argument(*spellings, dest=name, **kwargs)


MODEL_HELP = "model directory, hub id, built-in name (ge2e), or a file from `lapsv export`"


def _max_seconds_option(parser: argparse.ArgumentParser) -> None:
    _option(
        parser,
        "max_seconds",
        type=float,
        default=60.0,
        help="longer recordings are embedded in windows of at most this many seconds, "
        "averaged (bounded memory)",
    )


def _trust_pickle_option(parser: argparse.ArgumentParser) -> None:
    _option(
        parser,
        "trust_pickle",
        action="store_true",
        help="allow pickle weights (.pt/.bin/.ckpt); unpickling runs any code a file "
        "carries, so only for files you trust",
    )


def _embedding_options(parser: argparse.ArgumentParser) -> None:
    """Options of the verbs that embed audio files with a MODEL (embed, enroll, identify)."""
    _option(parser, "batch_size", type=int, default=16)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    _max_seconds_option(parser)
    _trust_pickle_option(parser)


def _overrides(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help=f"override a value of {what}"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lapsv", description="Speaker verification with Layer Attentive Pooling."
    )
    parser.add_argument("--version", action="version", version=f"lapsv {__version__}")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    embed = verbs.add_parser("embed", help="extract speaker embeddings of audio files")
    embed.add_argument("model", help="model directory, hub id, or built-in name (ge2e)")
    embed.add_argument("audio", nargs="+", help="audio files, folders (recursive) or wav.scp")
    embed.add_argument("--out", default="embeddings.npz", help="output .npz (ids, embeddings)")
    embed.add_argument("--show", type=int, default=5, help="print the first N embeddings")
    _embedding_options(embed)
    embed.set_defaults(func=cmd_embed)

    train = verbs.add_parser(
        "train", help="run a training stage from a YAML recipe (resumes if interrupted)"
    )
    train.add_argument("recipe", help="YAML recipe, e.g. recipes/demo.yaml")
    _overrides(train, "the recipe (repeatable)")
    train.add_argument("--out", help="output folder (default: runs/<recipe name>)")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    _option(
        train,
        "drop_invalid",
        action="store_true",
        help="drop the utterances data validation reports and train on the rest "
        "(data.drop_invalid=true)",
    )
    _trust_pickle_option(train)
    train.set_defaults(func=cmd_train)

    evaluation = verbs.add_parser(
        "eval", help="evaluate a model on a trial list (EER, minDCF, DET plot, score file)"
    )
    evaluation.add_argument("model", help="model directory, hub id, or built-in name (ge2e)")
    evaluation.add_argument("--trials", required=True, help="VoxCeleb, Kaldi or CSV trial list")
    _option(
        evaluation,
        "audio_root",
        required=True,
        help="folder the trial list's paths are relative to",
    )
    evaluation.add_argument(
        "--cohort", help="manifest of training utterances: mean subtraction, AS-norm, QMF"
    )
    evaluation.add_argument("--norm", choices=["none", "asnorm"], default="none")
    evaluation.add_argument("--calibrate", choices=["none", "qmf"], default="none")
    _option(evaluation, "top_n", type=int, default=600)
    evaluation.add_argument("--out", default="results", help="results folder")
    _option(evaluation, "batch_size", type=int, default=16)
    evaluation.add_argument("--device", default="cpu")
    _trust_pickle_option(evaluation)
    evaluation.set_defaults(func=cmd_eval)

    score = verbs.add_parser(
        "score", help="metrics of a score file, or scores from cached embeddings"
    )
    score.add_argument("--scores", help="lines 'enroll test score label'")
    score.add_argument("--embeddings", help=".npz written by lapsv embed / eval")
    score.add_argument("--trials", help="trial list to score with --embeddings")
    score.add_argument("--enroll", help="Kaldi spk2utt file: enrol models from several utterances")
    _option(
        score,
        "mean_from",
        help=".npz whose mean embedding is subtracted",
    )
    score.add_argument("--out", help="write the scores computed from --embeddings here")
    score.add_argument("--calibrated", action="store_true", help="scores are LLRs: add Cllr")
    score.set_defaults(func=cmd_score)

    verify = verbs.add_parser("verify", help="are two recordings the same speaker?")
    verify.add_argument("model", help=MODEL_HELP)
    verify.add_argument("a", help="first audio file")
    verify.add_argument("b", help="second audio file")
    verify.add_argument(
        "--threshold", type=float, help="decision threshold (default: LLR 0 if calibrated)"
    )
    verify.add_argument("--device", default="cpu")
    _max_seconds_option(verify)
    _trust_pickle_option(verify)
    verify.set_defaults(func=cmd_verify)

    enroll = verbs.add_parser(
        "enroll", help="add a speaker's recordings to a speaker database (SQLite)"
    )
    enroll.add_argument("model", help=MODEL_HELP)
    enroll.add_argument("--db", required=True, help="speaker database file (created if missing)")
    enroll.add_argument("name", help="the speaker's name")
    enroll.add_argument("audio", nargs="+", help="audio files, folders (recursive) or wav.scp")
    enroll.add_argument(
        "--replace", action="store_true", help="drop the speaker's earlier recordings first"
    )
    _embedding_options(enroll)
    enroll.set_defaults(func=cmd_enroll)

    identify = verbs.add_parser("identify", help="who is speaking? top-k enrolled speakers")
    identify.add_argument("model", help=MODEL_HELP)
    identify.add_argument("--db", required=True, help="speaker database file")
    identify.add_argument("audio", nargs="+", help="audio files, folders (recursive) or wav.scp")
    _option(identify, "top_k", type=int, default=3, help="speakers listed per recording")
    identify.add_argument(
        "--threshold",
        type=float,
        help="below it the answer is 'unknown' (default: LLR 0 if the model is calibrated; "
        "otherwise a cosine / AS-norm threshold you choose)",
    )
    _embedding_options(identify)
    identify.set_defaults(func=cmd_identify)

    speakers = verbs.add_parser("speakers", help="list or delete speakers of a database")
    speakers.add_argument("--db", help="speaker database file")
    speakers_verbs = speakers.add_subparsers(dest="speakers_verb", required=True, metavar="ACTION")
    listing = speakers_verbs.add_parser("list", help="speakers, recordings and seconds")
    listing.add_argument("--db", default=argparse.SUPPRESS, help="(may also come here)")
    listing.add_argument("--utterances", action="store_true", help="list each recording too")
    delete = speakers_verbs.add_parser("delete", help="remove speakers and their recordings")
    delete.add_argument("--db", default=argparse.SUPPRESS, help="(may also come here)")
    delete.add_argument("names", nargs="+", metavar="NAME")
    speakers.set_defaults(func=cmd_speakers)

    export = verbs.add_parser(
        "export", help="export to ONNX or TorchScript (dynamic batch and length), checked"
    )
    export.add_argument("model", help="model directory, hub id, or built-in name (ge2e)")
    export.add_argument("--format", choices=["onnx", "torchscript"], default="onnx")
    export.add_argument("--out", required=True, help="file: .onnx, or .pt / .ts for TorchScript")
    _trust_pickle_option(export)
    export.set_defaults(func=cmd_export)

    inspect = verbs.add_parser("inspect", help="which layers the model uses over time")
    inspect.add_argument("model", help="model directory or hub id")
    inspect.add_argument("audio", help="an audio file")
    inspect.add_argument("--plot", help="write a heat map PNG here")
    _trust_pickle_option(inspect)
    inspect.set_defaults(func=cmd_inspect)

    demo = verbs.add_parser("demo", help="the end-to-end demo: corpus, training, report")
    demo.add_argument("--out", default="lapsv-demo", help="output folder")
    _option(demo, "budget_minutes", type=float, default=20.0)
    demo.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="train stage 1 with this many seeds (0, 1, ...) and report each system's EER "
        "spread over them; every extra seed takes 3 to 9 min (GE2E) and about 8 min "
        "(Whisper-base) on 2 cores",
    )
    demo.add_argument(
        "--frontend",
        choices=("all", "ge2e", "whisper-base"),
        default="all",
        help="which frozen frontend(s) to run the demo on (default: both)",
    )
    _overrides(demo, "the demo recipe (repeatable)")
    demo.set_defaults(func=cmd_demo)

    data = verbs.add_parser("data", help="build or prepare data: manifests, corpora, noise")
    data_verbs = data.add_subparsers(dest="data_verb", required=True, metavar="DATA_VERB")
    validate = data_verbs.add_parser(
        "validate", help="check a manifest's files (headers only): every problem in one report"
    )
    validate.add_argument("manifest", help="manifest (.tsv) to check")
    _option(validate, "crop_seconds", type=float, help="report audio shorter than this")
    _option(
        validate,
        "min_utterances",
        type=int,
        default=2,
        help="report speakers with fewer usable utterances",
    )
    _option(validate, "sample_rate", type=int, default=16000, help="expected rate (0: any rate)")
    corpus = data_verbs.add_parser("demo-corpus", help="real-speech corpus from Debian packages")
    corpus.add_argument("--out", required=True)
    corpus.add_argument("--cache", help="folder for downloaded packages")
    noise = data_verbs.add_parser("demo-noise", help="MUSAN/RIRS_NOISES-style folders, offline")
    noise.add_argument("--out", required=True)
    _option(
        noise,
        "speech_manifest",
        help="training manifest for babble",
    )
    noise.add_argument("--cache", help="folder for downloaded packages")
    for layout, what in [
        ("folder", "a folder of speaker sub-folders"),
        ("kaldi", "a Kaldi data dir (wav.scp + utt2spk)"),
        ("voxceleb", "a VoxCeleb1/2 tree (id*/video/*.wav or .m4a)"),
    ]:
        prepare = data_verbs.add_parser(f"prepare-{layout}", help=f"manifests from {what}")
        prepare.add_argument("source", help=what)
        prepare.add_argument("--out", required=True, help="where manifests and trials go")
        _option(
            prepare,
            "val_speakers",
            type=int,
            default=20,
            help="held-out training speakers",
        )
        prepare.add_argument("--seed", type=int, default=0)
    data.set_defaults(func=cmd_data)

    info = verbs.add_parser("info", help="describe a model: sizes, parameters, config")
    info.add_argument("model", help="model directory, hub id, or built-in name (ge2e)")
    _trust_pickle_option(info)
    info.set_defaults(func=cmd_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lapsv`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except LapsvError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
