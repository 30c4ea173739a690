"""Command-line interface. The only package that prints or exits; verbs call the library.

``parser`` builds the argument parser; ``model_verbs``, ``speaker_verbs`` and
``project_verbs`` turn flags into keyword arguments of the library and print results.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from lapsv.cli.parser import build_parser
from lapsv.errors import LapsvError

__all__ = ["build_parser", "main"]


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
