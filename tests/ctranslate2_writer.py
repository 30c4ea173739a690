"""Write a transformers Whisper model in CTranslate2's model.bin layout (version 6).

Written from the format description in lapsv.frontends.ctranslate2, independently of its
reader, so that the round trip tests the reader and the name mapping.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import torch

DTYPE_CODES = {
    np.dtype("float32"): 0,
    np.dtype("int8"): 1,
    np.dtype("int16"): 2,
    np.dtype("int32"): 3,
    np.dtype("float16"): 4,
}


def _string(text: str) -> bytes:
    raw = text.encode() + b"\0"
    return struct.pack("<H", len(raw)) + raw


def _variable(name: str, array: np.ndarray) -> bytes:
    array = np.ascontiguousarray(array)
    header = _string(name) + struct.pack("<B", array.ndim)
    header += struct.pack("<" + "I" * array.ndim, *array.shape)
    return header + struct.pack("<BI", DTYPE_CODES[array.dtype], array.nbytes) + array.tobytes()


def ct2_variables(model, dtype=np.float32) -> dict[str, np.ndarray]:
    """CTranslate2 WhisperSpec variables of a ``WhisperForConditionalGeneration``."""
    state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    config = model.config
    out: dict[str, np.ndarray] = {}

    def put(name, array):
        out[name] = np.asarray(array).astype(dtype) if array.dtype.kind == "f" else array

    def linear(target, source):
        put(f"{target}/weight", state[f"{source}.weight"])
        put(f"{target}/bias", state[f"{source}.bias"])

    def norm(target, source):
        put(f"{target}/gamma", state[f"{source}.weight"])
        put(f"{target}/beta", state[f"{source}.bias"])

    def fused(target, source, names):
        put(f"{target}/weight", np.concatenate([state[f"{source}.{n}.weight"] for n in names]))
        biases = [
            state.get(f"{source}.{n}.bias", np.zeros(state[f"{source}.{n}.weight"].shape[0]))
            for n in names
        ]
        put(f"{target}/bias", np.concatenate(biases).astype(np.float32))

    for side in ("encoder", "decoder"):
        prefix = f"model.{side}"
        heads = getattr(config, f"{side}_attention_heads")
        out[f"{side}/num_heads"] = np.array(heads, dtype=np.int16)
        put(f"{side}/position_encodings/encodings", state[f"{prefix}.embed_positions.weight"])
        norm(f"{side}/layer_norm", f"{prefix}.layer_norm")
        for i in range(getattr(config, f"{side}_layers")):
            source, target = f"{prefix}.layers.{i}", f"{side}/layer_{i}"
            norm(f"{target}/self_attention/layer_norm", f"{source}.self_attn_layer_norm")
            fused(
                f"{target}/self_attention/linear_0",
                f"{source}.self_attn",
                ("q_proj", "k_proj", "v_proj"),
            )
            linear(f"{target}/self_attention/linear_1", f"{source}.self_attn.out_proj")
            norm(f"{target}/ffn/layer_norm", f"{source}.final_layer_norm")
            linear(f"{target}/ffn/linear_0", f"{source}.fc1")
            linear(f"{target}/ffn/linear_1", f"{source}.fc2")
            if side == "decoder":
                norm(f"{target}/attention/layer_norm", f"{source}.encoder_attn_layer_norm")
                linear(f"{target}/attention/linear_0", f"{source}.encoder_attn.q_proj")
                fused(
                    f"{target}/attention/linear_1", f"{source}.encoder_attn", ("k_proj", "v_proj")
                )
                linear(f"{target}/attention/linear_2", f"{source}.encoder_attn.out_proj")
    for conv in ("conv1", "conv2"):
        linear(f"encoder/{conv}", f"model.encoder.{conv}")
    put("decoder/embeddings/weight", state["model.decoder.embed_tokens.weight"])
    return out


def write_ct2(path: Path, variables: dict[str, np.ndarray], *, version: int = 6) -> bytes:
    """Write ``variables`` (+ the decoder projection alias) as a model.bin; returns its bytes."""
    data = struct.pack("<I", version) + _string("WhisperSpec") + struct.pack("<I", 3)
    data += struct.pack("<I", len(variables))
    for name in sorted(variables):
        data += _variable(name, variables[name])
    data += struct.pack("<I", 1)
    data += _string("decoder/projection/weight") + _string("decoder/embeddings/weight")
    Path(path).write_bytes(data)
    return data


def tiny_whisper(seed: int = 0, **changes):
    """A random 2-layer encoder / 1-layer decoder WhisperForConditionalGeneration."""
    import transformers

    options = dict(
        d_model=32,
        encoder_layers=2,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        num_mel_bins=80,
        max_source_positions=50,
        max_target_positions=16,
        vocab_size=100,
        pad_token_id=0,
        bos_token_id=0,
        eos_token_id=0,
        decoder_start_token_id=1,
    )
    options.update(changes)
    torch.manual_seed(seed)
    model = transformers.WhisperForConditionalGeneration(transformers.WhisperConfig(**options))
    with torch.no_grad():  # random biases everywhere, so a swapped bias cannot pass unseen
        for name, parameter in model.named_parameters():
            if name.endswith("bias"):
                parameter.normal_(0, 0.1)
    return model.eval()
