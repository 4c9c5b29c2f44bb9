import pytest

from ktrdr_collect.storage.paths import file_stem


def test_file_stem() -> None:
    assert file_stem("BTC/USDT") == "BTC_USDT"
    assert file_stem("aapl") == "AAPL"
    assert file_stem("EUR.USD") == "EUR.USD"


@pytest.mark.parametrize("bad", ["", "..", "A/../B", "A\\B", "..X", "A\x00B"])
def test_file_stem_rejects_unsafe(bad: str) -> None:
    with pytest.raises(ValueError):
        file_stem(bad)
