import random

from ktrdr_collect.storage.gaps import merge_intervals, subtract


def test_merge_overlapping_touching_and_empty() -> None:
    assert merge_intervals([(5, 7), (1, 3), (3, 4), (6, 9), (10, 10), (12, 11)]) == [(1, 4), (5, 9)]
    assert merge_intervals([]) == []
    assert merge_intervals([(1, 10), (2, 3)]) == [(1, 10)]


def test_subtract_examples() -> None:
    assert subtract((0, 10), []) == [(0, 10)]
    assert subtract((0, 10), [(0, 10)]) == []
    assert subtract((0, 10), [(2, 4), (6, 8)]) == [(0, 2), (4, 6), (8, 10)]
    assert subtract((0, 10), [(-5, 3), (9, 20)]) == [(3, 9)]
    assert subtract((0, 10), [(6, 8), (2, 4), (3, 5)]) == [(0, 2), (5, 6), (8, 10)]
    assert subtract((5, 5), [(0, 1)]) == []


def points(intervals: list[tuple[int, int]]) -> set[int]:
    return {x for s, e in intervals for x in range(s, e)}


def test_subtract_against_brute_force() -> None:
    rng = random.Random(3)
    for _ in range(500):
        covered = []
        for _ in range(rng.randrange(6)):
            s = rng.randrange(-5, 40)
            covered.append((s, s + rng.randrange(-2, 12)))
        lo = rng.randrange(0, 30)
        window = (lo, lo + rng.randrange(0, 20))
        gaps = subtract(window, covered)
        assert points(gaps) == set(range(*window)) - points(covered)
        assert gaps == merge_intervals(gaps)  # ascending, disjoint, non-touching, non-empty
        merged = merge_intervals(covered)
        assert points(merged) == points(covered)
        assert all(a[1] < b[0] for a, b in zip(merged, merged[1:], strict=False))
