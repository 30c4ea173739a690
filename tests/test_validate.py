"""Data validation before training: one report of every problem, before any model is built;
``data.drop_invalid`` / ``--drop-invalid`` trains on the rest."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import soundfile

from conftest import tiny_hf_config
from lapsv.cli import main
from lapsv.config import BackendConfig, FrontendConfig, ModelConfig
from lapsv.data.manifest import Utterance, read_manifest, write_manifest
from lapsv.data.validate import DataError, validate_manifest
from lapsv.training import train
from lapsv.training.config import DataConfig, OptimConfig, TrainConfig
from synthetic import make_corpus


@pytest.fixture
def broken(tmp_path):
    """A training manifest with one problem of every kind (and 6 good speakers)."""
    paths = make_corpus(tmp_path)
    audio = paths["audio"]
    rng = np.random.default_rng(0)
    good = list(read_manifest(paths["train"]).utterances)
    (audio / "bad").mkdir()
    (audio / "bad" / "garbage.wav").write_bytes(b"RIFF\x00\x00garbage" * 20)
    soundfile.write(audio / "bad" / "short.wav", 0.1 * rng.normal(size=1600), 16000)
    soundfile.write(audio / "bad" / "8k.wav", 0.1 * rng.normal(size=16000), 8000)
    soundfile.write(audio / "bad" / "lonely.wav", 0.1 * rng.normal(size=16000), 16000)
    bad = [
        Utterance("bad/missing.wav", "spk00", 1.0),
        Utterance("bad/garbage.wav", "spk01", 1.0),
        Utterance(good[0].utt, "spk02", 1.0),  # the same id again
        Utterance("bad/short.wav", "spk03", 0.1),
        Utterance("bad/8k.wav", "spk04", 1.0),
        Utterance("bad/lonely.wav", "loner", 1.0),  # a speaker with one utterance
    ]
    manifest = tmp_path / "broken.tsv"
    write_manifest(manifest, good + bad, root=audio)
    return {**paths, "broken": manifest}


def test_every_problem_in_one_report(broken):
    report = validate_manifest(broken["broken"], crop_seconds=0.5, min_utterances=2)
    assert report.counts() == {
        "missing": 1,
        "unreadable": 1,
        "duplicate": 1,
        "sample_rate": 1,
        "too_short": 1,
        "too_few": 1,
    }
    text = report.format()
    for expected in ("bad/missing.wav", "garbage.wav", "row 1", "8000 Hz", "0.10 s", "loner"):
        assert expected in text
    valid = report.valid_manifest()
    assert len(valid) == 36 and "loner" not in valid.speakers
    assert validate_manifest(valid, crop_seconds=0.5, min_utterances=2).ok


def test_validation_reads_headers_only(broken, monkeypatch):
    def no_decoding(*args, **kwargs):
        raise AssertionError("validation must not decode audio")

    monkeypatch.setattr(soundfile, "read", no_decoding)
    monkeypatch.setattr(soundfile.SoundFile, "read", no_decoding)
    assert not validate_manifest(broken["broken"], crop_seconds=0.5).ok


def config(paths, **data) -> TrainConfig:
    return TrainConfig(
        model=ModelConfig(
            frontend=FrontendConfig(
                name="hf", hf_config=tiny_hf_config("wavlm").to_dict(), freeze=True
            ),
            backend=BackendConfig(lap_heads=4, lap_out_dim=32, embed_dim=16),
        ),
        data=DataConfig(
            train_manifest=str(paths["broken"]), crop_seconds=0.5, num_workers=0, **data
        ),
        optim=OptimConfig(epochs=1, batch_size=12),
    )


def test_training_stops_before_building_anything_with_the_report(broken, tmp_path, monkeypatch):
    import lapsv.training.loop as loop

    def no_model(*args, **kwargs):
        raise AssertionError("the frontend must not be built from invalid data")

    monkeypatch.setattr(loop, "build_frontend", no_model)
    with pytest.raises(DataError) as error:
        train(config(broken), tmp_path / "run", progress=False)
    message = str(error.value)
    assert "6 problem(s)" in message and "drop_invalid" in message
    assert "bad/missing.wav" in message and "loner" in message
    listing = (tmp_path / "run" / "data_problems_train.txt").read_text()
    assert "garbage.wav" in listing


def test_drop_invalid_trains_on_the_rest(broken, tmp_path):
    with pytest.warns(UserWarning, match="dropped"):
        train(config(broken, drop_invalid=True), tmp_path / "run", progress=False)
    speakers = (tmp_path / "run" / "speakers.txt").read_text().split()
    assert speakers == [f"spk{s:02d}" for s in range(6)]


def test_cli_validate_and_drop_invalid(broken, tmp_path, capsys):
    assert main(["data", "validate", str(broken["broken"]), "--crop-seconds", "0.5"]) == 1
    out = capsys.readouterr().out
    assert "missing files (1)" in out and "speakers with too few utterances (1)" in out
    assert main(["data", "validate", str(broken["train"])]) == 0
    recipe = tmp_path / "recipe.yaml"
    from lapsv.config import dump_yaml, to_dict

    recipe.write_text(dump_yaml(to_dict(dataclasses.replace(config(broken)))))
    out_dir = tmp_path / "run"
    assert main(["train", str(recipe), "--out", str(out_dir), "--quiet"]) == 2
    assert "drop_invalid" in capsys.readouterr().err
    with pytest.warns(UserWarning, match="dropped"):
        code = main(["train", str(recipe), "--out", str(out_dir), "--quiet", "--drop-invalid"])
    assert code == 0


def test_audio_shorter_than_the_crop_is_repeated_with_a_warning(broken, tmp_path, monkeypatch):
    """Utterances between data.min_seconds and the crop are usable (training repeats them):
    a warning, not a problem; data.min_seconds at the crop makes them problems."""
    import lapsv.training.loop as loop

    class BuiltError(Exception):
        """The model is being built: validation passed."""

    def built(*args, **kwargs):
        raise BuiltError

    monkeypatch.setattr(loop, "build_frontend", built)
    clean = {**broken, "broken": broken["train"]}  # utterances of 1 to 3 s
    long_crop = dataclasses.replace(
        config(clean), data=dataclasses.replace(config(clean).data, crop_seconds=2.5)
    )
    with (
        pytest.warns(UserWarning, match=r"utterances are shorter than the 2.5 s crop"),
        pytest.raises(BuiltError),
    ):
        train(long_crop, tmp_path / "run", progress=False)
    strict = dataclasses.replace(
        long_crop, data=dataclasses.replace(long_crop.data, min_seconds=2.5)
    )
    with pytest.raises(DataError, match=r"audio too short \(\d+\)"):
        train(strict, tmp_path / "run", progress=False)
