"""Read CTranslate2 (faster-whisper) ``model.bin`` files with numpy, and map a Whisper spec
onto transformers' parameter names.

The binary layout (version 6, little-endian), as CTranslate2 writes it:

* header: uint32 version, string spec name (``"WhisperSpec"``), uint32 spec revision,
  uint32 variable count;
* per variable: string name, uint8 rank, uint32 per dimension, uint8 dtype (0 float32,
  1 int8, 2 int16, 3 int32, 4 float16, 5 bfloat16), uint32 byte count, the raw bytes;
* uint32 alias count, then (alias, target) string pairs;
* a string is a uint16 length that counts a trailing NUL, then the bytes.

A model may be split into parts (``model.bin.part1``, ``model.bin.part2``, ...) whose
concatenation is one ``model.bin``. The ctranslate2 package is not needed (it cannot return
per-layer hidden states anyway).
"""

from __future__ import annotations

import dataclasses
import re
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lapsv.errors import ModelLoadError

SUPPORTED_VERSION = 6
_DTYPES: dict[int, np.dtype] = {
    0: np.dtype("<f4"),
    1: np.dtype("i1"),
    2: np.dtype("<i2"),
    3: np.dtype("<i4"),
    4: np.dtype("<f2"),
    5: np.dtype("<u2"),  # bfloat16: the high half of a float32, widened on read
}
_BFLOAT16 = 5


@dataclasses.dataclass
class CT2Model:
    """A CTranslate2 model's spec name and its variables (aliases resolved).

    ``variables`` maps names such as ``encoder/conv1/weight`` to arrays; quantised weights
    (int8 / int16 with a ``weight_scale``) are returned as stored; see :meth:`float_weight`.
    """

    spec: str
    revision: int
    variables: dict[str, np.ndarray]
    source: str

    def float_weight(self, name: str) -> np.ndarray:
        """Variable ``name`` as float32, de-quantised by its ``weight_scale`` when it has one.

        CTranslate2 quantises a weight row by row: ``q = round(w * scale)``.
        """
        value = self.variables[name]
        scale_name = name.rsplit("/", 1)[0] + "/weight_scale"
        if name.endswith("/weight") and scale_name in self.variables:
            scale = self.variables[scale_name].astype(np.float32)
            return value.astype(np.float32) / scale.reshape(-1, *([1] * (value.ndim - 1)))
        return value.astype(np.float32)

    def scalar(self, name: str) -> int:
        return int(self.variables[name].reshape(-1)[0])


class _Reader:
    """Sequential little-endian reads over a byte buffer; errors name the file."""

    def __init__(self, data: bytes | memoryview, source: str) -> None:
        self.data, self.offset, self.source = memoryview(data), 0, source

    def take(self, size: int) -> memoryview:
        end = self.offset + size
        if end > len(self.data):
            raise ModelLoadError(
                f"{self.source}: truncated CTranslate2 model ({len(self.data):,} bytes, needs "
                f"at least {end:,}); download or copy it again"
            )
        chunk, self.offset = self.data[self.offset : end], end
        return chunk

    def unpack(self, fmt: str) -> tuple[int, ...]:
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt)))

    def string(self) -> str:
        (length,) = self.unpack("H")
        raw = bytes(self.take(length))
        try:
            return raw.rstrip(b"\0").decode("utf-8")
        except UnicodeDecodeError as error:
            raise ModelLoadError(f"{self.source}: corrupt CTranslate2 model ({error})") from error


def model_parts(folder: str | Path) -> list[Path]:
    """The file(s) of the model in a CTranslate2 folder: ``model.bin`` or its numbered parts."""
    folder = Path(folder)
    if (folder / "model.bin").is_file():
        return [folder / "model.bin"]
    parts = sorted(folder.glob("model.bin.part*"), key=_part_number)
    if not parts:
        raise ModelLoadError(f"{folder}: no CTranslate2 model.bin (or model.bin.part1, ...)")
    return parts


def _part_number(path: Path) -> int:
    match = re.search(r"part(\d+)$", path.name)
    return int(match.group(1)) if match else -1


def read_ctranslate2(parts: str | Path | Sequence[str | Path]) -> CT2Model:
    """Read a CTranslate2 ``model.bin`` (or its parts, in order) into numpy arrays.

    Raises:
        ModelLoadError: missing, truncated, corrupt or unsupported file, naming it.
    """
    paths = [Path(parts)] if isinstance(parts, str | Path) else [Path(p) for p in parts]
    source = str(paths[0]) if len(paths) == 1 else f"{paths[0]} (+{len(paths) - 1} parts)"
    try:
        data = b"".join(path.read_bytes() for path in paths)
    except OSError as error:
        raise ModelLoadError(f"cannot read CTranslate2 model {error.filename}: {error}") from error
    reader = _Reader(data, source)
    (version,) = reader.unpack("I")
    if version != SUPPORTED_VERSION:
        raise ModelLoadError(
            f"{source}: CTranslate2 model format version {version} is not supported (lapsv "
            f"reads version {SUPPORTED_VERSION}); convert the model again with a recent "
            "ctranslate2, or pass a transformers directory or hub id"
        )
    spec = reader.string()
    (revision, count) = reader.unpack("II")
    variables = {}
    for _ in range(count):
        name = reader.string()
        (rank,) = reader.unpack("B")
        shape = reader.unpack("I" * rank)
        (dtype_code, size) = reader.unpack("BI")
        if dtype_code not in _DTYPES:
            raise ModelLoadError(f"{source}: variable {name} has unknown dtype code {dtype_code}")
        dtype = _DTYPES[dtype_code]
        if size != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
            raise ModelLoadError(
                f"{source}: corrupt CTranslate2 model: variable {name} of shape {shape} has "
                f"{size} bytes"
            )
        array = np.frombuffer(reader.take(size), dtype=dtype).reshape(shape)
        if dtype_code == _BFLOAT16:
            array = (array.astype(np.uint32) << 16).view(np.float32)
        variables[name] = array
    (n_aliases,) = reader.unpack("I")
    for _ in range(n_aliases):
        alias, target = reader.string(), reader.string()
        if target not in variables:
            raise ModelLoadError(f"{source}: alias {alias} points to missing variable {target}")
        variables[alias] = variables[target]
    if reader.offset != len(data):
        raise ModelLoadError(
            f"{source}: corrupt CTranslate2 model: {len(data) - reader.offset} bytes after the "
            "end of the model"
        )
    return CT2Model(spec, revision, variables, source)


def whisper_config(model: CT2Model) -> dict[str, Any]:
    """transformers ``WhisperConfig`` fields of a CTranslate2 ``WhisperSpec``.

    The sizes are read off the tensors; the head counts are stored as scalars.
    """
    if model.spec != "WhisperSpec":
        raise ModelLoadError(f"{model.source}: a {model.spec}, not a Whisper model")
    names = model.variables
    conv1 = names["encoder/conv1/weight"]
    d_model, n_mels = int(conv1.shape[0]), int(conv1.shape[1])
    vocab_size = int(names["decoder/embeddings/weight"].shape[0])
    return {
        **_special_tokens(vocab_size),
        "model_type": "whisper",
        "d_model": d_model,
        "num_mel_bins": n_mels,
        "encoder_layers": _count_layers(names, "encoder"),
        "decoder_layers": _count_layers(names, "decoder"),
        "encoder_attention_heads": model.scalar("encoder/num_heads"),
        "decoder_attention_heads": model.scalar("decoder/num_heads"),
        "encoder_ffn_dim": int(names["encoder/layer_0/ffn/linear_0/weight"].shape[0]),
        "decoder_ffn_dim": int(names["decoder/layer_0/ffn/linear_0/weight"].shape[0]),
        "max_source_positions": int(names["encoder/position_encodings/encodings"].shape[0]),
        "max_target_positions": int(names["decoder/position_encodings/encodings"].shape[0]),
        "vocab_size": vocab_size,
        "tie_word_embeddings": True,
    }


def _special_tokens(vocab_size: int) -> dict[str, int]:
    """Whisper's <|endoftext|> and <|startoftranscript|> ids (English-only models have one
    token fewer); a vocabulary too small for them (a test model) gets 0 and 1."""
    if vocab_size < 50_258:
        return {
            "pad_token_id": 0,
            "bos_token_id": 0,
            "eos_token_id": 0,
            "decoder_start_token_id": 1,
        }
    start = 50_258 if vocab_size >= 51_865 else 50_257
    end = start - 1  # <|endoftext|>: 50257 multilingual, 50256 English-only
    return {
        "pad_token_id": end,
        "bos_token_id": end,
        "eos_token_id": end,
        "decoder_start_token_id": start,
    }


def _count_layers(names: dict[str, np.ndarray], side: str) -> int:
    count = 0
    while f"{side}/layer_{count}/ffn/linear_0/weight" in names:
        count += 1
    return count


def whisper_state_dict(model: CT2Model) -> dict[str, np.ndarray]:
    """float32 weights of transformers' ``WhisperForConditionalGeneration``, by its names.

    CTranslate2 fuses the query, key and value projections (``linear_0``, rows q | k | v;
    the key has no bias in Whisper, stored as zeros) and, in cross-attention, the key and
    value (``linear_1``); they are split back here.
    """
    config = whisper_config(model)
    state: dict[str, np.ndarray] = {}

    def linear(target: str, source: str) -> None:
        state[f"{target}.weight"] = model.float_weight(f"{source}/weight")
        state[f"{target}.bias"] = model.float_weight(f"{source}/bias")

    def norm(target: str, source: str) -> None:
        state[f"{target}.weight"] = model.float_weight(f"{source}/gamma")
        state[f"{target}.bias"] = model.float_weight(f"{source}/beta")

    def split(target: str, source: str, projections: tuple[str, ...]) -> None:
        weights = np.split(model.float_weight(f"{source}/weight"), len(projections))
        biases = np.split(model.float_weight(f"{source}/bias"), len(projections))
        for projection, weight, bias in zip(projections, weights, biases, strict=True):
            state[f"{target}.{projection}.weight"] = weight
            if projection != "k_proj":  # Whisper's key projection has no bias
                state[f"{target}.{projection}.bias"] = bias

    for side in ("encoder", "decoder"):
        prefix = f"model.{side}"
        state[f"{prefix}.embed_positions.weight"] = model.float_weight(
            f"{side}/position_encodings/encodings"
        )
        norm(f"{prefix}.layer_norm", f"{side}/layer_norm")
        for i in range(config[f"{side}_layers"]):
            layer, source = f"{prefix}.layers.{i}", f"{side}/layer_{i}"
            norm(f"{layer}.self_attn_layer_norm", f"{source}/self_attention/layer_norm")
            split(
                f"{layer}.self_attn",
                f"{source}/self_attention/linear_0",
                ("q_proj", "k_proj", "v_proj"),
            )
            linear(f"{layer}.self_attn.out_proj", f"{source}/self_attention/linear_1")
            norm(f"{layer}.final_layer_norm", f"{source}/ffn/layer_norm")
            linear(f"{layer}.fc1", f"{source}/ffn/linear_0")
            linear(f"{layer}.fc2", f"{source}/ffn/linear_1")
            if side == "decoder":
                norm(f"{layer}.encoder_attn_layer_norm", f"{source}/attention/layer_norm")
                linear(f"{layer}.encoder_attn.q_proj", f"{source}/attention/linear_0")
                split(f"{layer}.encoder_attn", f"{source}/attention/linear_1", ("k_proj", "v_proj"))
                linear(f"{layer}.encoder_attn.out_proj", f"{source}/attention/linear_2")
    for conv in ("conv1", "conv2"):
        linear(f"model.encoder.{conv}", f"encoder/{conv}")
    # the output projection is tied to the token embeddings (tie_word_embeddings)
    state["model.decoder.embed_tokens.weight"] = model.float_weight("decoder/embeddings/weight")
    return state
