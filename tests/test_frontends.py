"""Frontends: HF encoders from tiny random configs, the shipped GE2E weights, padding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers

from conftest import assert_padding_invariant, tiny_hf_config
from lapsv import GE2EEncoder, GE2EFrontend, HFFrontend, SpeakerModel, build_backend
from lapsv.audio import load_audio, pad_batch
from lapsv.errors import ModelLoadError
from lapsv.frontends.features import MelSpectrogram, mel_filterbank

ENCODERS = [
    ("wavlm", "layer"),
    ("wavlm", "group"),
    ("hubert", "layer"),
    ("wav2vec2", "group"),
    ("data2vec-audio", "layer"),
]


def padded_batch(lengths, seed=0):
    rng = np.random.default_rng(seed)
    return pad_batch([rng.normal(0, 0.1, n).astype(np.float32) for n in lengths])


@pytest.mark.parametrize(("model_type", "norm"), ENCODERS)
def test_hf_frontend_returns_every_layer_with_valid_frame_counts(model_type, norm):
    frontend = HFFrontend.from_config(tiny_hf_config(model_type, norm)).eval()
    waveforms, lengths = padded_batch([8000, 5000, 3210])
    hidden, frames = frontend(waveforms, lengths)
    assert hidden.shape[:2] == (3, 3)  # 2 Transformer layers + the CNN/projection output
    assert hidden.shape[-1] == 32
    for row, length in enumerate(lengths.tolist()):
        alone, _ = frontend(waveforms[row : row + 1, :length], lengths[row : row + 1])
        assert frames[row] == alone.shape[2]  # valid frames = frames of the unpadded input


@pytest.mark.parametrize(("model_type", "norm"), ENCODERS)
def test_hf_embedding_is_independent_of_padding(model_type, norm):
    frontend = HFFrontend.from_config(tiny_hf_config(model_type, norm))
    backend = build_backend("lap", "astp", in_dim=32, n_layers=3, lap_heads=4, lap_out_dim=32)
    model = SpeakerModel(frontend, backend).eval()
    rng = np.random.default_rng(0)
    waves = [rng.normal(0, 0.1, n).astype(np.float32) for n in (9000, 4000, 6400, 2500)]
    assert_padding_invariant(model.embed_batch, waves)


def test_attention_mask_only_for_layer_norm_encoders():
    assert HFFrontend.from_config(tiny_hf_config("wavlm", "layer")).uses_attention_mask
    assert not HFFrontend.from_config(tiny_hf_config("wav2vec2", "group")).uses_attention_mask
    assert not HFFrontend.from_config(tiny_hf_config("data2vec-audio")).uses_attention_mask


@pytest.mark.parametrize(
    ("model_type", "model_class"),
    [
        ("hubert", transformers.HubertModel),
        ("wavlm", transformers.WavLMModel),
        ("wav2vec2", transformers.Wav2Vec2Model),
        ("data2vec-audio", transformers.Data2VecAudioModel),
    ],
)
def test_from_pretrained_local_directory_loads_the_right_class(tmp_path, model_type, model_class):
    config = tiny_hf_config(model_type)
    config.layerdrop = 0.1
    original = model_class(config).eval()
    original.save_pretrained(tmp_path)
    frontend = HFFrontend.from_pretrained(str(tmp_path)).eval()
    assert type(frontend.model) is model_class  # "hubert" is HuBERT, not wav2vec 2.0
    assert frontend.model.config.layerdrop == 0.0  # every layer must feed LAP
    waveforms, lengths = padded_batch([4000])
    expected = torch.stack(
        original(
            waveforms, attention_mask=torch.ones_like(waveforms).long(), output_hidden_states=True
        ).hidden_states,
        dim=1,
    )
    torch.testing.assert_close(frontend(waveforms, lengths).hidden_states, expected)


def test_from_pretrained_gives_a_clear_error_offline(tmp_path):
    with pytest.raises(ModelLoadError, match="local directory"):
        HFFrontend.from_pretrained(str(tmp_path / "not-a-model"))
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(ModelLoadError, match="not a supported speech encoder"):
        HFFrontend.from_pretrained(str(tmp_path))


def test_frozen_frontend_has_no_trainable_parameters_and_stays_in_eval():
    frontend = HFFrontend.from_config(tiny_hf_config("wavlm"), freeze=True)
    frontend.train()
    assert not frontend.training and not frontend.model.training
    assert not any(p.requires_grad for p in frontend.parameters())


def test_fine_tuning_keeps_the_cnn_frozen_and_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    plain = HFFrontend.from_config(tiny_hf_config("wavlm"), freeze=False)
    checkpointed = HFFrontend.from_config(
        tiny_hf_config("wavlm"), freeze=False, gradient_checkpointing=True
    )
    checkpointed.load_state_dict(plain.state_dict())
    assert not any(p.requires_grad for p in plain.model.feature_extractor.parameters())
    assert (
        checkpointed.model.is_gradient_checkpointing and not plain.model.is_gradient_checkpointing
    )
    waveforms, lengths = padded_batch([6000, 4000])
    for frontend in (plain, checkpointed):
        frontend.train()
        torch.manual_seed(1)  # same dropout masks in both runs
        frontend(waveforms, lengths).hidden_states.pow(2).mean().backward()
    for (name, a), (_, b) in zip(
        plain.named_parameters(), checkpointed.named_parameters(), strict=True
    ):
        if a.requires_grad:
            torch.testing.assert_close(a.grad, b.grad, msg=name)


def test_frozen_frontend_backward_leaves_it_untouched_and_trains_every_backend_weight():
    from lapsv.losses import AAMSoftmax

    frontend = HFFrontend.from_config(tiny_hf_config("wavlm"), freeze=True)
    backend = build_backend("lap", "astp", in_dim=32, n_layers=3, lap_heads=4, lap_out_dim=32)
    model = SpeakerModel(frontend, backend).train()
    loss_fn = AAMSoftmax(192, 5)
    before = {k: v.clone() for k, v in frontend.state_dict().items()}
    optimizer = torch.optim.Adam([*model.parameters(), *loss_fn.parameters()], lr=1e-2)
    waveforms, lengths = padded_batch([6000, 6000, 6000, 6000])
    loss = loss_fn(model(waveforms, lengths), torch.tensor([0, 1, 2, 3])).loss
    loss.backward()
    for name, parameter in backend.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    assert all(p.grad is None for p in frontend.parameters())
    optimizer.step()
    for name, tensor in frontend.state_dict().items():
        assert torch.equal(tensor, before[name]), name


# --- GE2E: the offline default, with the weights shipped in the resemblyzer wheel ---


@pytest.fixture(scope="module")
def ge2e_encoder() -> GE2EEncoder:
    return GE2EEncoder.from_pretrained()


def test_ge2e_frontend_exposes_three_lstm_layers(clips):
    frontend = GE2EFrontend.from_pretrained()
    waveforms, lengths = pad_batch(
        [load_audio(clips["speaker_a_1"]), load_audio(clips["speaker_b_1"])]
    )
    hidden, frames = frontend(waveforms, lengths)
    assert hidden.shape == (2, 3, 1 + waveforms.shape[1] // 160, 256)
    assert frames.tolist() == (1 + lengths // 160).tolist()
    assert not any(p.requires_grad for p in frontend.parameters())


def test_ge2e_speaker_model_is_independent_of_padding(clips):
    backend = build_backend("lap", "astp", in_dim=256, n_layers=3)
    model = SpeakerModel(GE2EFrontend.from_pretrained(), backend).eval()
    assert_padding_invariant(model.embed_batch, [load_audio(path) for path in clips.values()])


def test_ge2e_encoder_batched_equals_one_by_one(ge2e_encoder, clips):
    waves = [load_audio(path) for path in clips.values()]
    assert_padding_invariant(ge2e_encoder.embed_batch, waves, atol=1e-5)


def test_ge2e_separates_the_two_test_speakers(ge2e_encoder, clips):
    waves = {name: load_audio(path) for name, path in clips.items()}
    waveforms, lengths = pad_batch(list(waves.values()))
    e = dict(zip(waves, ge2e_encoder.embed_batch(waveforms, lengths), strict=True))
    same = min(e["speaker_a_1"] @ e["speaker_a_2"], e["speaker_b_1"] @ e["speaker_b_2"])
    different = max(
        e[a] @ e[b] for a in ("speaker_a_1", "speaker_a_2") for b in ("speaker_b_1", "speaker_b_2")
    )
    assert same > different + 0.05


def test_mel_filterbank_and_spectrogram_match_librosa():
    librosa = pytest.importorskip("librosa")
    expected = librosa.filters.mel(sr=16000, n_fft=400, n_mels=40)
    np.testing.assert_allclose(mel_filterbank(16000, 400, 40), expected, rtol=1e-4, atol=1e-7)
    wave = np.random.default_rng(0).normal(0, 0.1, 12345).astype(np.float32)
    ours = MelSpectrogram(16000, n_fft=400, hop=160, n_mels=40)(torch.from_numpy(wave)[None])[0]
    theirs = librosa.feature.melspectrogram(
        y=wave, sr=16000, n_fft=400, hop_length=160, n_mels=40
    ).T
    np.testing.assert_allclose(ours.numpy(), theirs, rtol=1e-3, atol=1e-5)


def test_ge2e_reproduces_resemblyzer_embed_utterance(ge2e_encoder, clips):
    resemblyzer = pytest.importorskip("resemblyzer", exc_type=ImportError)
    voice_encoder = resemblyzer.VoiceEncoder(device="cpu", verbose=False)
    for path in clips.values():
        wave = resemblyzer.preprocess_wav(path)  # resemblyzer's own loading, VAD and gain
        theirs = voice_encoder.embed_utterance(wave)
        ours = ge2e_encoder.embed_batch(torch.from_numpy(wave)[None], torch.tensor([len(wave)]))[0]
        cosine = float(np.dot(theirs, ours.numpy()) / np.linalg.norm(theirs))
        assert cosine > 0.995, (path.name, cosine)
