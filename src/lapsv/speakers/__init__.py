"""The speaker database (:mod:`~lapsv.speakers.database`), what it stores
(:mod:`~lapsv.speakers.records`, :mod:`~lapsv.speakers.schema`), the rule for speaker names
(:mod:`~lapsv.speakers.names`) and the search over its speaker models
(:mod:`~lapsv.speakers.index`)."""

from lapsv.speakers.database import SpeakerDB
from lapsv.speakers.names import (
    NAME_RULE,
    SpeakerNameError,
    check_speaker_name,
    normal_name,
    printable_name,
)
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
    "NAME_RULE",
    "SCHEMA_VERSION",
    "CohortStatistics",
    "EnrollResult",
    "SpeakerDB",
    "SpeakerDBError",
    "SpeakerInfo",
    "SpeakerModels",
    "SpeakerNameError",
    "Utterance",
    "array_key",
    "check_speaker_name",
    "content_key",
    "normal_name",
    "printable_name",
]
