"""Training stages 1-3 end to end on a tiny random WavLM and a generated corpus."""

from __future__ import annotations

import csv
import dataclasses

import pytest
import safetensors.torch
import soundfile
import torch

import lapsv
from conftest import tiny_train_config
from lapsv.config import FrontendConfig, ModelConfig
from lapsv.data.dataset import CropConfig, CropDataset, SpeakerBalancedSampler
from lapsv.data.manifest import read_manifest
from lapsv.errors import ConfigError
from lapsv.training import train
from lapsv.training.config import LossConfig, OptimConfig, TrainConfig
from synthetic import make_corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    paths = make_corpus(root)
    rng = torch.Generator().manual_seed(0)
    for kind in ("noise", "music", "speech"):  # a MUSAN-shaped folder
        folder = root / "musan" / kind
        folder.mkdir(parents=True)
        soundfile.write(folder / "a.wav", torch.randn(16000, generator=rng).numpy() * 0.1, 16000)
    rir = torch.zeros(1600)
    rir[0], rir[400] = 1.0, 0.3
    (root / "rirs" / "simulated_rirs").mkdir(parents=True)
    soundfile.write(root / "rirs" / "simulated_rirs" / "r.wav", rir.numpy(), 16000)
    paths.update(musan=root / "musan", rirs=root / "rirs")
    return paths


def stage_config(corpus, **changes) -> TrainConfig:
    return tiny_train_config(corpus, data={"speed_perturb": True}, **changes)


def test_three_stages_train_validate_checkpoint_and_average(tmp_path, corpus):
    stage1 = tmp_path / "stage1"
    outputs = train(stage_config(corpus), stage1, progress=False)
    assert set(outputs) == {"lap_astp", "superb_astp"}
    rows = list(csv.DictReader((stage1 / "metrics.csv").read_text().splitlines()))
    assert len(rows) == 6  # 3 epochs x 2 systems
    assert all(0 <= float(r["val_eer"]) <= 100 for r in rows)
    assert float(rows[-1]["margin"]) == pytest.approx(0.3)  # ramp finished after 2 epochs
    assert len(list((stage1 / "checkpoints").glob("epoch-*"))) <= 3  # best 2 + last
    classifier = safetensors.torch.load_file(str(stage1 / "lap_astp" / "classifier.safetensors"))
    assert classifier["weight"].shape == (6 * 3 * 3, 16)  # 6 speakers x 3 speeds x 3 sub-centers
    assert (stage1 / "curves.png").stat().st_size > 10_000
    model = lapsv.load_model(outputs["lap_astp"])
    assert model.embed_batch(torch.randn(1, 8000), torch.tensor([8000])).shape == (1, 16)

    joint = dataclasses.replace(
        stage_config(corpus, stage=2, compare={}, init_from=str(stage1)),
        model=ModelConfig(frontend=FrontendConfig(name="hf", freeze=False)),
        optim=OptimConfig(epochs=1, batch_size=12, lr=1e-3, final_lr=1e-4),
    )
    joint = dataclasses.replace(joint, data=dataclasses.replace(joint.data, speed_perturb=False))
    stage2 = tmp_path / "stage2"
    outputs2 = train(joint, stage2, progress=False)
    classifier2 = safetensors.torch.load_file(str(stage2 / "lap_astp" / "classifier.safetensors"))
    assert classifier2["weight"].shape == (6 * 3, 16)  # no speed-perturbation classes
    before = lapsv.load_model(outputs["lap_astp"]).encoder.frontend.state_dict()
    after = lapsv.load_model(outputs2["lap_astp"]).encoder.frontend.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the frontend was trained

    large_margin = dataclasses.replace(
        joint,
        stage=3,
        init_from=str(stage2),
        data=dataclasses.replace(joint.data, crop_seconds=1.0),
        optim=OptimConfig(epochs=1, batch_size=12, grad_accum=2, lr=1e-4, final_lr=1e-4),
        loss=LossConfig(margin=0.5, initial_margin=0.5, margin_ramp_epochs=0, topk=0),
    )
    outputs3 = train(large_margin, tmp_path / "stage3", progress=False)
    rows = list(csv.DictReader((tmp_path / "stage3" / "metrics.csv").read_text().splitlines()))
    assert float(rows[-1]["margin"]) == 0.5
    assert lapsv.load_model(outputs3["lap_astp"]).embed_dim == 16


def test_rerun_resumes_from_the_last_checkpoint(tmp_path, corpus):
    config = stage_config(corpus, compare={}, optim=OptimConfig(epochs=2, batch_size=12))
    train(config, tmp_path, progress=False)
    history = (tmp_path / "metrics.csv").read_text().splitlines()
    assert len(history) == 3
    train(config, tmp_path, progress=False)  # finished: nothing to redo
    assert (tmp_path / "metrics.csv").read_text().splitlines() == history
    # a run saved before a setting existed, rerun with other operational settings: resumes
    saved = (tmp_path / "config.yaml").read_text().splitlines()
    (tmp_path / "config.yaml").write_text("\n".join(s for s in saved if "max_skipped" not in s))
    train(dataclasses.replace(config, checkpoint_every_steps=5), tmp_path, progress=False)
    assert (tmp_path / "metrics.csv").read_text().splitlines() == history
    with pytest.raises(ConfigError, match="different recipe"):
        train(dataclasses.replace(config, seed=1), tmp_path, progress=False)


def test_compare_needs_a_frozen_frontend(tmp_path, corpus):
    config = stage_config(corpus)
    config = dataclasses.replace(
        config,
        model=dataclasses.replace(
            config.model,
            frontend=FrontendConfig(
                name="hf", hf_config=config.model.frontend.hf_config, freeze=False
            ),
        ),
    )
    with pytest.raises(ConfigError, match="frozen frontend"):
        train(config, tmp_path, progress=False)


def test_crops_have_fixed_length_and_speed_classes(corpus):
    manifest = read_manifest(corpus["train"])
    dataset = CropDataset(manifest, CropConfig(seconds=2.5, speed_factors=(1.0, 0.9, 1.1)))
    labels = set()
    for index in range(len(dataset)):
        wave, label = dataset[index]
        assert wave.shape == (40000,)  # utterances are 1-3 s: short ones are repeated
        labels.add(label)
    assert dataset.n_classes == 18
    assert max(labels) >= 6  # perturbed copies got new classes
    first = dataset[0][0]
    assert torch.equal(dataset[0][0], first)  # deterministic per (seed, epoch, index)
    dataset.set_epoch(1)
    assert not torch.equal(dataset[0][0], first)


def test_balanced_sampler_draws_speakers_uniformly():
    speakers = ["a"] * 90 + ["b"] * 10
    sampler = SpeakerBalancedSampler(speakers, seed=0)
    drawn = [speakers[i] for i in sampler]
    assert len(drawn) == 100
    assert 35 <= drawn.count("b") <= 65


def test_prepare_a_voxceleb_shaped_tree(tmp_path):
    import numpy as np

    from lapsv.cli import main

    rng = np.random.default_rng(0)
    for s in range(6):
        for video in ("abc", "xyz"):
            for n in range(2):
                path = tmp_path / "vox" / f"id1000{s}" / video / f"0000{n}.wav"
                path.parent.mkdir(parents=True, exist_ok=True)
                soundfile.write(path, rng.normal(0, 0.1, 16000).astype("float32"), 16000)
    (tmp_path / "vox" / "veri_test2.txt").write_text(
        "1 id10000/abc/00000.wav id10000/xyz/00001.wav\n"
    )
    out = tmp_path / "prepared"
    assert (
        main(
            [
                "data",
                "prepare-voxceleb",
                str(tmp_path / "vox"),
                "--out",
                str(out),
                "--val_speakers",
                "2",
            ]
        )
        == 0
    )
    train_set, val_set = read_manifest(out / "train.tsv"), read_manifest(out / "val.tsv")
    assert (len(train_set.speakers), len(val_set.speakers)) == (4, 2)
    assert not set(train_set.speakers) & set(val_set.speakers)
    assert len(train_set) == 16
    assert train_set.audio_path(train_set.utterances[0]).is_file()
    trials = (out / "trials" / "val.txt").read_text().split("\n")[:-1]
    labels = [line.split()[0] for line in trials]
    assert labels.count("1") == 12 and labels.count("0") == 12  # all target pairs, balanced
    assert (out / "trials" / "veri_test2.txt").is_file()


def test_cached_frontend_views_train_every_backend(tmp_path, corpus):
    config = stage_config(corpus, optim=OptimConfig(epochs=3, batch_size=12))
    config = dataclasses.replace(config, data=dataclasses.replace(config.data, cached_views=2))
    outputs = train(config, tmp_path, progress=False)
    rows = list(csv.DictReader((tmp_path / "metrics.csv").read_text().splitlines()))
    assert len(rows) == 6
    assert {r["system"] for r in rows} == {"lap_astp", "superb_astp"}
    assert lapsv.load_model(outputs["superb_astp"]).embed_dim == 16


def test_feature_cache_views_are_distinct_and_reused(corpus):
    from lapsv import GE2EFrontend
    from lapsv.training.feature_cache import FrozenFeatureCache

    manifest = read_manifest(corpus["train"])
    dataset = CropDataset(manifest, CropConfig(seconds=0.5, speed_factors=(1.0, 0.9, 1.1)))
    cache = FrozenFeatureCache(
        GE2EFrontend(), dataset, views=2, batch_size=6, device="cpu", progress=False
    )
    first = [b[0] for b in cache.batches(0)]
    assert len(first) == len(dataset) // 6
    assert first[0].shape == (6, 3, 51, 256)
    assert len(cache.store) == 1
    list(cache.batches(1))
    list(cache.batches(2))  # view 0 again: nothing new computed
    assert len(cache.store) == 2
    assert not torch.equal(cache.store[0][0], cache.store[1][0])


class NanGradient(torch.autograd.Function):
    """Identity forward, NaN gradient backward: a finite loss whose gradients are not."""

    @staticmethod
    def forward(ctx, value):
        return value.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


def poison_crops(monkeypatch, calls):
    """Crops number ``calls`` (counted over the run) come out NaN, like a corrupt file."""
    original = CropDataset.__getitem__
    count = [0]

    def getitem(self, index):
        wave, label = original(self, index)
        count[0] += 1
        return (wave * float("nan"), label) if count[0] in calls else (wave, label)

    monkeypatch.setattr(CropDataset, "__getitem__", getitem)


def all_finite(path) -> bool:
    tensors = safetensors.torch.load_file(str(path))
    return all(torch.isfinite(t).all() for t in tensors.values() if t.is_floating_point())


def nan_config(corpus, **changes):
    config = stage_config(corpus, compare={}, optim=OptimConfig(epochs=2, batch_size=6))
    data = dataclasses.replace(config.data, speed_perturb=False, musan=None, rirs=None)
    return dataclasses.replace(config, data=data, **changes)


def test_a_nan_batch_is_skipped_counted_and_leaves_the_model_finite(tmp_path, corpus, monkeypatch):
    poison_crops(monkeypatch, {6 * 2 + 3})  # one crop of the 3rd batch (step 3)
    with pytest.warns(RuntimeWarning, match=r"lap_astp: step 3 skipped, non-finite"):
        outputs = train(nan_config(corpus), tmp_path, progress=False)
    rows = list(csv.DictReader((tmp_path / "metrics.csv").read_text().splitlines()))
    assert [r["skipped_steps"] for r in rows] == ["1", "0"]
    assert all(float(r["loss"]) > 0 for r in rows)  # the NaN loss is not in the average
    # weights and normalisation statistics (which the NaN batch reached) stay finite
    assert all_finite(outputs["lap_astp"] / "model.safetensors")
    model = lapsv.load_model(outputs["lap_astp"])
    assert torch.isfinite(model.embed_batch(torch.randn(1, 8000), torch.tensor([8000]))).all()


def test_a_non_finite_gradient_with_a_finite_loss_is_skipped(tmp_path, corpus, monkeypatch):
    from lapsv.losses import AAMSoftmax

    original, count = AAMSoftmax.forward, [0]

    def forward(self, embeddings, labels):
        output = original(self, embeddings, labels)
        count[0] += 1
        if count[0] == 4:
            return output._replace(loss=NanGradient.apply(output.loss))
        return output

    monkeypatch.setattr(AAMSoftmax, "forward", forward)
    with pytest.warns(RuntimeWarning, match="step 4 skipped"):
        outputs = train(nan_config(corpus), tmp_path, progress=False)
    assert all_finite(outputs["lap_astp"] / "model.safetensors")
    summary = (tmp_path / "lap_astp" / "training.json").read_text()
    assert '"skipped_steps": 1' in summary


def test_non_finite_steps_in_a_row_stop_training_and_keep_the_last_checkpoint(
    tmp_path, corpus, monkeypatch
):
    from lapsv.training.loop import TrainingError

    poison_crops(monkeypatch, set(range(37, 1000)))  # every crop after the first epoch
    config = nan_config(corpus, max_skipped_steps=3)
    with (
        pytest.warns(RuntimeWarning, match="skipped"),
        pytest.raises(TrainingError, match="3 optimizer steps in a row") as stopped,
    ):
        train(config, tmp_path, progress=False)
    assert "epoch-001" in str(stopped.value)
    checkpoints = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert checkpoints == ["epoch-001"]
    assert all_finite(tmp_path / "checkpoints" / "epoch-001" / "lap_astp.safetensors")
    monkeypatch.undo()  # the data is fixed: the same command resumes and finishes
    outputs = train(config, tmp_path, progress=False)
    assert all_finite(outputs["lap_astp"] / "model.safetensors")
