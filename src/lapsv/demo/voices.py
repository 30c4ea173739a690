"""Recorded human voices in Debian packages: which files are one speaker.

:func:`demo_corpus_sources` is the one explicit list of voice sources of the demo corpus;
each :class:`VoiceSource` names a package folder, the files of one voice in it (regular
expressions on paths relative to that folder) and why the rules are what they are. The
rules come from inspecting the audio through numbers (durations, level, spectral
flatness, pitch, GE2E similarity); :func:`lapsv.demo.clips.analyse_file` re-checks every
file when the corpus is built (silence, steady tones, duplicates) and
:func:`lapsv.demo.voice_check.check_voice_groups` checks that the recording groups of
one label are one voice.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from lapsv.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class VoiceSource:
    """Files of one voice in one folder of one Debian package.

    Several sources may share a ``speaker`` label (the same person in two packages).
    ``include``/``exclude`` are regular expressions matched against the whole path
    relative to ``folder``; ``channels``/``sample_rates`` keep only files of that format;
    ``group_by`` (one capture group, matched at the start of the relative path) names
    sub-groups, such as sub-folders or themes, that :func:`check_voice_groups` compares.
    """

    speaker: str
    package: str
    language: str
    voice: str
    folder: str
    include: str
    exclude: str = ""
    channels: int | None = None
    sample_rates: tuple[int, ...] = ()
    group_by: str = ""
    note: str = ""


_ASTERISK_NOT_SPEECH = (
    r"silence/.+|beep\.wav|beeperr\.wav|(ascending|descending)-2tone\.wav"
    r"|confbridge-(join|leave)\.wav|tt-monkeys\.wav"
)
_ASTERISK_NOTE = (
    "all sub-folders; skipped: silence/ (digital silence), beep, beeperr, 2-tone and "
    "confbridge join/leave tones (pure tones, GE2E 0.46-0.67 to the voice), tt-monkeys "
    "(monkey screeches, GE2E 0.52-0.59)"
)


def _asterisk(speaker: str, language: str, voice_folder: str, voice: str) -> VoiceSource:
    return VoiceSource(
        speaker=speaker,
        package=f"asterisk-core-sounds-{language}-wav",
        language=language,
        voice=voice,
        folder=f"usr/share/asterisk/sounds/{voice_folder}",
        include=r".+\.wav",
        exclude=_ASTERISK_NOT_SPEECH,
        group_by=r"([^/]+)/",
        note=_ASTERISK_NOTE,
    )


# Tux's expressions in the robin-tux theme are snoring, laughter and other non-verbal sounds.
_KTUBERLING_NOT_SPEECH = r"tux-(angry|huh|idea|laugh|love|sick|stare|what|wow|zzz)\.(ogg|opus)"


def _ktuberling(language: str, channels: int, **rules: str) -> VoiceSource:
    layout = {1: "mono", 2: "stereo"}[channels]
    exclude = "|".join(filter(None, (_KTUBERLING_NOT_SPEECH, rules.pop("exclude", ""))))
    note = "; ".join(
        filter(None, ("non-verbal tux-zzz, tux-laugh, ... skipped", rules.pop("note", "")))
    )
    return VoiceSource(
        speaker=f"ktuberling_{language}_{layout}",
        package="ktuberling-data",
        language=language,
        voice=f"{layout} files",
        folder=f"usr/share/ktuberling/sounds/{language}",
        include=rules.pop("include", r"[^/]+\.(ogg|opus)"),
        exclude=exclude,
        channels=channels,
        note=note,
        group_by=r"([a-z]+)_",  # the playground theme: egypt_, moon_, tv_, xmas_, ...
        **rules,
    )


def _klettres(language: str, **rules) -> VoiceSource:
    return VoiceSource(
        speaker=f"klettres_{language}",
        package="klettres-data",
        language=language,
        voice="letters and syllables",
        folder=f"usr/share/klettres/{language}",
        include=r"(alpha|syllab)/[^/]+\.ogg",
        group_by=r"([^/]+)/",
        **rules,
    )


def _tuxpaint(language: str, **rules) -> VoiceSource:
    return VoiceSource(
        speaker=f"tuxpaint_{language}",
        package="tuxpaint-stamps-default",
        language=language,
        voice="stamp descriptions",
        folder="usr/share/tuxpaint/stamps",
        include=rules.pop("include", rf".+_desc_{language}\.ogg"),
        note=rules.pop(
            "note",
            f"spoken descriptions are <stamp>_desc_{language}.ogg; <stamp>_{language}.ogg "
            "(number names) is another voice (GE2E 0.53-0.69) and is not used",
        ),
        **rules,
    )


def _fillets(language: str, fish: str) -> VoiceSource:
    letter, size = {"small": ("m", "small fish"), "big": ("v", "big fish")}[fish]
    return VoiceSource(
        speaker=f"fillets_{language}_{fish}",
        package=f"fillets-ng-data-{language}",
        language=language,
        voice=size,
        folder="usr/share/games/fillets-ng/sound",
        include=rf"(?:[^/]+/)+{language}/[^/-]+-{letter}-[^/]+\.ogg",
        note=f"dialogue lines <level>-{letter}-*.ogg; other characters and the final "
        "scene (fdto/*-m.ogg, *-v.ogg: another cast in cs, GE2E 0.60-0.74) are not used",
    )


DEMO_SOURCES: tuple[VoiceSource, ...] = (
    _asterisk("asterisk_en_es", "en", "en_US_f_Allison", "Allison, en_US"),
    _asterisk("asterisk_en_es", "es", "es_MX_f_Allison", "Allison, es_MX"),
    _asterisk("asterisk_fr", "fr", "fr_CA_f_June", "June, fr_CA"),
    _asterisk("asterisk_it", "it", "it_IT_m_Carlo", "Carlo, it_IT"),
    _ktuberling(
        "ca",
        1,
        include=r"(egypt|moon|xmas|tv|patata|butterflies|robot_workshop)_[^/]+\.ogg",
        note="the themed files are one woman (f0 ~240 Hz); the robin-tux theme (unprefixed "
        "names, *-Tux.ogg, say-*.ogg) and pizzeria_* (44.1 kHz) are a lower voice "
        "(f0 ~130-145 Hz, GE2E 0.57-0.76 to her) and are not used",
    ),
    _ktuberling("da", 1, note="a woman (f0 ~250 Hz); GE2E 0.58-0.75 to the stereo voice"),
    _ktuberling(
        "da",
        2,
        exclude=r"tux-(goblet|idea)\.ogg",
        note="a man (f0 ~135 Hz); tux-goblet, tux-idea are stereo files of the mono voice "
        "(GE2E 0.94 to it)",
    ),
    _ktuberling("de", 2),
    _ktuberling(
        "en",
        2,
        exclude=r"tv_[^/]+\.ogg",
        note="tv_* (train valley, 5 files) is another, higher voice (GE2E 0.61-0.70)",
    ),
    _ktuberling("gl", 1),
    _ktuberling("nn", 1),
    _ktuberling(
        "sl", 1, note="the 3 stereo files are too few for a speaker of their own; not used"
    ),
    _ktuberling(
        "uk",
        1,
        exclude=r"train_valley\.theme\.ogg",
        note="train_valley.theme.ogg is not in uk.soundtheme (GE2E 0.48); not used",
    ),
    _klettres(
        "da",
        exclude=r"syllab/ad-2[3-7]\.ogg",
        note="ad-23..27 (mono 44.1 kHz) are another voice (GE2E 0.67); the 128 kHz alphabet "
        "and the stereo syllables are one man (GE2E 0.91)",
    ),
    _klettres(
        "de",
        channels=1,
        note="mono files are a man (f0 ~108 Hz); the stereo alphabet is a woman "
        "(f0 ~230 Hz, GE2E 0.69) and is not used",
    ),
    _klettres("en_GB"),
    _klettres("es"),
    _klettres("hu"),
    _klettres("it"),
    _klettres("ml"),
    _klettres("nds"),
    _klettres("nl"),
    _klettres(
        "pt_BR",
        exclude=r"alpha/n\.ogg|syllab/pu\.ogg",
        note="alpha/n and syllab/pu (another encoder) are another voice (GE2E 0.69, 0.76)",
    ),
    _klettres("uk", exclude=r"alpha/yot\.ogg", note="alpha/yot is another voice (GE2E 0.74)"),
    _tuxpaint("bg"),
    _tuxpaint(
        "ca",
        sample_rates=(44100,),
        note="the 8 kHz descriptions (5 files) are another voice (GE2E 0.70); 58 animal "
        "descriptions encoded at 32 kb/s by libVorbis 20050304 are another voice "
        "(GE2E 0.69), dropped by the voice check",
    ),
    _tuxpaint(
        "da",
        include=r".+_desc_da\.ogg(\.ogg)?",
        note="inukshuk-photo_desc_da.ogg.ogg is a description with a doubled suffix",
    ),
    _tuxpaint("es"),
    _tuxpaint("ro"),
    _fillets("cs", "small"),
    _fillets("cs", "big"),
    _fillets("nl", "small"),
    _fillets("nl", "big"),
)


def demo_corpus_sources() -> tuple[VoiceSource, ...]:
    """The voice sources of the demo corpus: 32 speakers in 9 Debian packages.

    Nothing else of these packages is read: their other voices are kept for
    independent evaluation.

    >>> sources = demo_corpus_sources()
    >>> len({s.speaker for s in sources}), len({s.package for s in sources})
    (32, 9)
    """
    return DEMO_SOURCES


def select_files(source: VoiceSource, tree: Path) -> tuple[list[str], list[str]]:
    """Paths under ``tree / source.folder`` that ``source.include`` matches, sorted.

    Returns:
        (selected, excluded): relative paths kept, and those ``source.exclude`` removes.
    """
    base = Path(tree) / source.folder
    if not base.is_dir():
        raise ConfigError(
            f"{base}: no such folder in package {source.package}; the package layout "
            "changed, update lapsv.demo.voices.demo_corpus_sources()"
        )
    include = re.compile(source.include)
    exclude = re.compile(source.exclude) if source.exclude else None
    selected, excluded = [], []
    for path in sorted(base.rglob("*")):
        rel = path.relative_to(base).as_posix()
        if not path.is_file() or not include.fullmatch(rel):
            continue
        (excluded if exclude and exclude.fullmatch(rel) else selected).append(rel)
    return selected, excluded
