"""Speaker-disjoint splits stratified by package family, and the utterances of trials."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lapsv.data.manifest import Utterance


def assign_splits(
    families: dict[str, list[str]],
    *,
    seed: int,
    test: int,
    val: int,
    train_only: Sequence[str] = (),
) -> dict[str, str]:
    """Speaker -> split: ``test`` and ``val`` speakers spread over the families in
    proportion to their size (largest remainder), chosen by ``seed``.

    >>> splits = assign_splits({"a": ["a1", "a2", "a3"], "b": ["b1", "b2"]}, seed=0, test=2, val=1)
    >>> sorted(splits.values())
    ['test', 'test', 'train', 'train', 'val']
    """
    rng = np.random.default_rng(seed)
    eligible = {
        family: sorted(s for s in speakers if s not in train_only)
        for family, speakers in sorted(families.items())
    }
    split = {s: "train" for speakers in families.values() for s in speakers}
    left = dict(eligible)
    for name, wanted in (("test", test), ("val", val)):
        quota = _largest_remainder({f: len(s) for f, s in left.items()}, wanted)
        for family, speakers in left.items():
            order = [speakers[i] for i in rng.permutation(len(speakers))]
            for speaker in order[: quota[family]]:
                split[speaker] = name
        left = {f: [s for s in speakers if split[s] == "train"] for f, speakers in left.items()}
    return split


def _largest_remainder(sizes: dict[str, int], wanted: int) -> dict[str, int]:
    total = sum(sizes.values())
    wanted = min(wanted, total)
    if wanted == 0:
        return dict.fromkeys(sizes, 0)
    exact = {f: wanted * n / total for f, n in sizes.items()}
    quota = {f: min(sizes[f], int(x)) for f, x in exact.items()}
    for family in sorted(sizes, key=lambda f: (quota[f] - exact[f], -sizes[f], f)):
        if sum(quota.values()) >= wanted:
            break
        if quota[family] < sizes[family]:
            quota[family] += 1
    return quota


def trial_utterances(
    utterances: Sequence[Utterance], *, per_speaker: int, seed: int
) -> list[Utterance]:
    """At most ``per_speaker`` utterances of each speaker, chosen by ``seed``, so that
    speakers with hundreds of items do not take all the target trials.

    >>> utts = [Utterance(f"{s}{i}", s, 1.0) for s in "ab" for i in range(5)]
    >>> [u.utt for u in trial_utterances(utts, per_speaker=2, seed=0)]
    ['a2', 'a4', 'b1', 'b4']
    """
    rng = np.random.default_rng(seed)
    by_speaker: dict[str, list[Utterance]] = {}
    for u in utterances:
        by_speaker.setdefault(u.speaker, []).append(u)
    chosen = []
    for speaker in sorted(by_speaker):
        utts = by_speaker[speaker]
        keep = (
            sorted(rng.permutation(len(utts))[:per_speaker])
            if len(utts) > per_speaker
            else range(len(utts))
        )
        chosen += [utts[i] for i in keep]
    return chosen
