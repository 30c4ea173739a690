"""The one rule for speaker names, and how a stored name is shown.

Every way of writing a speaker (``lapsv enroll``, ``lapsv speakers import``, the service,
:class:`~lapsv.speakers.SpeakerDB`) checks a new name with :func:`check_speaker_name`:
after Unicode NFC normalisation, 1-64 letters, digits, spaces or ``. _ ' -``, starting with
a letter or digit, no space at the end, in any script (combining marks of scripts such as
Devanagari count as part of a letter). Names stored by older versions may break the rule;
they stay readable, and :func:`printable_name` escapes what a terminal would obey.
"""

from __future__ import annotations

import unicodedata

from lapsv.speakers.records import SpeakerDBError

NAME_MAX = 64
NAME_PUNCTUATION = " ._'-"
NAME_RULE = f"1-{NAME_MAX} letters, digits, spaces or . _ ' -, starting with a letter or digit"
SHOWN_MAX = 40  # characters of a refused name quoted in its error


class SpeakerNameError(SpeakerDBError):
    """A speaker name the rule refuses; the message quotes it and states the rule.

    Attributes:
        name: the refused name, as given.
    """

    def __init__(self, name: object, *, where: str = "", fix: str = "") -> None:
        self.name = name
        if isinstance(name, str):
            shown = repr(name if len(name) <= SHOWN_MAX else name[:SHOWN_MAX] + "...")
        else:
            shown = f"{type(name).__name__} {name!r:.{SHOWN_MAX}}"
        super().__init__(
            f"{where}bad speaker name {shown}: {NAME_RULE}" + (f"; {fix}" if fix else "")
        )


def normal_name(name: str) -> str:
    """``name`` in Unicode NFC, the form names are stored and looked up in."""
    return unicodedata.normalize("NFC", name)


def _allowed(character: str) -> bool:
    return (
        character.isalnum()
        or character in NAME_PUNCTUATION
        or unicodedata.category(character).startswith("M")  # vowel signs, viramas, accents
    )


def is_speaker_name(name: str) -> bool:
    """Whether ``name`` (already NFC) follows the rule."""
    return (
        0 < len(name) <= NAME_MAX
        and name[0].isalnum()
        and not name[-1].isspace()
        and all(_allowed(c) for c in name)
    )


def check_speaker_name(name: str, *, where: str = "", fix: str = "") -> str:
    """``name`` in NFC if it is a valid speaker name, else :class:`SpeakerNameError`
    (``where``: prefix of its message, say ``"spk2utt:3: "``; ``fix``: added after the rule).

    >>> check_speaker_name("Ana María")
    'Ana María'
    >>> check_speaker_name("x'; DROP TABLE speakers; --")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    lapsv.speakers.names.SpeakerNameError: bad speaker name "x'; DROP TABLE speakers; --": 1-64 ...
    """
    if not isinstance(name, str):
        raise SpeakerNameError(name, where=where, fix=fix)
    normal = normal_name(name)
    if not is_speaker_name(normal):
        raise SpeakerNameError(name, where=where, fix=fix)
    return normal


def printable_name(name: str) -> str:
    """``name`` for a terminal: control and other non-printable characters (and the
    backslash, so the escapes are unambiguous) written as Python escapes them; letters of
    every script kept.

    >>> printable_name("a\\x1b[31mb"), printable_name("Zoë")
    ('a\\\\x1b[31mb', 'Zoë')
    """
    if name.isprintable() and "\\" not in name:
        return name
    return "".join(c if c.isprintable() and c != "\\" else repr(c)[1:-1] for c in name)
