import math
from collections import Counter

import pytest
import torch
from scipy.stats import norm

from piqa_model.losses import fidelity_loss, pair_probability, sample_pairs


def test_pair_probability_unit_variance_matches_scipy():
    s1 = torch.tensor([0.0, 1.0, -2.0, 3.5], dtype=torch.float64)
    s2 = torch.tensor([0.0, 0.0, 1.0, 0.5], dtype=torch.float64)
    expected = norm.cdf((s1 - s2).numpy() / math.sqrt(2))
    torch.testing.assert_close(pair_probability(s1, s2), torch.from_numpy(expected))


def test_pair_probability_with_stds_matches_scipy():
    s1 = torch.tensor([2.0, 1.0, -0.5], dtype=torch.float64)
    s2 = torch.tensor([1.0, 1.5, 0.5], dtype=torch.float64)
    std1 = torch.tensor([0.5, 2.0, 0.1], dtype=torch.float64)
    expected = norm.cdf((s1 - s2).numpy() / (std1.numpy() ** 2 + 0.3**2) ** 0.5)
    torch.testing.assert_close(pair_probability(s1, s2, std1, 0.3), torch.from_numpy(expected))
    # Only one std given: the other item keeps unit variance.
    expected_one = norm.cdf((s1 - s2).numpy() / (std1.numpy() ** 2 + 1.0) ** 0.5)
    torch.testing.assert_close(pair_probability(s1, s2, std1), torch.from_numpy(expected_one))


def test_fidelity_loss_matches_hand_computation():
    pred1, pred2 = [0.3, -1.0], [1.2, 0.4]
    label1, label2 = [2.0, 0.5], [1.0, 0.7]
    std1, std2 = [0.4, 0.8], [0.6, 0.2]
    expected = []
    for i in range(2):
        p = norm.cdf((pred1[i] - pred2[i]) / math.sqrt(2))
        p_hat = norm.cdf((label1[i] - label2[i]) / math.hypot(std1[i], std2[i]))
        expected.append(1 - math.sqrt(p * p_hat + 1e-8) - math.sqrt((1 - p) * (1 - p_hat) + 1e-8))

    def t(values: list[float]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.float64)

    loss = fidelity_loss(t(pred1), t(pred2), t(label1), t(label2), t(std1), t(std2))
    assert loss.item() == pytest.approx(sum(expected) / 2, rel=1e-12)


def test_fidelity_loss_is_minimal_when_predictions_equal_labels():
    label1 = torch.tensor([3.0, 1.0, 0.2, -1.0])
    label2 = torch.tensor([1.0, 2.5, 0.1, 1.0])
    matched = fidelity_loss(label1, label2, label1, label2)
    reversed_ = fidelity_loss(label2, label1, label1, label2)
    assert abs(matched.item()) < 1e-4
    assert reversed_.item() > 0.05
    assert matched < reversed_


def test_fidelity_loss_gradient_is_finite_even_at_saturated_probabilities():
    pred1 = torch.tensor([50.0, 0.5, -2.0], requires_grad=True)
    pred2 = torch.tensor([-50.0, 0.0, 1.0], requires_grad=True)
    label1 = torch.tensor([1.0, 0.0, 2.0])
    label2 = torch.tensor([0.0, 1.0, 0.0])
    loss = fidelity_loss(pred1, pred2, label1, label2, torch.full((3,), 0.01), 0.01)
    loss.backward()
    assert torch.isfinite(loss)
    for grad in (pred1.grad, pred2.grad):
        assert grad is not None and torch.isfinite(grad).all()
    # Pair 2 is ranked against its labels, so descending the gradient must lower pred1 and raise pred2.
    assert pred2.grad[1] < 0 < pred1.grad[1]


def _random_groups(seed: int) -> list[str]:
    g = torch.Generator().manual_seed(seed)
    n_items = int(torch.randint(2, 40, (1,), generator=g))
    n_groups = int(torch.randint(1, 8, (1,), generator=g))
    groups = [f"scene{int(k)}" for k in torch.randint(0, n_groups, (n_items,), generator=g)]
    return groups if len(set(groups)) < len(groups) else [*groups, groups[0]]


@pytest.mark.parametrize("seed", range(20))
def test_sampled_pairs_stay_within_groups(seed: int):
    groups = _random_groups(seed)
    pairs = sample_pairs(groups, num_pairs=500, generator=torch.Generator().manual_seed(seed))
    assert pairs.shape == (500, 2) and pairs.dtype == torch.long
    assert pairs.min() >= 0 and pairs.max() < len(groups)
    for i, j in pairs.tolist():
        assert i != j
        assert groups[i] == groups[j]


@pytest.mark.parametrize("seed", range(20))
def test_all_pairs_are_every_within_group_pair_once(seed: int):
    groups = _random_groups(seed)
    pairs = sample_pairs(groups)
    expected_count = sum(n * (n - 1) // 2 for n in Counter(groups).values())
    assert pairs.shape == (expected_count, 2)
    as_set = {tuple(p) for p in pairs.tolist()}
    assert len(as_set) == expected_count
    assert all(i < j and groups[i] == groups[j] for i, j in as_set)


def test_sampling_is_uniform_over_ordered_pairs_and_reproducible():
    groups = ["a", "a", "b", "b", "b", "c"]  # ordered pairs: 2 in a, 6 in b, none in c
    pairs = sample_pairs(groups, 24000, torch.Generator().manual_seed(0))
    counts = Counter(map(tuple, pairs.tolist()))
    assert len(counts) == 8
    assert all(abs(c - 3000) < 300 for c in counts.values())
    again = sample_pairs(groups, 24000, torch.Generator().manual_seed(0))
    assert torch.equal(pairs, again)


def test_no_within_group_pair_raises():
    with pytest.raises(ValueError, match="no within-group pair"):
        sample_pairs(["a", "b", "c"])
    with pytest.raises(ValueError, match="no within-group pair"):
        sample_pairs(["a", "b"], num_pairs=10)
    with pytest.raises(ValueError, match="num_pairs"):
        sample_pairs(["a", "a"], num_pairs=0)
