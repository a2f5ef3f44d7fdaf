"""The benchmarks' statistics: the medians, spreads and ratios docs/performance.md shows."""

from __future__ import annotations

import pytest

from bench.common import ratio, spread, table


def test_spread_gives_median_quartiles_and_range() -> None:
    s = spread([5.0, 1.0, 4.0, 2.0, 3.0])
    assert (s.n, s.median, s.q1, s.q3, s.low, s.high) == (5, 3.0, 2.0, 4.0, 1.0, 5.0)


def test_spread_of_an_even_sample_interpolates() -> None:
    s = spread([1.0, 2.0, 3.0, 10.0])
    assert s.median == 2.5
    assert (s.q1, s.q3) == (1.75, 4.75)


def test_spread_of_one_value_and_of_none() -> None:
    assert spread([7.0]).as_dict() == {
        "n": 1,
        "median": 7.0,
        "q1": 7.0,
        "q3": 7.0,
        "min": 7.0,
        "max": 7.0,
    }
    with pytest.raises(ValueError, match="no values"):
        spread([])


def test_ratio_is_snapshotd_over_baseline_and_refuses_a_zero_baseline() -> None:
    assert ratio(0.0315, 0.030) == pytest.approx(1.05)
    with pytest.raises(ValueError, match="positive"):
        ratio(1.0, 0.0)


def test_table_is_markdown_with_right_aligned_columns() -> None:
    assert table(["a", "b"], [[1, "x"]]) == "| a | b |\n|---:|---:|\n| 1 | x |"
