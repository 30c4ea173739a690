"""Whisper's decoding settings (transformers' ``GenerationConfig``) for converted weights.

A CTranslate2 / faster-whisper folder keeps what the decoder needs beside ``model.bin``:
``config.json`` (``lang_ids``, ``suppress_ids``, ``suppress_ids_begin``,
``alignment_heads``) and ``tokenizer.json`` (the special tokens). From them the converter
writes ``generation_config.json`` and ``preprocessor_config.json``, so the converted folder
is a complete transformers Whisper model: its decoder, ``generate`` and transformers'
speech-recognition pipeline all work offline. The values are OpenAI's (openai-whisper's
``decoding.py``): the first timestamp at most 1 s in, 448 tokens at most.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

MAX_INITIAL_TIMESTAMP_INDEX = 50  # 50 x 20 ms: a window's first timestamp is <= 1 s
MAX_TARGET_TOKENS = 448
SPECIAL = {
    "end": "<|endoftext|>",
    "start": "<|startoftranscript|>",
    "transcribe": "<|transcribe|>",
    "translate": "<|translate|>",
    "previous": "<|startofprev|>",
    "no_timestamps": "<|notimestamps|>",
}


def special_token_ids(tokenizer: dict[str, Any]) -> dict[str, int]:
    """Every added token of a ``tokenizer.json`` (parsed), by its text."""
    return {token["content"]: token["id"] for token in tokenizer.get("added_tokens", [])}


def generation_settings(ct2_config: dict[str, Any], tokenizer: dict[str, Any]) -> dict[str, Any]:
    """``GenerationConfig`` fields from a faster-whisper ``config.json`` and ``tokenizer.json``.

    Raises:
        KeyError: the tokenizer lacks one of Whisper's special tokens.
    """
    ids = special_token_ids(tokenizer)
    by_id = {i: text for text, i in ids.items()}
    languages = {by_id[i]: i for i in ct2_config.get("lang_ids", []) if i in by_id}
    end = ids[SPECIAL["end"]]
    settings = {
        "decoder_start_token_id": ids[SPECIAL["start"]],
        "eos_token_id": end,
        "pad_token_id": end,
        "bos_token_id": end,
        "no_timestamps_token_id": ids[SPECIAL["no_timestamps"]],
        "prev_sot_token_id": ids[SPECIAL["previous"]],
        "is_multilingual": bool(languages),
        "lang_to_id": languages,
        "task_to_id": {task: ids[SPECIAL[task]] for task in ("transcribe", "translate")},
        "suppress_tokens": list(ct2_config.get("suppress_ids", [])),
        "begin_suppress_tokens": list(ct2_config.get("suppress_ids_begin", [220, end])),
        "max_initial_timestamp_index": MAX_INITIAL_TIMESTAMP_INDEX,
        "max_length": MAX_TARGET_TOKENS,
    }
    if ct2_config.get("alignment_heads"):
        settings["alignment_heads"] = [list(head) for head in ct2_config["alignment_heads"]]
    return settings


def write_generation_files(source: Path, folder: Path, *, n_mels: int) -> bool:
    """Write ``generation_config.json`` and ``preprocessor_config.json`` into ``folder``
    from the faster-whisper folder ``source``; False (nothing written) when ``source``
    has no ``tokenizer.json`` with Whisper's special tokens."""
    try:
        tokenizer = json.loads((source / "tokenizer.json").read_text(encoding="utf-8"))
        settings = generation_settings(_read_json(source / "config.json"), tokenizer)
    except (OSError, ValueError, KeyError):
        return False
    (folder / "generation_config.json").write_text(json.dumps(settings, indent=2) + "\n")
    features = {
        "feature_extractor_type": "WhisperFeatureExtractor",
        "processor_class": "WhisperProcessor",
        "feature_size": n_mels,
        "sampling_rate": 16_000,
        "hop_length": 160,
        "chunk_length": 30,
        "n_fft": 400,
        "n_samples": 480_000,
        "nb_max_frames": 3000,
        "padding_side": "right",
        "padding_value": 0.0,
        "return_attention_mask": False,
    }
    (folder / "preprocessor_config.json").write_text(json.dumps(features, indent=2) + "\n")
    return True


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError:
        return {}  # no config.json: the defaults
