"""Paired statistics (finder.paired): per-document differences decide better / worse / undecided, and the
win-back is the share of a damage undone on the same documents, with a document-bootstrap interval."""

from __future__ import annotations

import pytest
import torch

from lm_eval_ssmsteer.finder.paired import BETTER, UNDECIDED, WORSE, paired_difference, win_back


def test_a_consistent_gain_on_every_document_is_better():
    before = torch.linspace(0.0, 1.0, 12)
    result = paired_difference(before, before + 0.05 + 0.01 * torch.sin(torch.arange(12.0)))
    assert result.decision == BETTER and result.low > 0 and result.larger == 12 and result.smaller == 0
    assert result.mean == pytest.approx(0.05 + 0.01 * torch.sin(torch.arange(12.0)).mean().item())


def test_a_consistent_loss_is_worse():
    before = torch.rand(16, generator=torch.Generator().manual_seed(0))
    assert paired_difference(before, before - 0.1).decision == WORSE


def test_documents_that_disagree_cannot_decide():
    # half the documents gain 0.1, half lose 0.1: a large spread and a mean of 0 decide nothing
    before = torch.zeros(16)
    after = torch.tensor([0.1, -0.1] * 8)
    result = paired_difference(before, after)
    assert result.decision == UNDECIDED and result.low < 0 < result.high
    assert (result.larger, result.smaller) == (8, 8)


def test_the_pairing_removes_what_the_documents_share():
    # documents of very different difficulty, each 0.02 easier after: unpaired means would overlap
    difficulty = torch.tensor([0.0, 5.0, 1.0, 9.0, 3.0, 7.0, 2.0, 8.0])
    assert paired_difference(difficulty, difficulty + 0.02).decision == BETTER


def test_a_paired_comparison_refuses_unmatched_documents():
    with pytest.raises(ValueError, match="one shape"):
        paired_difference(torch.zeros(4), torch.zeros(5))
    with pytest.raises(ValueError, match="at least 2 documents"):
        paired_difference(torch.zeros(1), torch.zeros(1))


def test_win_back_is_the_share_of_the_damage_undone_on_the_same_documents():
    intact = torch.ones(10)
    damaged = torch.tensor([0.0] * 4 + [1.0] * 6)  # 4 documents lost
    steered = torch.tensor([1.0, 1.0, 1.0, 0.0] + [1.0] * 6)  # 3 of them won back
    result = win_back(intact, damaged, steered)
    assert result.value == pytest.approx(0.75) and result.n == 10
    assert result.low <= 0.75 <= result.high
    assert win_back(intact, intact, steered).value is None  # no damage: nothing to win back


def test_win_back_counts_documents_the_steering_breaks():
    intact, damaged = torch.ones(8), torch.tensor([0.0, 0.0] + [1.0] * 6)
    steered = torch.tensor([1.0, 1.0, 0.0, 0.0] + [1.0] * 4)  # both won back, two others lost
    assert win_back(intact, damaged, steered).value == pytest.approx(0.0)
