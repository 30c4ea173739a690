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
from lapsv.audio import load_audio
from lapsv.errors import AudioError, LapsvError
from lapsv.files import atomic_path

AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif", ".au"}


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
    from lapsv.inference import embed_waveforms
    from lapsv.loading import load_model

    model = load_model(args.model, device=args.device)
    items = expand_audio_inputs(args.audio)
    if not items:
        print("error: no audio files found in the given inputs", file=sys.stderr)
        return 2
    ids, waveforms, failures = [], [], []
    for utt, path in _progress(items, "reading"):
        try:
            waveforms.append(load_audio(path, sample_rate=model.sample_rate))
            ids.append(utt)
        except AudioError as error:
            failures.append((path, error.reason))
    embeddings = (
        embed_waveforms(model, waveforms, batch_size=args.batch_size, device=args.device)
        if waveforms
        else np.zeros((0, model.embed_dim), dtype=np.float32)
    )
    out = Path(args.out)
    with atomic_path(out) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, ids=np.array(ids, dtype=str), embeddings=embeddings)
    total_seconds = sum(len(w) for w in waveforms) / model.sample_rate
    print(
        f"embedded {len(ids)} of {len(items)} files ({total_seconds:.1f} s of audio) with "
        f"{args.model}: {embeddings.shape[1]}-d embeddings -> {out}"
    )
    for utt, vector in zip(ids[: args.show], embeddings[: args.show], strict=False):
        preview = " ".join(f"{v:+.3f}" for v in vector[:6])
        print(f"  {utt}  |e|={np.linalg.norm(vector):.3f}  [{preview} ...]")
    return _report_failures(failures)


def cmd_info(args: argparse.Namespace) -> int:
    from lapsv.config import dump_yaml, to_dict
    from lapsv.loading import load_model
    from lapsv.model import SpeakerModel

    model = load_model(args.model)
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

    config = load_recipe(args.recipe, args.set or [])
    out = Path(args.out) if args.out else Path("runs") / Path(args.recipe).stem
    outputs = train(config, out, progress=not args.quiet)
    for name, path in outputs.items():
        print(f"{name}: final model -> {path}")
    return 0


def _report_failures(failures: Sequence[tuple[str, str]]) -> int:
    if not failures:
        return 0
    print(f"{len(failures)} file(s) failed:", file=sys.stderr)
    for path, reason in failures:
        print(f"  {path}: {reason}", file=sys.stderr)
    return 1


def _progress(items: Sequence, description: str) -> Iterable:
    from tqdm import tqdm

    return tqdm(items, desc=description, unit="file", disable=len(items) < 20, file=sys.stderr)


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
    embed.add_argument("--batch_size", "--batch-size", dest="batch_size", type=int, default=16)
    embed.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    embed.add_argument("--show", type=int, default=5, help="print the first N embeddings")
    embed.set_defaults(func=cmd_embed)

    train = verbs.add_parser(
        "train", help="run a training stage from a YAML recipe (resumes if interrupted)"
    )
    train.add_argument("recipe", help="YAML recipe, e.g. recipes/demo.yaml")
    train.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="override a recipe value (repeatable)"
    )
    train.add_argument("--out", help="output folder (default: runs/<recipe name>)")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(func=cmd_train)

    info = verbs.add_parser("info", help="describe a model: sizes, parameters, config")
    info.add_argument("model", help="model directory, hub id, or built-in name (ge2e)")
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
