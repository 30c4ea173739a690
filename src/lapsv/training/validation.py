"""Model selection on held-out TRAINING speakers (never on test trials)."""

from __future__ import annotations

import numpy as np
import torch

from lapsv.data.manifest import Manifest, read_manifest
from lapsv.inference import extract_embeddings
from lapsv.model import SpeakerModel
from lapsv.training.config import DataConfig


class Validator:
    """EER / minDCF of a model on validation trials between held-out training speakers.

    Scores are cosine similarities after subtracting the mean embedding of a fixed random
    subset of training utterances (METHOD.md §6).
    """

    def __init__(
        self, manifest: Manifest, trials_path: str, mean_source: Manifest, *, batch_size: int = 16
    ) -> None:
        from lapsv.scoring.trials import read_trials

        self.items = [(u.utt, manifest.audio_path(u)) for u in manifest]
        self.trials = read_trials(trials_path)
        self.mean_items = [(u.utt, mean_source.audio_path(u)) for u in mean_source]
        self.batch_size = batch_size

    @classmethod
    def from_config(cls, data: DataConfig, train_manifest: Manifest) -> Validator | None:
        if not data.val_manifest or not data.val_trials:
            return None
        rng = np.random.default_rng(0)
        chosen = rng.permutation(len(train_manifest))[: data.mean_utterances]
        subset = Manifest(train_manifest.root, tuple(train_manifest.utterances[i] for i in chosen))
        return cls(read_manifest(data.val_manifest), data.val_trials, subset)

    def evaluate(self, model: SpeakerModel, device: torch.device | str) -> dict[str, float]:
        """Returns ``val_eer`` (%), ``val_min_dcf_0.01`` and ``val_min_dcf_0.05``."""
        from lapsv.scoring.metrics import compute_metrics

        kwargs = {"batch_size": self.batch_size, "device": device}
        embeddings = extract_embeddings(model, self.items, **kwargs)
        mean = extract_embeddings(model, self.mean_items, **kwargs).embeddings.mean(axis=0)
        vectors = embeddings.embeddings - mean
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        index = embeddings.index()
        rows = [
            (index[a], index[b], label)
            for a, b, label in zip(
                self.trials.enroll, self.trials.test, self.trials.labels, strict=True
            )
            if a in index and b in index
        ]
        a, b, labels = (np.array(column) for column in zip(*rows, strict=True))
        scores = np.einsum("ij,ij->i", vectors[a], vectors[b])
        metrics = compute_metrics(scores, labels)
        return {
            "val_eer": metrics["eer"],
            "val_min_dcf_0.01": metrics["min_dcf_0.01"],
            "val_min_dcf_0.05": metrics["min_dcf_0.05"],
        }
