"""The ``lapsv`` argument parser: one function per verb. Flag names equal the library's
parameter names (``--top_k`` / ``--top-k``); every verb's handler lives in a verbs module."""

from __future__ import annotations

import argparse

from lapsv import __version__
from lapsv.cli import options
from lapsv.cli.conversation_verbs import add_diarize_parser
from lapsv.cli.model_verbs import (
    cmd_embed,
    cmd_eval,
    cmd_export,
    cmd_info,
    cmd_inspect,
    cmd_score,
    cmd_verify,
)
from lapsv.cli.project_verbs import cmd_data, cmd_demo, cmd_train
from lapsv.cli.serve_verbs import add_serve_parser
from lapsv.cli.speaker_verbs import cmd_enroll, cmd_identify, cmd_speakers
from lapsv.cli.transcribe_verb import add_transcribe_parser
from lapsv.inference import DEFAULT_MAX_SECONDS

_option = options.flag
MODEL_HELP = options.MODEL_HELP


def _max_seconds_option(parser: argparse.ArgumentParser) -> None:
    _option(
        parser,
        "max_seconds",
        type=options.at_least(1.0),
        default=DEFAULT_MAX_SECONDS,
        help="longer recordings are embedded in windows of at most this many seconds, "
        "averaged (bounded memory)",
    )


_trust_pickle_option = options.add_trust_pickle


def _embedding_options(parser: argparse.ArgumentParser) -> None:
    """Options of the verbs that embed audio files with a MODEL (embed, enroll, identify)."""
    _option(parser, "batch_size", type=options.count(1), default=16)
    _device_option(parser)
    _max_seconds_option(parser)
    _trust_pickle_option(parser)


_device_option = options.add_device


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
    parser.set_defaults(verb_parsers=verbs.choices)
    for add_verb in (
        _add_embed,
        _add_train,
        _add_eval,
        _add_score,
        _add_verify,
        _add_enroll,
        _add_identify,
        _add_speakers,
        add_diarize_parser,
        add_transcribe_parser,
        _add_export,
        _add_inspect,
        _add_demo,
        _add_data,
        _add_info,
        add_serve_parser,
    ):
        add_verb(verbs)
    return parser


def _add_embed(verbs: argparse._SubParsersAction) -> None:
    embed = verbs.add_parser("embed", help="extract speaker embeddings of audio files")
    embed.add_argument("model", help="model directory, hub id, or built-in name (ge2e)")
    embed.add_argument("audio", nargs="+", help="audio files, folders (recursive) or wav.scp")
    embed.add_argument(
        "--out",
        type=options.output_file(".npz"),
        default="embeddings.npz",
        help="output .npz (ids, embeddings)",
    )
    embed.add_argument("--show", type=options.count(0), default=5, help="print the first N")
    _embedding_options(embed)
    embed.set_defaults(func=cmd_embed)


def _add_train(verbs: argparse._SubParsersAction) -> None:
    train = verbs.add_parser(
        "train", help="run a training stage from a YAML recipe (resumes if interrupted)"
    )
    train.add_argument(
        "recipe", type=options.input_file, help="YAML recipe, e.g. recipes/demo.yaml"
    )
    _overrides(train, "the recipe (repeatable)")
    train.add_argument(
        "--out", type=options.output_folder, help="output folder (default: runs/<recipe name>)"
    )
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


def _add_eval(verbs: argparse._SubParsersAction) -> None:
    evaluation = verbs.add_parser(
        "eval", help="evaluate a model on a trial list (EER, minDCF, DET plot, score file)"
    )
    evaluation.add_argument("model", help="model directory, hub id, or built-in name (ge2e)")
    evaluation.add_argument(
        "--trials",
        required=True,
        type=options.input_file,
        help="VoxCeleb, Kaldi or CSV trial list",
    )
    _option(
        evaluation,
        "audio_root",
        required=True,
        help="folder the trial list's paths are relative to",
    )
    evaluation.add_argument(
        "--cohort",
        type=options.input_file,
        help="manifest of training utterances: mean subtraction, AS-norm, QMF",
    )
    evaluation.add_argument("--norm", choices=["none", "asnorm"], default="none")
    evaluation.add_argument("--calibrate", choices=["none", "qmf"], default="none")
    _option(evaluation, "top_n", type=options.count(2), default=600)
    evaluation.add_argument(
        "--out",
        type=options.output_folder,
        default="results",
        help="results folder: scores, metrics, plots, embedding caches and the fitted scoring "
        "state (scoring.npz, qmf.json)",
    )
    _option(
        evaluation,
        "save_scoring",
        action="store_true",
        help="also attach the fitted scoring state (training mean, AS-norm cohort, QMF) to "
        "the model directory, for verify and identify; without it the model is not changed",
    )
    _option(evaluation, "batch_size", type=options.count(1), default=16)
    _device_option(evaluation)
    _trust_pickle_option(evaluation)
    evaluation.set_defaults(func=cmd_eval)


def _add_score(verbs: argparse._SubParsersAction) -> None:
    score = verbs.add_parser(
        "score", help="metrics of a score file, or scores from cached embeddings"
    )
    score.add_argument("--scores", type=options.input_file, help="lines 'enroll test score label'")
    score.add_argument(
        "--embeddings", type=options.input_file, help=".npz written by lapsv embed / eval"
    )
    score.add_argument(
        "--trials", type=options.input_file, help="trial list to score with --embeddings"
    )
    score.add_argument(
        "--enroll",
        type=options.input_file,
        help="Kaldi spk2utt file: enrol models from several utterances",
    )
    _option(
        score,
        "mean_from",
        type=options.input_file,
        help=".npz whose mean embedding is subtracted",
    )
    score.add_argument(
        "--out",
        type=options.output_file(),
        help="write the scores computed from --embeddings here",
    )
    score.add_argument("--calibrated", action="store_true", help="scores are LLRs: add Cllr")
    score.set_defaults(func=cmd_score)


def _add_verify(verbs: argparse._SubParsersAction) -> None:
    verify = verbs.add_parser("verify", help="are two recordings the same speaker?")
    verify.add_argument("model", help=MODEL_HELP)
    verify.add_argument("a", type=options.input_file, help="first audio file")
    verify.add_argument("b", type=options.input_file, help="second audio file")
    verify.add_argument(
        "--threshold",
        type=options.finite,
        help="decision threshold (default: LLR 0 if calibrated)",
    )
    _device_option(verify)
    _max_seconds_option(verify)
    _trust_pickle_option(verify)
    verify.set_defaults(func=cmd_verify)


def _add_enroll(verbs: argparse._SubParsersAction) -> None:
    enroll = verbs.add_parser(
        "enroll", help="add a speaker's recordings to a speaker database (SQLite)"
    )
    enroll.add_argument("model", help=MODEL_HELP)
    enroll.add_argument(
        "--db",
        type=options.output_file(),
        required=True,
        help="speaker database file (created if missing)",
    )
    enroll.add_argument("name", help="the speaker's name")
    enroll.add_argument("audio", nargs="+", help="audio files, folders (recursive) or wav.scp")
    enroll.add_argument(
        "--replace", action="store_true", help="drop the speaker's earlier recordings first"
    )
    _embedding_options(enroll)
    enroll.set_defaults(func=cmd_enroll)


def _add_identify(verbs: argparse._SubParsersAction) -> None:
    identify = verbs.add_parser("identify", help="who is speaking? top-k enrolled speakers")
    identify.add_argument("model", help=MODEL_HELP)
    identify.add_argument(
        "--db", type=options.speaker_database, required=True, help="speaker database file"
    )
    identify.add_argument(
        "audio",
        nargs="+",
        help="audio files, folders (recursive) or wav.scp; or one embeddings file (.npz of "
        "lapsv embed with the same MODEL) to identify each of its embeddings",
    )
    _option(identify, "top_k", type=options.count(1), default=3, help="speakers per recording")
    identify.add_argument(
        "--threshold",
        type=options.finite,
        help="below it the answer is 'unknown' (default: LLR 0 if the model is calibrated; "
        "otherwise a cosine / AS-norm threshold you choose)",
    )
    _embedding_options(identify)
    identify.set_defaults(func=cmd_identify)


def _add_speakers(verbs: argparse._SubParsersAction) -> None:
    speakers = verbs.add_parser("speakers", help="list, delete or import speakers of a database")
    speakers.add_argument("--db", type=options.speaker_database, help="speaker database file")
    speakers_verbs = speakers.add_subparsers(dest="speakers_verb", required=True, metavar="ACTION")
    listing = speakers_verbs.add_parser("list", help="speakers, recordings and seconds")
    listing.add_argument(
        "--db", type=options.speaker_database, default=argparse.SUPPRESS, help="(or here)"
    )
    listing.add_argument("--utterances", action="store_true", help="list each recording too")
    delete = speakers_verbs.add_parser("delete", help="remove speakers and their recordings")
    delete.add_argument(
        "--db", type=options.speaker_database, default=argparse.SUPPRESS, help="(or here)"
    )
    delete.add_argument("names", nargs="+", metavar="NAME")
    bulk = speakers_verbs.add_parser(
        "import", help="enrol many speakers at once from an embeddings file (lapsv embed)"
    )
    bulk.add_argument(
        "--db", type=options.speaker_database, default=argparse.SUPPRESS, help="(or here)"
    )
    bulk.add_argument("embeddings", type=options.input_file, help=".npz written by lapsv embed")
    bulk.add_argument(
        "--spk2utt",
        type=options.input_file,
        help="Kaldi spk2utt file 'NAME utt1 utt2 ...' (default: each embedding is a speaker "
        "named by its id)",
    )
    bulk.add_argument(
        "--model",
        help="the model of the embeddings: checks its id and stores each speaker's AS-norm "
        "cohort statistics (faster identify)",
    )
    _trust_pickle_option(bulk)
    speakers.set_defaults(func=cmd_speakers)


def _add_export(verbs: argparse._SubParsersAction) -> None:
    export = verbs.add_parser(
        "export", help="export to ONNX or TorchScript (dynamic batch and length), checked"
    )
    export.add_argument("model", help="model directory, hub id, or built-in name (ge2e)")
    export.add_argument("--format", choices=["onnx", "torchscript"], default="onnx")
    export.add_argument(
        "--out",
        type=options.output_file(".onnx", ".pt", ".ts", ".torchscript"),
        required=True,
        help="file: .onnx, or .pt / .ts for TorchScript",
    )
    _trust_pickle_option(export)
    export.set_defaults(func=cmd_export)


def _add_inspect(verbs: argparse._SubParsersAction) -> None:
    inspect = verbs.add_parser("inspect", help="which layers the model uses over time")
    inspect.add_argument("model", help="model directory or hub id")
    inspect.add_argument("audio", type=options.input_file, help="an audio file")
    inspect.add_argument(
        "--plot", type=options.output_file(".png"), help="write a heat map PNG here"
    )
    _trust_pickle_option(inspect)
    inspect.set_defaults(func=cmd_inspect)


def _add_demo(verbs: argparse._SubParsersAction) -> None:
    demo = verbs.add_parser("demo", help="the end-to-end demo: corpus, training, report")
    demo.add_argument(
        "--out", type=options.output_folder, default="lapsv-demo", help="output folder"
    )
    _option(demo, "budget_minutes", type=options.at_least(0.0), default=20.0)
    demo.add_argument(
        "--seeds",
        type=options.count(1),
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


def _add_data(verbs: argparse._SubParsersAction) -> None:
    data = verbs.add_parser("data", help="build or prepare data: manifests, corpora, noise")
    data_verbs = data.add_subparsers(dest="data_verb", required=True, metavar="DATA_VERB")
    validate = data_verbs.add_parser(
        "validate", help="check a manifest's files (headers only): every problem in one report"
    )
    validate.add_argument("manifest", type=options.input_file, help="manifest (.tsv) to check")
    _option(
        validate,
        "crop_seconds",
        type=options.at_least(0.0),
        help="report audio shorter than this",
    )
    _option(
        validate,
        "min_utterances",
        type=options.count(1),
        default=2,
        help="report speakers with fewer usable utterances",
    )
    _option(
        validate, "sample_rate", type=options.count(0), default=16000, help="expected rate (0: any)"
    )
    corpus = data_verbs.add_parser("demo-corpus", help="real-speech corpus from Debian packages")
    corpus.add_argument("--out", type=options.output_folder, required=True)
    corpus.add_argument("--cache", help="folder for downloaded packages")
    noise = data_verbs.add_parser("demo-noise", help="MUSAN/RIRS_NOISES-style folders, offline")
    noise.add_argument("--out", type=options.output_folder, required=True)
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
        prepare.add_argument(
            "--out", type=options.output_folder, required=True, help="where manifests go"
        )
        _option(
            prepare,
            "val_speakers",
            type=options.count(0),
            default=20,
            help="held-out training speakers",
        )
        prepare.add_argument("--seed", type=options.count(0), default=0)
    data.set_defaults(func=cmd_data)


def _add_info(verbs: argparse._SubParsersAction) -> None:
    info = verbs.add_parser("info", help="describe a model: sizes, parameters, config")
    info.add_argument("model", help="model directory, hub id, or built-in name (ge2e)")
    _trust_pickle_option(info)
    info.set_defaults(func=cmd_info)
