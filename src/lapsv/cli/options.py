"""Every CLI option is checked here, before any work: argparse ``type=`` functions.

A bad value makes argparse print the verb's own usage and a one-line reason, and exit 2.
Numbers get their ranges, ``--device`` is parsed by torch and checked against the
hardware, input paths are told apart (a file, a folder, missing), and output paths must
have a folder for a parent and the suffix of their format. Writability and the creation of
missing folders are checked when the verb starts (:func:`prepare_output`), still before
any work.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from lapsv.errors import ConfigError
from lapsv.files import check_writable_file, check_writable_folder
from lapsv.inference import expand_audio_inputs

MODEL_HELP = "model directory, hub id, built-in name (ge2e), or a file from `lapsv export`"


def flag(parser: argparse.ArgumentParser, name: str, **kwargs) -> None:
    """Add ``--name`` (the library parameter's name) and its ``--dashed-spelling``."""
    spellings = [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])
    parser.add_argument(*spellings, dest=name, **kwargs)


def add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", type=device, default="cpu", help="cpu, cuda, cuda:1, mps")


def add_trust_pickle(parser: argparse.ArgumentParser) -> None:
    flag(
        parser,
        "trust_pickle",
        action="store_true",
        help="allow pickle weights (.pt/.bin/.ckpt); unpickling runs any code a file "
        "carries, so only for files you trust",
    )


def count(minimum: int) -> Callable[[str], int]:
    """An integer of at least ``minimum`` (batch sizes, top-k, counts)."""

    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
        if number < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {number}")
        return number

    parse.__name__ = "count"
    return parse


def finite(value: str) -> float:
    """A finite number (thresholds)."""
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if not math.isfinite(number):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {value}")
    return number


def at_least(minimum: float) -> Callable[[str], float]:
    """A finite number of at least ``minimum`` (seconds, budgets)."""

    def parse(value: str) -> float:
        number = finite(value)
        if number < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum:g}, got {value}")
        return number

    parse.__name__ = "number"
    return parse


def device(value: str) -> str:
    """A torch device that exists on this machine (cpu, cuda, cuda:1, mps)."""
    try:
        parsed = torch.device(value)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(
            f"unknown device {value!r}; use cpu, cuda, cuda:N or mps"
        ) from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(
                f"{value}: this torch has no usable CUDA GPU (torch {torch.__version__}); use "
                "--device cpu, or install a CUDA build of torch on a machine with a GPU"
            )
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(
                f"{value}: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise argparse.ArgumentTypeError(f"{value}: MPS is not available here; use --device cpu")
    elif parsed.type not in ("cpu", "cuda", "mps"):
        raise argparse.ArgumentTypeError(f"unsupported device {value!r}; use cpu, cuda or mps")
    return value


def input_file(value: str) -> str:
    """An existing file (not a folder)."""
    path = Path(value)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{value} is a folder, not a file")
    if not path.exists():
        raise argparse.ArgumentTypeError(f"{value}: no such file")
    return value


def speaker_database(value: str) -> str:
    """A speaker database path that is not a folder (a missing one is named by the verb,
    after the model: a model that cannot be used is the first thing to fix)."""
    if Path(value).is_dir():
        raise argparse.ArgumentTypeError(f"{value} is a folder, not a speaker database file")
    return value


def output_file(*suffixes: str) -> Callable[[str], str]:
    """An output file path: not a folder, no file among its parents, one of ``suffixes``
    (any suffix when none is given)."""

    def parse(value: str) -> str:
        path = Path(value)
        if path.is_dir():
            raise argparse.ArgumentTypeError(f"{value} is a folder; give a file name")
        if suffixes and path.suffix.lower() not in suffixes:
            raise argparse.ArgumentTypeError(
                f"{value}: the file must end with {' or '.join(suffixes)}"
            )
        _check_parents(path)
        return value

    parse.__name__ = "file"
    return parse


def output_folder(value: str) -> str:
    """An output folder path: not a file, no file among its parents."""
    path = Path(value)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{value} is a file, not a folder")
    _check_parents(path)
    return value


def _check_parents(path: Path) -> None:
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise argparse.ArgumentTypeError(
                    f"{path} is not writable: its parent {parent} is a file, not a folder"
                )
            return


def prepare_output(path: str | Path, *, what: str, folder: bool = False) -> Path:
    """Check that ``path`` (a file, or a folder) can be written, creating missing folders
    and saying so on stderr; raises :class:`~lapsv.files.OutputError` otherwise."""
    path = Path(path)
    parent = path if folder else path.parent
    missing = [p for p in (parent, *parent.parents) if not p.exists()]
    if folder:
        check_writable_folder(path, what=what)
    else:
        check_writable_file(path, what=what)
    if missing:
        print(f"created folder {missing[0]}", file=sys.stderr)
    return path


def audio_inputs(inputs: list[str]) -> list[tuple[str, str]]:
    """The (id, path) audio files named by ``inputs`` (files, folders, lists), in order;
    finding none is an error (a verb with nothing to do writes nothing)."""
    items = expand_audio_inputs(inputs)
    if not items:
        raise ConfigError("no audio files found in the given inputs")
    return items
