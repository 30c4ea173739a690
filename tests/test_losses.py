"""AAM-softmax with sub-centers and inter-top-K penalty; the margin schedule."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from lapsv.losses import AAMSoftmax, margin_at_step


def test_zero_margin_without_topk_is_plain_softmax_on_scaled_cosines():
    loss_fn = AAMSoftmax(16, 7, n_subcenters=1, scale=30.0, margin=0.0, topk=0)
    embeddings, labels = torch.randn(9, 16), torch.randint(0, 7, (9,))
    cosine = F.normalize(embeddings) @ F.normalize(loss_fn.weight).T
    expected = F.cross_entropy(30.0 * cosine, labels)
    torch.testing.assert_close(loss_fn(embeddings, labels).loss, expected)


def unit(angle: float) -> list[float]:
    return [math.cos(angle), math.sin(angle)]


def test_subcenter_cosine_is_the_closest_center():
    loss_fn = AAMSoftmax(2, 2, n_subcenters=3, margin=0.0, topk=0)
    with torch.no_grad():  # rows: class 0 centers 0..2, then class 1 centers 0..2
        loss_fn.weight.copy_(
            torch.tensor([unit(2.0), unit(0.1), unit(3.0), unit(1.0), unit(1.5), unit(-2.0)])
        )
    cosine = loss_fn.cosines(torch.tensor([unit(0.0)]))
    torch.testing.assert_close(cosine, torch.tensor([[math.cos(0.1), math.cos(1.0)]]))


def test_target_margin_and_topk_penalty_on_a_hand_made_example():
    # five classes at known angles from the embedding (angle 0), one center each
    angles = [0.5, 0.9, 1.2, 2.0, 2.5]
    loss_fn = AAMSoftmax(2, 5, n_subcenters=1, scale=10.0, margin=0.2, topk=2, topk_margin=0.06)
    with torch.no_grad():
        loss_fn.weight.copy_(torch.tensor([unit(a) for a in angles]))
    embedding, label = torch.tensor([unit(0.0)]), torch.tensor([1])
    logits = loss_fn.logits(embedding, label)[0] / 10.0
    expected = [
        math.cos(0.5 - 0.06),  # hardest non-target: penalised, cos(theta - m')
        math.cos(0.9 + 0.2),  # target: cos(theta + m)
        math.cos(1.2 - 0.06),  # second hardest non-target: penalised
        math.cos(2.0),  # others untouched
        math.cos(2.5),
    ]
    torch.testing.assert_close(logits, torch.tensor(expected), atol=1e-5, rtol=0)


def test_topk_penalty_scales_with_the_ramped_margin():
    loss_fn = AAMSoftmax(2, 5, n_subcenters=1, margin=0.3, topk=5, topk_margin=0.06)
    loss_fn.set_margin(0.15)
    assert loss_fn.current_topk_margin == pytest.approx(0.03)
    loss_fn.set_margin(0.0)
    assert loss_fn.current_topk_margin == 0.0


def test_margin_makes_the_loss_larger():
    loss_fn = AAMSoftmax(8, 4)
    embeddings, labels = torch.randn(6, 8), torch.randint(0, 4, (6,))
    loss_fn.set_margin(0.0)
    easy = loss_fn(embeddings, labels).loss
    loss_fn.set_margin(0.3)
    assert loss_fn(embeddings, labels).loss > easy


def test_margin_schedule_is_a_monotonic_pure_function_of_the_step():
    values = [margin_at_step(step, final_margin=0.3, ramp_steps=200) for step in range(0, 260, 10)]
    assert values[0] == 0.0
    assert all(b >= a for a, b in itertools.pairwise(values))
    assert values[-1] == 0.3
    assert values[10] > 0.3 * 100 / 200  # logarithmic: faster than linear early on
    linear = margin_at_step(100, final_margin=0.3, ramp_steps=200, shape="linear")
    assert linear == pytest.approx(0.15)
    with pytest.raises(ValueError, match="shape"):
        margin_at_step(1, final_margin=0.3, ramp_steps=2, shape="cubic")
