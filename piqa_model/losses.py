"""Pairwise training objective: the fidelity loss under a Thurstone model, and within-group pair sampling.

PIQ23 gives each image a quality score that was inferred from pairwise comparisons made *within one
scene*; scores of images from different scenes were never compared, so their difference means nothing.
Training therefore compares only pairs drawn from the same group (scene), as DN-PIQA does.

For a pair, the Thurstone (Case V) model says item 1 beats item 2 with probability
Phi((s1 - s2) / sqrt(std1^2 + std2^2)). The target probability comes from the labels and their
standard deviations; the predicted one from the model's scores with unit variance each. The fidelity
loss 1 - sqrt(p * p_hat) - sqrt((1 - p) * (1 - p_hat)) (DN-PIQA, LIQE, UNIQUE) compares the two
Bernoulli distributions; it is 0 when they agree and is bounded, so outlier pairs cannot dominate.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import torch
from torch import Tensor


def pair_probability(
    s1: Tensor,
    s2: Tensor,
    std1: Tensor | float | None = None,
    std2: Tensor | float | None = None,
) -> Tensor:
    """Probability that item 1 is preferred to item 2: Phi((s1 - s2) / sqrt(std1^2 + std2^2)).

    A std of None means unit variance for that item, so with neither given this is
    Phi((s1 - s2) / sqrt(2)). Differentiable in every tensor argument.
    """
    diff = s1 - s2
    return torch.special.ndtr(diff / (_variance(std1, diff) + _variance(std2, diff)) ** 0.5)


def _variance(std: Tensor | float | None, like: Tensor) -> Tensor | float:
    if std is None:
        return 1.0
    return torch.as_tensor(std, dtype=like.dtype, device=like.device) ** 2


def fidelity_loss(
    pred1: Tensor,
    pred2: Tensor,
    label1: Tensor,
    label2: Tensor,
    label_std1: Tensor | float | None = None,
    label_std2: Tensor | float | None = None,
    eps: float = 1e-8,
) -> Tensor:
    """Mean fidelity loss over pairs between predicted and label preference probabilities.

    The predicted probability uses unit variance per item; the label probability uses the given
    label standard deviations (unit variance where None). `eps` keeps the square roots
    differentiable when a probability reaches 0 or 1.
    """
    p = pair_probability(pred1, pred2)
    p_hat = pair_probability(label1, label2, label_std1, label_std2)
    loss = 1 - torch.sqrt(p * p_hat + eps) - torch.sqrt((1 - p) * (1 - p_hat) + eps)
    return loss.mean()


def sample_pairs(
    groups: Sequence[Hashable],
    num_pairs: int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Index pairs (i, j), i != j, with items i and j in the same group; a LongTensor of shape [P, 2].

    With `num_pairs` None, every unordered within-group pair once, as (i, j) with i < j. Otherwise
    `num_pairs` ordered pairs drawn uniformly, with replacement, from all within-group ordered pairs.
    Groups of one item contribute nothing. Raises ValueError if no within-group pair exists.
    """
    if num_pairs is not None and num_pairs < 1:
        raise ValueError(f"num_pairs must be at least 1, got {num_pairs}")
    by_group: dict[Hashable, list[int]] = {}
    for index, group in enumerate(groups):
        by_group.setdefault(group, []).append(index)
    members = [torch.tensor(m, dtype=torch.long) for m in by_group.values() if len(m) > 1]
    if not members:
        raise ValueError(
            f"no within-group pair exists: all {len(groups)} items are alone in their group "
            "(pairs are only drawn between items of the same group)"
        )
    if num_pairs is None:
        return torch.cat([torch.combinations(m, 2) for m in members])

    sizes = torch.tensor([len(m) for m in members], dtype=torch.long)
    offsets = torch.cumsum(sizes, 0) - sizes
    flat = torch.cat(members)
    # A group is chosen in proportion to its ordered-pair count, then (a, b) uniformly with a != b:
    # together that is uniform over all within-group ordered pairs.
    group = torch.multinomial((sizes * (sizes - 1)).double(), num_pairs, replacement=True, generator=generator)
    n = sizes[group]
    a = torch.minimum((torch.rand(num_pairs, generator=generator, dtype=torch.float64) * n).long(), n - 1)
    b = torch.minimum((torch.rand(num_pairs, generator=generator, dtype=torch.float64) * (n - 1)).long(), n - 2)
    b = b + (b >= a).long()
    return torch.stack([flat[offsets[group] + a], flat[offsets[group] + b]], dim=1)
