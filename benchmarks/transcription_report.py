"""The RESULTS.md section of issue 26's benchmark (``transcription-*.json``)."""

from __future__ import annotations

from typing import Any

from benchmarks.common import markdown_table


def render_transcription(data: dict[str, Any]) -> str:
    m = data["machine"]
    commit = (data.get("commit") or "?")[:10] + (
        " + changes" if data.get("uncommitted_changes") else ""
    )
    lines = [
        "## Transcripts with speakers (issue 26), CPU",
        f"`{data['command']}`, {m.get('cpus_usable')} cores, {data['threads']} torch "
        f"thread(s), {m.get('date', '')[:10]}, lapsv {commit}; load average "
        f"{m.get('load_average_start')} at the start, {m.get('load_average_end')} at the end. "
        "Whisper-base (the offline built-in weights), language en; the words item decodes "
        "with a beam search of 5, as `lapsv transcribe` does by default.",
    ]
    if "cost" in data:
        lines.append(_cost(data["cost"]))
    if "words" in data:
        lines.append(_words(data["words"]))
    if "attribution" in data:
        lines.append(_attribution(data["attribution"]))
    return "\n".join(lines)


def _cost(cost: dict[str, Any]) -> str:
    conversation = cost["conversation"]
    rows = [
        [
            name,
            " / ".join(f"{s:.1f}" for s in cost["runs_s"][name]),
            f"{cost['x_real_time'][name]:.2f}",
            f"{cost['ratio_to_words_only'][name]:.3f}",
        ]
        for name in cost["best_s"]
    ]
    shared = cost["ratio_to_words_only"]["shared pass"]
    return "\n".join(
        [
            f"\n**Cost** on a {conversation['seconds'] / 60:.3g}-min conversation of the bundled "
            f"clips ({conversation['speakers']} speakers, {conversation['turns']} turns), "
            f"{cost['model']}, beam search of {cost['beam_size']}, runs interleaved; goal: "
            f"{cost['goal']} "
            f"({'met' if shared <= 1.15 else 'not met'}: {shared:.3f}x)\n",
            markdown_table(["way", "runs (s)", "best x real time", "best / words only"], rows),
        ]
    )


def _words(words: dict[str, Any]) -> str:
    rows = [[system, f"{wer:.2f}"] for system, wer in words["wer"].items()]
    different = "; ".join(
        f"`{r['file']}`: lapsv {r['lapsv']!r}, transformers {r['transformers']!r}"
        for r in words["different"][:5]
    )
    return "\n".join(
        [
            f"\n**Words**: {words['prompts']} English Asterisk prompts ({words['voice']}) whose "
            f"text is speech{_every(words)}: `lapsv transcribe` gave transformers' "
            "pipeline's text on "
            f"{words['identical_text']} ({100 * words['identical_share']:.1f} %); the VAD found "
            f"no speech in {words['no_speech_found']}. WER against the shipped texts, after "
            f"Whisper's English normalizer.{_apart(words)}\n",
            markdown_table(["system", "WER %"], rows),
            f"\nDifferent texts: {different or 'none'}",
        ]
    )


def _attribution(result: dict[str, Any]) -> str:
    rows = [
        [name, f"{s['speaker error %']:.2f}", f"{s['seconds']:.0f}", f"{s['run_s']:.0f}"]
        for name, s in result["systems"].items()
    ]
    return "\n".join(
        [
            f"\n**Attribution** on the demo's {result['conversations']} test conversations "
            f"({result['audio_s'] / 60:.0f} min; beam search of {result['beam_size']}): speaker "
            "error of the transcript's words "
            "(time of words on reference speech attributed to another speaker, after the "
            "best label-to-speaker mapping). The shared pass's run time includes the words; "
            "the others' is their diarization alone (they attribute the same words)."
            f"{_apart(result)}\n",
            markdown_table(
                ["speakers from", "speaker error %", "seconds scored", "run time (s)"], rows
            ),
        ]
    )


def _every(words: dict[str, Any]) -> str:
    stride = words.get("stride", 1)
    return "" if stride == 1 else f" (one in {stride}, in name order)"


def _apart(result: dict[str, Any]) -> str:
    """The item's own command, when it ran in a run of its own."""
    if "command" not in result:
        return ""
    commit = (result.get("commit") or "?")[:10] + (
        " + changes" if result.get("uncommitted_changes") else ""
    )
    return (
        f" Run apart: `{result['command']}`, {result['threads']} torch thread(s), lapsv {commit}."
    )
