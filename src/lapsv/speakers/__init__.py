"""The speaker database (:mod:`~lapsv.speakers.database`), what it stores
(:mod:`~lapsv.speakers.records`, :mod:`~lapsv.speakers.schema`) and the search over its
speaker models (:mod:`~lapsv.speakers.index`)."""

from lapsv.speakers.database import SpeakerDB
from lapsv.speakers.records import (
    CohortStatistics,
    EnrollResult,
    SpeakerDBError,
    SpeakerInfo,
    SpeakerModels,
    Utterance,
    array_key,
    content_key,
)
from lapsv.speakers.schema import FORMAT, SCHEMA_VERSION

__all__ = [
    "FORMAT",
    "SCHEMA_VERSION",
    "CohortStatistics",
    "EnrollResult",
    "SpeakerDB",
    "SpeakerDBError",
    "SpeakerInfo",
    "SpeakerModels",
    "Utterance",
    "array_key",
    "content_key",
]
