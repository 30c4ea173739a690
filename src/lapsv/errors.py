"""Typed errors. Library code raises these; only ``lapsv.cli`` turns them into messages."""

from __future__ import annotations


class LapsvError(Exception):
    """Base class of every error lapsv raises on purpose."""


class ConfigError(LapsvError, ValueError):
    """A recipe, override or saved config is invalid."""


class AudioError(LapsvError, ValueError):
    """An audio file or array cannot be used; the message names the file and the fix."""

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


class ModelLoadError(LapsvError, OSError):
    """A model directory, hub id or weight file cannot be loaded."""


class ScoringError(LapsvError, ValueError):
    """Scores, labels, trial lists or embeddings cannot be scored; the message says why."""
