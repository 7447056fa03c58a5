"""The public surface: a sorted __all__ whose names all exist."""

import hetsched


def test_all_is_sorted_and_complete() -> None:
    assert list(hetsched.__all__) == sorted(hetsched.__all__)
    for name in hetsched.__all__:
        assert hasattr(hetsched, name), name
