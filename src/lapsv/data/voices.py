"""Recorded human voices in Debian packages: which files are one speaker, and the checks.

:func:`demo_corpus_sources` is the one explicit list of voice sources of the demo corpus;
each :class:`VoiceSource` names a package folder, the files of one voice in it (regular
expressions on paths relative to that folder) and why the rules are what they are. The
rules come from inspecting the audio through numbers (durations, level, spectral
flatness, pitch, GE2E similarity); :func:`analyse_file` re-checks every file when the
corpus is built (silence, steady tones, duplicates) and :func:`check_voice_groups` checks
that the recording groups of one label are one voice.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import soundfile
from scipy.signal import butter, sosfilt

from lapsv.audio import SAMPLE_RATE, resample
from lapsv.errors import ConfigError

FRAME, HOP = 400, 160  # 25 ms frames, 10 ms hop at 16 kHz
SILENT_DBFS = -50.0  # a file whose loudest frame is quieter holds no speech
ACTIVE_DB = 35.0  # frames within this many dB of the loudest frame are active
TRIM_MARGIN = 0.1  # seconds of silence kept around the active part
MIN_ACTIVE_SECONDS = 0.1


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
            "changed, update lapsv.data.voices.demo_corpus_sources()"
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


@dataclasses.dataclass
class Clip:
    """The speech of one file: trimmed 16 kHz mono waveform and where it came from."""

    source: int
    rel: str
    wave: np.ndarray
    offset: float  # seconds trimmed from the start of the file
    group: str
    file_hash: str
    audio_hash: str

    @property
    def seconds(self) -> float:
        return len(self.wave) / SAMPLE_RATE


@dataclasses.dataclass(frozen=True)
class Skip:
    """A selected file that is not used, and why."""

    source: int
    rel: str
    reason: str


def analyse_file(task: tuple[int, VoiceSource, str, str]) -> Clip | Skip:
    """Decode one file of a source and keep its speech, or say why it is not used.

    ``task`` is (source index, source, package tree, relative path). The file is
    down-mixed, resampled to 16 kHz and trimmed to its active part; files of another
    channel count or sample rate than the source asks for, undecodable, silent, too
    short or steady-tone files are skipped.
    """
    index, source, tree, rel = task
    path = Path(tree) / source.folder / rel

    def skip(reason: str) -> Skip:
        return Skip(index, rel, reason)

    try:
        info = soundfile.info(str(path))
        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, ValueError) as error:
        return skip(f"cannot decode ({error})")
    if source.channels is not None and info.channels != source.channels:
        return skip(f"{info.channels}-channel file: not this voice")
    if source.sample_rates and rate not in source.sample_rates:
        return skip(f"{rate} Hz file: not this voice")
    if len(data) == 0:
        return skip("empty (no samples)")
    wave = data.mean(axis=1)
    wave = resample(wave, rate, SAMPLE_RATE) if rate != SAMPLE_RATE else wave
    wave = np.clip(wave, -1.0, 1.0).astype(np.float32)
    active = _active_frames(wave)
    if active is None:
        return skip(f"silent (loudest frame below {SILENT_DBFS:.0f} dBFS)")
    first, last = active
    if (last - first) * HOP / SAMPLE_RATE < MIN_ACTIVE_SECONDS:
        return skip(f"too short (under {MIN_ACTIVE_SECONDS} s of sound)")
    margin = int(TRIM_MARGIN * SAMPLE_RATE)
    start = max(0, first * HOP - margin)
    trimmed = wave[start : min(len(wave), last * HOP + FRAME + margin)]
    if is_steady_tone(trimmed):
        return skip("steady tone (beep)")
    group = _group_name(source, rel, info, path)
    pcm = np.round(wave * 32767).astype(np.int16)
    return Clip(
        source=index,
        rel=rel,
        wave=trimmed,
        offset=start / SAMPLE_RATE,
        group=group,
        file_hash=hashlib.sha1(path.read_bytes()).hexdigest(),
        audio_hash=hashlib.sha1(pcm.tobytes()).hexdigest(),
    )


def _frame_db(wave: np.ndarray, frame: int = FRAME, hop: int = HOP) -> np.ndarray:
    if len(wave) < frame:
        wave = np.pad(wave, (0, frame - len(wave)))
    frames = np.lib.stride_tricks.sliding_window_view(wave, frame)[::hop]
    return 10 * np.log10((frames.astype(np.float64) ** 2).mean(axis=1) + 1e-12)


def _active_frames(wave: np.ndarray) -> tuple[int, int] | None:
    """First and last active frame, or None when the file is silent."""
    db = _frame_db(wave)
    loudest = float(db.max())
    if loudest < SILENT_DBFS:
        return None
    active = np.flatnonzero(db > loudest - ACTIVE_DB)
    return int(active[0]), int(active[-1])


def is_steady_tone(wave: np.ndarray, *, sample_rate: int = SAMPLE_RATE) -> bool:
    """True for a beep: one spectral peak holding the energy at one fixed frequency.

    Voices have several harmonics and a pitch that moves; a tone generator has neither.
    Measured on the loudest frames above 100 Hz: median share of the energy within
    +-3 bins of the peak (> 0.9) and median relative deviation of the peak frequency
    (< 0.3 %). Speech in the demo sources stays under one of the two limits.

    >>> t = np.arange(8000) / 16000
    >>> is_steady_tone(np.sin(2 * np.pi * 1000 * t)), is_steady_tone(np.random.randn(8000))
    (True, False)
    """
    n, pad = 1024, 4
    if len(wave) < n + HOP:
        return False
    middle = len(wave) // 2
    wave = wave[max(0, middle - 2 * sample_rate) : middle + 2 * sample_rate]  # 4 s suffice
    high = sosfilt(butter(4, 100, "highpass", fs=sample_rate, output="sos"), wave)
    frames = np.lib.stride_tricks.sliding_window_view(high, n)[::HOP]
    energy = (frames**2).mean(axis=1)
    frames = frames[energy > energy.max() * 0.01]  # the loudest 20 dB
    if len(frames) < 3:
        return False
    spectrum = np.abs(np.fft.rfft(frames * np.hanning(n), n=pad * n, axis=1)) ** 2
    peak = spectrum[:, 8:-8].argmax(axis=1) + 8
    bins = np.arange(spectrum.shape[1])
    near = np.abs(bins[None, :] - peak[:, None]) <= 3 * pad
    share = float(np.median((spectrum * near).sum(axis=1) / spectrum.sum(axis=1)))
    rows = np.arange(len(peak))
    a, b, c = (np.log(spectrum[rows, peak + k] + 1e-20) for k in (-1, 0, 1))
    frequency = peak + 0.5 * (a - c) / (a - 2 * b + c - 1e-20)
    deviation = float(np.median(np.abs(frequency - np.median(frequency))) / np.median(frequency))
    return share > 0.9 and deviation < 0.003


def _group_name(source: VoiceSource, rel: str, info, path: Path) -> str:
    """Recording group of a file: sub-group, channels, sample rate and encoder."""
    sub = ""
    if source.group_by:
        match = re.match(source.group_by, rel)
        sub = match.group(1) if match else ""
    layout = {1: "mono", 2: "stereo"}.get(info.channels, f"{info.channels}ch")
    fields = [source.package, sub or "-", layout, f"{info.samplerate} Hz", encoding(path, info)]
    return " | ".join(fields)


def encoding(path: Path, info) -> str:
    """How a file was encoded: Vorbis nominal bit rate and encoder, or the PCM format.

    Files of one label made with another encoder or bit rate were often recorded by
    someone else, so the voice check compares such groups.
    """
    if info.format != "OGG":
        return f"{info.format} {info.subtype}"
    with open(path, "rb") as handle:
        head = handle.read(16384)
    ident = head.find(b"\x01vorbis")
    if ident >= 0 and len(head) >= ident + 28:
        nominal = int.from_bytes(head[ident + 20 : ident + 24], "little", signed=True)
        vendor = _vendor(head, b"\x03vorbis")
        return f"vorbis {max(nominal, 0) // 1000} kb/s, {vendor}"
    return f"{info.subtype.lower()}, {_vendor(head, b'OpusTags')}"


def _vendor(head: bytes, marker: bytes) -> str:
    at = head.find(marker)
    if at < 0:
        return "unknown encoder"
    start = at + len(marker) + 4
    length = int.from_bytes(head[at + len(marker) : start], "little")
    return head[start : start + min(length, 80)].decode("utf-8", "replace").strip()


@dataclasses.dataclass(frozen=True)
class GroupCheck:
    """One recording group of a label: its size, and its GE2E similarity to the rest."""

    speaker: str
    group: str
    files: int
    seconds: float
    similarity: float | None
    kept: bool


def group_embedding(
    clips: Sequence[np.ndarray],
    embed: Callable[[list[np.ndarray]], np.ndarray],
    *,
    max_seconds: float = 30.0,
    segment_seconds: float = 6.0,
    gap_seconds: float = 0.25,
) -> np.ndarray:
    """One unit vector for a group of clips: clips spread over the group are joined
    (up to ``max_seconds``), cut into segments, embedded and averaged.

    Joined audio gives GE2E several seconds per segment, which separates voices far
    better than single letters or words do.
    """
    indices = _spread_indices(clips, max_seconds)
    gap = np.zeros(int(gap_seconds * SAMPLE_RATE), np.float32)
    joined = np.concatenate([part for i in indices for part in (clips[i], gap)])
    step = int(segment_seconds * SAMPLE_RATE)
    segments = [joined[s : s + step] for s in range(0, len(joined), step)]
    segments = [s for s in segments if len(s) >= SAMPLE_RATE] or [joined]
    vector = embed(segments).mean(axis=0)
    return vector / np.linalg.norm(vector)


def _spread_indices(clips: Sequence[np.ndarray], max_seconds: float) -> list[int]:
    """Indices of clips spread evenly over the list, up to ``max_seconds`` of audio."""
    budget = max_seconds * SAMPLE_RATE
    chosen: list[int] = []
    for count in range(1, len(clips) + 1):
        picks = sorted(set(np.linspace(0, len(clips) - 1, count).round().astype(int).tolist()))
        if sum(len(clips[i]) for i in picks) > budget and chosen:
            break
        chosen = picks
    return chosen


def check_voice_groups(
    speaker: str,
    groups: dict[str, list[np.ndarray]],
    embed: Callable[[list[np.ndarray]], np.ndarray],
    *,
    threshold: float = 0.8,
) -> tuple[list[GroupCheck], dict[str, np.ndarray]]:
    """Keep the recording groups of one label that are one voice.

    Each group gets a joined-audio GE2E embedding (:func:`group_embedding`). The voice
    of the label is grown from its longest group: the group most similar to the
    duration-weighted mean of the groups kept so far joins while that similarity is at
    least ``threshold``; the groups left are another voice and dropped. A group's
    reported similarity is to the other kept groups (kept) or to all kept (dropped).

    Args:
        groups: group name -> its trimmed 16 kHz clips.
        embed: (list of waveforms) -> (N, E) unit embeddings.

    Returns:
        one :class:`GroupCheck` per group, and the embeddings of the kept groups.
    """
    vectors = {name: group_embedding(clips, embed) for name, clips in groups.items()}
    weights = {name: sum(len(c) for c in clips) / SAMPLE_RATE for name, clips in groups.items()}

    def mean(names: Sequence[str]) -> np.ndarray:
        total = sum(weights[n] * vectors[n] for n in names)
        return total / np.linalg.norm(total)

    left = sorted(groups, key=lambda n: (-weights[n], n))
    alive = [left.pop(0)]
    while left:
        centroid = mean(alive)
        best = max(left, key=lambda n: float(vectors[n] @ centroid))
        if float(vectors[best] @ centroid) < threshold:
            break
        alive.append(best)
        left.remove(best)
    similarity: dict[str, float | None] = dict.fromkeys(groups)
    if len(groups) > 1:
        for name in groups:
            others = [n for n in alive if n != name]
            similarity[name] = float(vectors[name] @ mean(others)) if others else None
    checks = [
        GroupCheck(
            speaker=speaker,
            group=name,
            files=len(clips),
            seconds=round(weights[name], 2),
            similarity=None if similarity[name] is None else round(similarity[name], 3),
            kept=name in alive,
        )
        for name, clips in sorted(groups.items())
    ]
    return checks, {name: vectors[name] for name in alive}
