"""Command-line interface. The only package that prints or exits; verbs call the library.

``parser`` builds the argument parser; ``model_verbs``, ``speaker_verbs`` and
``project_verbs`` turn flags into keyword arguments of the library and print results.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from lapsv.cli.parser import build_parser
from lapsv.errors import LapsvError

__all__ = ["build_parser", "main"]


INTERNAL_ERROR = 3  # a bug of lapsv, not of the input: never a traceback, but a distinct code


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lapsv`` console script.

    Exit codes: 0 done; 1 done, but some inputs failed (listed); 2 nothing done: a bad
    option or input (one line saying why); 3 an internal error (set ``LAPSV_DEBUG=1`` to
    see its traceback); 130 interrupted.
    """
    try:
        args = _parse(argv)
    except SystemExit as exit_:  # a bad option (usage shown); --help / --version exit as usual
        if exit_.code in (0, None):
            raise
        return exit_.code if isinstance(exit_.code, int) else 2
    try:
        return args.func(args)
    except LapsvError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`lapsv info m | head`): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as error:  # a bug: say what and how to see more, never a traceback
        if os.environ.get("LAPSV_DEBUG"):
            raise
        print(
            f"error: internal error of lapsv ({type(error).__name__}: {error}); rerun with "
            "LAPSV_DEBUG=1 for the traceback and report it",
            file=sys.stderr,
        )
        return INTERNAL_ERROR


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse and check every option (:mod:`lapsv.cli.options`); a misspelled option of a
    verb gets that verb's usage, not the top level's."""
    args, extras = build_parser().parse_known_args(argv)
    if extras:
        args.verb_parsers[args.verb].error(f"unrecognized arguments: {' '.join(extras)}")
    return args


if __name__ == "__main__":
    sys.exit(main())
