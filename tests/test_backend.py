"""Backend: parameter counts, shapes, padding invariance, LAP/SUPERB properties, gradients."""

from __future__ import annotations

import itertools

import pytest
import torch

from lapsv import build_backend
from lapsv.errors import ConfigError
from lapsv.layers.aggregation import LayerAttentivePooling, PerLayerNorm, SuperbWeightedSum

AGGREGATIONS = ["lap", "superb", "last"]
SPEAKER_NETS = ["astp", "ecapa", "mhfa"]
SMALL = {"lap_heads": 4, "lap_out_dim": 32, "ecapa_channels": 64, "mhfa_heads": 4}


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())  # running stats are buffers


@pytest.mark.parametrize(
    ("in_dim", "n_layers", "expected"),
    [(1024, 25, 2_312_464), (768, 13, 1_714_480), (512, 7, 1_252_992)],  # last: Whisper-base
)
def test_lap_astp_parameter_count_matches_paper(in_dim, n_layers, expected):
    backend = build_backend("lap", "astp", in_dim=in_dim, n_layers=n_layers)
    assert count_parameters(backend) == expected
    normed = build_backend("lap", "astp", in_dim=in_dim, n_layers=n_layers, per_layer_norm=True)
    assert count_parameters(normed) == expected  # per-layer statistics are buffers only


def test_per_layer_norm_is_batchnorm_per_layer_and_channel():
    norm = PerLayerNorm(n_layers=3, in_dim=4)
    reference = torch.nn.BatchNorm1d(12, affine=False)
    scales = torch.tensor([1.0, 30.0, 500.0])[:, None, None]  # Whisper-like growth with depth
    for _ in range(3):  # batch statistics and running averages, as BatchNorm computes them
        hidden = torch.randn(5, 3, 20, 4) * scales + 7
        rows = hidden.transpose(2, 3).reshape(5, 12, 20)
        expected = reference(rows).view(5, 3, 4, 20).transpose(2, 3)
        assert torch.allclose(norm(hidden), expected, atol=1e-5)
    assert torch.allclose(norm.norm.running_var, reference.running_var)
    assert int(norm.norm.num_batches_tracked) == 3
    norm.eval(), reference.eval()
    expected = reference(rows).view(5, 3, 4, 20).transpose(2, 3)
    assert torch.allclose(norm(hidden), expected, atol=1e-5)


@pytest.mark.parametrize("aggregation", ["lap", "superb", "last", "layer"])
def test_per_layer_norm_keeps_padding_invariance(aggregation):
    options = {"layer_index": 1} if aggregation == "layer" else {}
    backend = build_backend(
        aggregation, "astp", in_dim=32, n_layers=5, per_layer_norm=True, **SMALL, **options
    )
    backend.train()(torch.randn(8, 5, 40, 32) * 50, torch.full((8,), 40))  # running statistics
    backend.eval()
    lengths = torch.tensor([40, 13])
    hidden = torch.randn(2, 5, 40, 32) * 50
    hidden[1, :, 13:] = 1e4
    with torch.no_grad():
        batched = backend(hidden, lengths)
        alone = backend(hidden[1:, :, :13], lengths[1:])
    assert (alone - batched[1]).abs().max() < 1e-4


def test_ecapa_widths_and_relative_size():
    lap_astp = count_parameters(build_backend("lap", "astp", in_dim=1024, n_layers=25))
    ecapa_512 = build_backend("superb", "ecapa", in_dim=1024, n_layers=25)
    ecapa_1024 = build_backend("superb", "ecapa", in_dim=1024, n_layers=25, ecapa_channels=1024)
    assert ecapa_512.network.temporal.stem.conv.out_channels == 512
    assert ecapa_1024.network.temporal.stem.conv.out_channels == 1024
    assert count_parameters(ecapa_1024) > 2 * lap_astp


@pytest.mark.parametrize(
    ("aggregation", "speaker_net"), list(itertools.product(AGGREGATIONS, SPEAKER_NETS))
)
def test_every_backend_gives_192_d_embeddings(aggregation, speaker_net):
    backend = build_backend(aggregation, speaker_net, in_dim=32, n_layers=5, **SMALL).eval()
    embeddings = backend(torch.randn(3, 5, 40, 32), torch.tensor([40, 33, 12]))
    assert embeddings.shape == (3, 192)
    assert torch.isfinite(embeddings).all()


@pytest.mark.parametrize(
    ("aggregation", "speaker_net"), list(itertools.product(AGGREGATIONS, SPEAKER_NETS))
)
def test_embedding_is_independent_of_padding_and_batch(aggregation, speaker_net):
    backend = build_backend(aggregation, speaker_net, in_dim=32, n_layers=5, **SMALL).eval()
    lengths = torch.tensor([57, 23, 40, 9])
    hidden = torch.randn(4, 5, 57, 32)
    for row, length in enumerate(lengths):  # padding filled with large garbage, not zeros
        hidden[row, :, length:] = 1e3 * torch.randn_like(hidden[row, :, length:])
    with torch.no_grad():
        batched = backend(hidden, lengths)
        other_batch = backend(hidden[[1, 3]], lengths[[1, 3]])
        for row, length in enumerate(lengths.tolist()):
            alone = backend(hidden[row : row + 1, :, :length], lengths[row : row + 1])
            assert (alone - batched[row]).abs().max() < 1e-4
        assert (other_batch - batched[[1, 3]]).abs().max() < 1e-4


def test_lap_scores_are_probabilities_per_head_frame_and_layer():
    lap = LayerAttentivePooling(n_layers=25, in_dim=64, n_heads=16, out_dim=32).eval()
    features, scores = lap(torch.randn(2, 25, 30, 64))
    assert features.shape == (2, 32, 30)
    assert scores.shape == (2, 16, 30, 25)
    assert scores.min() >= 0 and scores.max() <= 1
    assert scores.std() > 0  # time-dynamic, not a constant


def test_lap_winning_layers_are_the_layers_its_max_keeps():
    lap = LayerAttentivePooling(n_layers=5, in_dim=32, n_heads=4, out_dim=16).eval()
    hidden = torch.randn(2, 5, 20, 32)
    winners = lap.winning_layers(hidden)  # (B, T, D)
    assert winners.shape == (2, 20, 32) and winners.unique().numel() > 1
    x, scores = lap._scored_layers(hidden)  # (B, L, T, H, d), (B, T, H, L)
    weighted = (x * scores.permute(0, 3, 1, 2).unsqueeze(-1)).flatten(3)  # (B, L, T, D)
    kept = weighted.gather(1, winners.unsqueeze(1)).squeeze(1)
    assert torch.equal(kept, weighted.max(dim=1).values)
    expected = lap.out_norm(lap.out_proj(kept.reshape(-1, 32))).view(2, 20, 16).transpose(1, 2)
    assert torch.allclose(lap(hidden)[0], expected, atol=1e-5)


def test_lap_depends_on_layer_order_unlike_an_average():
    hidden = torch.randn(2, 7, 20, 32)
    permutation = torch.tensor([6, 0, 5, 1, 4, 2, 3])
    lap = LayerAttentivePooling(n_layers=7, in_dim=32, n_heads=4, out_dim=16).eval()
    lap_change = (lap(hidden)[0] - lap(hidden[:, permutation])[0]).abs().max()
    superb = SuperbWeightedSum(n_layers=7, in_dim=32)  # uniform weights: a plain average
    superb_change = (superb(hidden)[0] - superb(hidden[:, permutation])[0]).abs().max()
    assert lap_change > 1e-2
    assert superb_change < 1e-5


def test_superb_weights_sum_to_one():
    superb = SuperbWeightedSum(n_layers=13, in_dim=8)
    with torch.no_grad():
        superb.layer_logits.normal_()
    _, weights = superb(torch.randn(2, 13, 4, 8))
    assert weights.shape == (2, 1, 4, 13)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 1, 4))


@pytest.mark.parametrize(
    ("aggregation", "speaker_net"), list(itertools.product(["lap", "superb"], SPEAKER_NETS))
)
def test_every_backend_parameter_gets_a_gradient(aggregation, speaker_net):
    backend = build_backend(aggregation, speaker_net, in_dim=32, n_layers=5, **SMALL).train()
    embeddings = backend(torch.randn(4, 5, 30, 32), torch.tensor([30, 30, 20, 25]))
    embeddings.pow(2).sum().backward()
    for name, parameter in backend.named_parameters():
        assert parameter.grad is not None, name
        assert parameter.grad.abs().sum() > 0, name


def test_backend_weights_are_xavier_with_zero_biases():
    backend = build_backend("lap", "astp", in_dim=64, n_layers=5, lap_heads=4, lap_out_dim=32)
    projection = backend.network.temporal.head.projection
    bound = (6 / (projection.in_features + projection.out_features)) ** 0.5
    assert projection.weight.abs().max() <= bound
    assert torch.count_nonzero(projection.bias) == 0


def test_unknown_names_and_options_are_clear_errors():
    with pytest.raises(ConfigError, match="unknown aggregation 'mean'"):
        build_backend("mean", "astp", in_dim=32, n_layers=3)
    with pytest.raises(ConfigError, match="unknown speaker_net"):
        build_backend("lap", "xvector", in_dim=32, n_layers=3)
    with pytest.raises(ConfigError, match="lap_head"):
        build_backend("lap", "astp", in_dim=32, n_layers=3, lap_head=4)
    with pytest.raises(ValueError, match="divisible"):
        build_backend("lap", "astp", in_dim=30, n_layers=3)


def test_lap_identity_init_starts_from_the_frontend_features():
    backend = build_backend("lap", "astp", in_dim=32, n_layers=3, lap_heads=4, lap_init="identity")
    projection = backend.network.aggregation.in_proj
    torch.testing.assert_close(projection.weight, torch.eye(32))
    default = build_backend("lap", "astp", in_dim=32, n_layers=3, lap_heads=4)
    assert not torch.equal(default.network.aggregation.in_proj.weight, torch.eye(32))
    with pytest.raises(ValueError, match="lap_init"):
        build_backend("lap", "astp", in_dim=32, n_layers=3, lap_heads=4, lap_init="zeros")


def test_astp_attention_equals_its_definition_on_the_global_context():
    """The attention sees cat([x, mean, std]) (B, 3C, T) (METHOD.md §3); the pooling
    applies the mean/std columns once per utterance instead, with the same logits."""
    from lapsv.layers.masking import frame_mask, masked_mean_std
    from lapsv.layers.pooling import AttentiveStatisticsPooling

    torch.manual_seed(0)
    pool = AttentiveStatisticsPooling(16, bottleneck=8)
    with torch.no_grad():
        pool.attention[0].bias.normal_()
    lengths = torch.tensor([30, 17, 5])
    mask = frame_mask(lengths, 30).unsqueeze(1)
    x = torch.randn(3, 16, 30).masked_fill(~mask, 0.0)
    mean, std = masked_mean_std(x, mask)
    context = torch.cat([x, mean.expand(-1, -1, 30), std.expand(-1, -1, 30)], dim=1)
    for mode in (True, False):
        pool.train(mode)
        torch.testing.assert_close(
            pool._attention_logits(x, mean, std), pool.attention(context), rtol=1e-5, atol=1e-5
        )
