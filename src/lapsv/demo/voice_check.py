"""The voice check: the recording groups of one label must be one voice (GE2E).

:func:`check_voice_groups` grows the voice of a label from its longest group and drops
the groups of another voice; :class:`GE2EEmbedder` is the embedder the corpus uses.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from lapsv.audio import SAMPLE_RATE
from lapsv.inference import embed_waveforms
from lapsv.speaker import load_model


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


class GE2EEmbedder:
    """GE2E, loaded on first use: (list of 16 kHz waveforms) -> (N, 256) unit vectors."""

    def __init__(self) -> None:
        self.model = None

    def __call__(self, waves: list[np.ndarray]) -> np.ndarray:
        if self.model is None:
            self.model = load_model("ge2e")
        return embed_waveforms(self.model, waves)
