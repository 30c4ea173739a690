"""The demo's diarization: simulated conversations of held-out speakers, each model's DER.

Test conversations are built from the test speakers only (never seen in training or
validation), validation conversations from the validation speakers; every choice (the
clustering of a calibrated model, Whisper's embedding pass) is made on the validation
conversations and then run once on the test conversations, with Silero VAD and with the
reference's speech regions (oracle). Every run goes through :func:`lapsv.diarize`, the
function of ``lapsv diarize``; its hypothesis RTTM and scores are kept, so a rerun skips it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lapsv.demo.conversations import ConversationSet, build_conversations
from lapsv.diarization import (
    DiarizeOptions,
    SileroVAD,
    diarize,
    read_rttm,
    score_diarization,
    write_rttm,
)
from lapsv.diarization.plots import plot_timeline
from lapsv.diarization.segments import speech_regions_of
from lapsv.errors import AudioError
from lapsv.files import atomic_write_text
from lapsv.speaker import Speaker

TEST_CONVERSATIONS = 40
VAL_CONVERSATIONS = 20
MINUTES = (1.0, 4.0)  # length of a conversation
RESULT = "result.json"


@dataclasses.dataclass(frozen=True)
class System:
    """One diarization system of the table: a label, its model and its option choices
    (``choices``: option sets tried on the validation conversations; the best is kept)."""

    key: str
    label: str
    model: Callable[[], Speaker]
    choices: dict[str, dict[str, Any]]


def build_demo_conversations(
    out: Path, corpus: Path, noise: Path, log: Callable[[str], None]
) -> dict[str, ConversationSet]:
    """Test conversations (test speakers, seed 0) and validation ones (seed 1) under ``out``,
    with the demo's noise (clean without a noise folder)."""
    sets = {}
    noisy = noise if (noise / "musan").is_dir() else None
    for split, count, seed in (("test", TEST_CONVERSATIONS, 0), ("val", VAL_CONVERSATIONS, 1)):
        sets[split] = build_conversations(
            corpus / f"{split}.tsv",
            out / split,
            noise=noisy,
            count=count,
            minutes=MINUTES,
            seed=seed,
        )
        minutes = sum(c.seconds for c in sets[split].conversations) / 60
        log(f"      {split} conversations: {count}, {minutes:.0f} min ({out / split})")
    return sets


def run_set(
    model: Speaker,
    conversations: ConversationSet,
    out: Path,
    *,
    options: DiarizeOptions,
    oracle: bool,
    vad: SileroVAD,
) -> dict[str, Any]:
    """Diarize every conversation of the set (or read the kept result, when the options, the
    model and the reference are the same): DER / JER at the standard collars, exact
    speaker counts, run time; the hypothesis RTTM beside it."""
    settings = {
        "options": repr(options),
        "oracle": oracle,
        "model": model.model_id,
        "reference": hashlib.sha256(conversations.reference.read_bytes()).hexdigest(),
    }
    if (out / RESULT).is_file():
        kept = json.loads((out / RESULT).read_text())
        if kept.get("settings") == settings:
            return kept
    reference = read_rttm(conversations.reference)
    hypothesis, counts, audio, started = {}, 0, 0.0, time.perf_counter()
    failures = {}
    for conversation in conversations.conversations:
        speech = speech_regions_of(reference[conversation.id]) if oracle else None
        try:
            result = diarize(
                model,
                conversations.audio_path(conversation),
                options=options,
                vad=vad,
                speech=speech,
            )
        except AudioError as error:  # no speech found: scored as all missed
            failures[conversation.id] = error.reason
            hypothesis[conversation.id] = []
            continue
        hypothesis[conversation.id] = list(result.segments)
        counts += len(result.speakers) == len(conversation.speakers)
        audio += result.duration
    seconds = time.perf_counter() - started
    write_rttm(out / "hypothesis.rttm", hypothesis)
    scores = {}
    for collar in (0.5, 0.0):
        overall, _ = score_diarization(reference, hypothesis, collar=collar)
        scores[f"collar {collar:g}"] = overall.to_json()
    result = {
        "settings": settings,
        "scores": scores,
        "exact count %": round(100 * counts / len(hypothesis), 1),
        "conversations": len(hypothesis),
        "seconds": round(seconds, 1),
        "real-time factor": round(audio / seconds, 1),
        "failures": failures,
    }
    atomic_write_text(out / RESULT, json.dumps(result, indent=1) + "\n")
    return result


def evaluate_diarization(
    systems: list[System],
    sets: dict[str, ConversationSet],
    out: Path,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Each system's choice on the validation set, then its test rows (VAD and oracle), and
    the timeline plot of one test conversation by the first system."""
    vad = SileroVAD()
    report: dict[str, Any] = {"systems": {}}
    for system in systems:
        model = system.model()
        tried = {
            name: run_set(
                model,
                sets["val"],
                out / system.key / "val" / name,
                options=DiarizeOptions(**choice),
                oracle=False,
                vad=vad,
            )
            for name, choice in system.choices.items()
        }
        best = min(tried, key=lambda name: tried[name]["scores"]["collar 0.5"]["DER %"])
        options = DiarizeOptions(**system.choices[best])
        rows = {
            speech: run_set(
                model,
                sets["test"],
                out / system.key / "test" / speech,
                options=options,
                oracle=speech == "oracle",
                vad=vad,
            )
            for speech in ("vad", "oracle")
        }
        log(
            f"      {system.label} ({best}): test DER "
            f"{rows['vad']['scores']['collar 0.5']['DER %']:.2f} % with Silero VAD, "
            f"{rows['oracle']['scores']['collar 0.5']['DER %']:.2f} % with oracle speech"
        )
        report["systems"][system.label] = {"choice": best, "validation": tried, "test": rows}
    first = systems[0]
    report["timeline"] = _timeline(sets["test"], out / first.key / "test" / "vad", out, first)
    atomic_write_text(out / "diarization.json", json.dumps(report, indent=1) + "\n")
    return report


def _timeline(conversations: ConversationSet, run: Path, out: Path, system: System) -> str:
    """timeline.png: the reference above the hypothesis of the first test conversation."""
    conversation = conversations.conversations[0]
    reference = read_rttm(conversations.reference)[conversation.id]
    hypothesis = read_rttm(run / "hypothesis.rttm").get(conversation.id, [])
    plot_timeline(
        [("reference", reference), (system.label, hypothesis)],
        out / "timeline.png",
        title=f"{conversation.id}: {len(conversation.speakers)} speakers, "
        f"{conversation.seconds / 60:.1f} min, {conversation.noise} at "
        f"{conversation.snr} dB SNR{', reverb' if conversation.reverb else ''}",
    )
    return "timeline.png"


def diarization_section(report: dict[str, Any], prefix: str) -> list[str]:
    """Markdown: the test table (collar ±0.25 s and none, overlap scored), each system's
    validation choice, and the timeline."""
    lines = [
        "## Diarization (simulated conversations of the test speakers)",
        "",
        "DER % (missed + false alarm + confusion) and JER %, overlap scored, at a collar of "
        "±0.25 s (md-eval `-c 0.25`) and with none; exact: the share of conversations "
        "whose number of speakers was found; RTF: audio seconds per second of run time.",
        "",
        "| system | speech | DER % | missed | false alarm | confusion | JER % | DER % no collar "
        "| exact count | RTF |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, entry in report["systems"].items():
        for speech, name in (("vad", "Silero VAD"), ("oracle", "oracle")):
            row = entry["test"][speech]
            s, s0 = row["scores"]["collar 0.5"], row["scores"]["collar 0"]
            lines.append(
                f"| {label} | {name} | {s['DER %']:.2f} | {s['missed %']:.2f} | "
                f"{s['false alarm %']:.2f} | {s['confusion %']:.2f} | {s['JER %']:.2f} | "
                f"{s0['DER %']:.2f} | {row['exact count %']:.0f} % | {row['real-time factor']} |"
            )
    lines += ["", "Choices made on the validation conversations (DER % with Silero VAD):", ""]
    for label, entry in report["systems"].items():
        tried = ", ".join(
            f"{name} {run['scores']['collar 0.5']['DER %']:.2f}"
            for name, run in entry["validation"].items()
        )
        lines.append(f"- {label}: **{entry['choice']}** ({tried})")
    lines += ["", f"![a test conversation]({prefix}{report['timeline']})", ""]
    return lines
