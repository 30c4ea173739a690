"""The `lapsv` command line, run as a user would."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np

from lapsv.cli import main


def test_embed_builtin_ge2e_on_real_clips(tmp_path, clips, capsys):
    out = tmp_path / "emb.npz"
    code = main(["embed", "ge2e", *map(str, clips.values()), "--out", str(out)])
    assert code == 0
    assert "embedded 4 of 4 files" in capsys.readouterr().out
    data = np.load(out)
    ids, embeddings = list(data["ids"]), data["embeddings"]
    assert embeddings.shape == (4, 256)
    e = dict(zip([i.split("/")[-1] for i in ids], embeddings, strict=True))
    assert (
        e["speaker_a_1.flac"] @ e["speaker_a_2.flac"]
        > e["speaker_a_1.flac"] @ e["speaker_b_1.flac"]
    )


def test_embed_folder_keeps_going_past_bad_files(tmp_path, clips, capsys):
    folder = tmp_path / "audio"
    folder.mkdir()
    for path in clips.values():
        shutil.copy(path, folder / path.name)
    (folder / "corrupt.wav").write_bytes(b"not audio at all" * 100)
    (folder / "empty.wav").write_bytes(b"")
    out = tmp_path / "emb.npz"
    code = main(["embed", "ge2e", str(folder), "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 1
    assert "embedded 4 of 6 files" in captured.out
    assert "corrupt.wav: cannot decode" in captured.err
    assert "empty.wav: cannot decode" in captured.err
    assert np.load(out)["embeddings"].shape == (4, 256)


def test_missing_model_is_an_error_message_not_a_traceback(tmp_path, clips, capsys):
    code = main(["embed", str(tmp_path / "nope"), str(clips["speaker_a_1"])])
    assert code == 2
    assert "error:" in capsys.readouterr().err


def test_console_script_help():
    result = subprocess.run(
        [sys.executable, "-m", "lapsv.cli", "embed", "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0 and "--batch_size" in result.stdout


def test_info_on_a_saved_model(tmp_path, capsys):
    from lapsv import SpeakerModel
    from lapsv.config import ModelConfig

    model = SpeakerModel.build(ModelConfig())
    model.save(tmp_path / "m")
    assert main(["info", str(tmp_path / "m")]) == 0
    out = capsys.readouterr().out
    n_backend = sum(p.numel() for p in model.backend.parameters())
    assert n_backend == 923_872  # LAP+ASTP on GE2E's 3 layers of 256
    assert f"backend parameters: {n_backend:,}" in out
    assert "aggregation: lap" in out


def test_inspect_plots_lap_layer_scores(tmp_path, clips, capsys):
    from lapsv import SpeakerModel
    from lapsv.config import ModelConfig

    model_dir = SpeakerModel.build(ModelConfig()).save(tmp_path / "m")
    plot = tmp_path / "layers.png"
    assert main(["inspect", str(model_dir), str(clips["speaker_a_1"]), "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert "lap layer weights: 16 head(s) x 351 frames x 3 layers" in out
    assert "max over layers: cells won per layer" in out and "of 256 channels" in out
    assert plot.stat().st_size > 20_000
