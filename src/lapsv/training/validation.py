"""Model selection on held-out TRAINING speakers (never on test trials)."""

from __future__ import annotations

import hashlib

import numpy as np
import torch
from torch import nn

from lapsv.backend import SpeakerBackend
from lapsv.data.manifest import Manifest, read_manifest
from lapsv.frontends import Frontend
from lapsv.inference import SharedFrontendModel, extract_embeddings
from lapsv.scoring.metrics import compute_metrics
from lapsv.scoring.norm import embedding_mean
from lapsv.scoring.state import ScoringState, score_pairs
from lapsv.scoring.trials import read_trials
from lapsv.training.config import DataConfig


class MemoizedFrontend(nn.Module):
    """A frozen frontend that remembers its outputs (on the CPU) by input content.

    Validation embeds the same utterances after every epoch; with a frozen frontend their
    hidden states never change, so the encoder runs once per batch and later epochs only
    run the backends (a Whisper encoder costs minutes per pass on a CPU). The outputs are
    kept exactly (float32), so results equal those of the frontend itself.
    """

    def __init__(self, frontend: Frontend) -> None:
        super().__init__()
        self.frontend = frontend
        self.sample_rate = frontend.sample_rate
        self.memo: dict[bytes, tuple[torch.Tensor, torch.Tensor]] = {}

    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor):
        key = hashlib.blake2b(waveforms.detach().cpu().numpy().tobytes())
        key.update(lengths.cpu().numpy().tobytes())
        digest = key.digest()
        if digest not in self.memo:
            hidden, frames = self.frontend(waveforms, lengths)
            self.memo[digest] = (hidden.cpu(), frames.cpu())
        hidden, frames = self.memo[digest]
        return hidden.to(waveforms.device), frames.to(waveforms.device)


class Validator:
    """EER / minDCF of a model on validation trials between held-out training speakers.

    Scores are cosine similarities after subtracting the mean embedding of a fixed random
    subset of training utterances (METHOD.md §6), through the one scoring path
    (:func:`~lapsv.scoring.state.score_pairs`).
    """

    def __init__(
        self, manifest: Manifest, trials_path: str, mean_source: Manifest, *, batch_size: int = 16
    ) -> None:
        self.items = [(u.utt, manifest.audio_path(u)) for u in manifest]
        self.trials = read_trials(trials_path)
        self.mean_items = [(u.utt, mean_source.audio_path(u)) for u in mean_source]
        self.batch_size = batch_size
        self.memo: MemoizedFrontend | None = None

    @classmethod
    def from_config(
        cls, data: DataConfig, train_manifest: Manifest, val_manifest: Manifest | None = None
    ) -> Validator | None:
        """None without validation data; ``val_manifest``: already read (and checked)."""
        if not data.val_manifest or not data.val_trials:
            return None
        rng = np.random.default_rng(0)
        chosen = rng.permutation(len(train_manifest))[: data.mean_utterances]
        subset = Manifest(train_manifest.root, tuple(train_manifest.utterances[i] for i in chosen))
        if val_manifest is None:
            val_manifest = read_manifest(data.val_manifest)
        return cls(val_manifest, data.val_trials, subset)

    def evaluate(
        self, frontend: Frontend, backends: dict[str, SpeakerBackend], device: torch.device | str
    ) -> dict[str, dict[str, float]]:
        """Per backend: ``val_eer`` (%), ``val_min_dcf_0.01``, ``val_min_dcf_0.05``.

        The frontend runs once per batch for all backends (see :class:`SharedFrontendModel`),
        and a frozen one only at the first call (:class:`MemoizedFrontend`).
        """
        results = {}
        for name, (scores, labels) in self.scores(frontend, backends, device).items():
            metrics = compute_metrics(scores, labels)
            results[name] = {
                "val_eer": metrics["eer"],
                "val_min_dcf_0.01": metrics["min_dcf_0.01"],
                "val_min_dcf_0.05": metrics["min_dcf_0.05"],
            }
        return results

    def scores(
        self, frontend: Frontend, backends: dict[str, SpeakerBackend], device: torch.device | str
    ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per backend: the (n,) mean-subtracted cosine scores of the validation trials whose
        both sides could be embedded, and their (n,) labels."""
        if frontend.frozen:
            if self.memo is None or self.memo.frontend is not frontend:
                self.memo = MemoizedFrontend(frontend)
            frontend = self.memo
        model = SharedFrontendModel(frontend, backends)
        kwargs = {"batch_size": self.batch_size, "device": device}
        embeddings = extract_embeddings(model, self.items, **kwargs)
        means = extract_embeddings(model, self.mean_items, **kwargs).embeddings
        keep, pairs_e, pairs_t = embeddings.trial_rows(self.trials.enroll, self.trials.test)
        labels = np.asarray(self.trials.labels)[keep]
        results = {}
        for name, columns in model.columns().items():
            part = embeddings.columns(columns)
            state = ScoringState(mean=embedding_mean(means[:, columns]))
            scores = score_pairs(
                state,
                part.embeddings,
                part.embeddings,
                pairs_e,
                pairs_t,
                enroll_seconds=part.seconds,
                test_seconds=part.seconds,
            )
            results[name] = (scores.cosine, labels)
        return results
