"""The document bootstrap (``lm_eval_ssmsteer.stats``) that the finder's validation, the survey's win-back
and the reports share: paired resampling moves a ratio's numerator and denominator together, stratified
resampling does not; non-finite resamples are left out; too few documents give no interval."""

from __future__ import annotations

import numpy as np
import pytest

from lm_eval_ssmsteer import stats


def _ratio(a, b, axis=-1):
    return np.sum(a, axis=axis) / np.sum(b, axis=axis)


def test_paired_resampling_keeps_each_documents_numerator_with_its_denominator():
    rng = np.random.default_rng(0)
    gap = rng.random(50) + 0.5
    # every document won back exactly half its damage: any paired resample's ratio is 0.5
    low, high = stats.bootstrap_interval([gap / 2, gap], _ratio, 0.95, paired=True)
    assert low == pytest.approx(0.5) and high == pytest.approx(0.5)
    # resampled on their own the two sums drift apart, and the interval widens around 0.5
    low, high = stats.bootstrap_interval([gap / 2, gap], _ratio, 0.95)
    assert low < 0.48 and high > 0.52


def test_resamples_without_a_finite_value_are_left_out():
    # one damaged document of 12: about (11/12)^12 = 35% of resamples miss it and divide by 0
    gap = np.zeros(12)
    gap[0] = 1.0
    gain = gap.copy()
    assert stats.bootstrap_interval([gain, gap], _ratio, 0.9, paired=True) == (1.0, 1.0)
    assert stats.bootstrap_interval([gain, np.zeros(12)], _ratio, 0.9, paired=True) is None


def test_the_interval_is_the_percentile_of_seeded_resamples_and_repeats_exactly():
    rng = np.random.default_rng(4)
    d = rng.normal(0.1, 1.0, 80)
    first = stats.bootstrap_interval([d], np.mean, 0.95)
    assert first == stats.bootstrap_interval([d], np.mean, 0.95)
    narrow = stats.bootstrap_interval([d], np.mean, 0.5)
    assert first[0] < narrow[0] < d.mean() < narrow[1] < first[1]
    se = d.std(ddof=1) / np.sqrt(len(d))
    assert first[0] == pytest.approx(d.mean() - 1.96 * se, abs=0.15 * se)
    assert first[1] == pytest.approx(d.mean() + 1.96 * se, abs=0.15 * se)


def test_bad_input_is_refused_or_has_no_interval():
    assert stats.bootstrap_interval([np.array([1.0])], np.mean, 0.95) is None
    assert stats.bootstrap_interval([np.ones(4), np.ones(1)], _ratio, 0.95) is None
    with pytest.raises(ValueError, match="confidence: 95; allowed: a number strictly between 0 and 1"):
        stats.bootstrap_interval([np.ones(4)], np.mean, 95)
    with pytest.raises(ValueError, match="paired samples need one length; got \\[4, 5\\]"):
        stats.bootstrap_interval([np.ones(4), np.ones(5)], _ratio, 0.95, paired=True)
