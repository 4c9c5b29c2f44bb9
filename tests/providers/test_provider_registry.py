"""The registry (built-ins, entry points, missing libraries) and secret options."""

from __future__ import annotations

import json
from collections.abc import Mapping
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ktrdr_collect.cli.main import app
from ktrdr_collect.errors import ProviderUnavailableError
from ktrdr_collect.providers import registry
from ktrdr_collect.providers.base import (
    OptionSpec,
    Provider,
    reject_secret_options,
    secret_env_var,
)
from ktrdr_collect.storage.calendar import AlwaysOpenCalendar

ENV = "KTRDR_COLLECT_FAKE_KEY_API_KEY"


class FakeKeyProvider(Provider):
    """A provider that needs a key (nothing built in does)."""

    name = "fake-key"
    description = "test provider with a secret"
    timeframes = ("1d",)
    needs_credentials = True
    option_specs = (
        OptionSpec("api_key", str, "", "the account key", secret=True),
        OptionSpec("region", str, "eu", "where"),
    )
    calendar = AlwaysOpenCalendar()

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(options)
        self.key = self.require_secret("api_key")


def fake_entry_points(*targets: tuple[str, str]) -> Any:
    eps = [EntryPoint(name, value, registry.ENTRY_POINT_GROUP) for name, value in targets]
    return lambda group: eps if group == registry.ENTRY_POINT_GROUP else []


@pytest.fixture
def no_env_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV, raising=False)


def test_builtins_are_listed_first() -> None:
    assert registry.provider_names()[:4] == ["demo", "csv", "binance", "yahoo"]
    for name in ("demo", "csv", "binance", "yahoo"):
        assert registry.provider_class(name).name == name


def test_unknown_provider_names_the_valid_ones() -> None:
    expected = r"unknown provider 'nope' \(available: demo, csv, binance, yahoo"
    with pytest.raises(ProviderUnavailableError, match=expected):
        registry.provider_class("nope")


def test_unknown_option_names_the_valid_ones() -> None:
    with pytest.raises(ProviderUnavailableError,
                       match=r"unknown option 'colour' for provider binance \(valid: base_url, rate_limit, max_bars"):
        registry.create_provider("binance", {"colour": "red"})


def test_entry_point_providers_load(monkeypatch: pytest.MonkeyPatch, no_env_key: None) -> None:
    monkeypatch.setattr(registry, "entry_points", fake_entry_points(
        ("fake-key", f"{__name__}:FakeKeyProvider")))
    assert registry.provider_names()[-1] == "fake-key"
    assert registry.provider_class("fake-key") is FakeKeyProvider


def test_an_entry_point_missing_a_library_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "entry_points", fake_entry_points(
        ("broken", "tests.providers.needs_missing_lib:Provider")))
    with pytest.raises(ProviderUnavailableError,
                       match="provider broken: needs no_such_library_xyz: pip install no_such_library_xyz"):
        registry.provider_class("broken")


def test_a_builtin_missing_its_extra_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry.BUILTINS, "yahoo", "tests.providers.needs_missing_lib:Provider")
    with pytest.raises(ProviderUnavailableError) as info:
        registry.provider_class("yahoo")
    assert str(info.value) == "provider yahoo: needs no_such_library_xyz: pip install 'ktrdr-collect[yahoo]'"


def test_a_vanished_provider_module_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "entry_points", fake_entry_points(("gone", "no_such_pkg.mod:P")))
    with pytest.raises(ProviderUnavailableError, match="provider gone: its module no_such_pkg.mod cannot be imported"):
        registry.provider_class("gone")


# --- secrets ------------------------------------------------------------------------------------


def test_env_var_name() -> None:
    assert secret_env_var("fake-key", "api_key") == ENV
    assert secret_env_var("alpaca", "secret") == "KTRDR_COLLECT_ALPACA_SECRET"


def test_a_secret_from_config_is_used_but_never_public(no_env_key: None) -> None:
    p = FakeKeyProvider({"api_key": "from-config", "region": "us"})
    assert p.key == "from-config"
    assert p.public_options() == {"region": "us"}


def test_the_environment_supplies_and_overrides_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, "from-env")
    assert FakeKeyProvider({}).key == "from-env"
    assert FakeKeyProvider({"api_key": "from-config"}).key == "from-env"


def test_a_missing_secret_says_where_to_put_it(no_env_key: None) -> None:
    with pytest.raises(ProviderUnavailableError) as info:
        FakeKeyProvider({})
    message = str(info.value)
    assert message.startswith("provider fake-key needs api_key: set it in the config ([providers.fake-key]")
    assert "collect config set providers.fake-key.api_key VALUE" in message and ENV in message


def test_a_secret_passed_with_dash_o_is_refused() -> None:
    reject_secret_options(FakeKeyProvider, {"region": "us"})
    with pytest.raises(ProviderUnavailableError) as info:
        reject_secret_options(FakeKeyProvider, {"api_key": "oops"})
    assert "option api_key of provider fake-key is secret and cannot be passed with -o" in str(info.value)
    assert ENV in str(info.value)


def test_the_runner_path_keeps_the_real_secret(monkeypatch: pytest.MonkeyPatch, no_env_key: None) -> None:
    """What the runner does: config options, then the job's stored (public) options over them."""
    monkeypatch.setattr(registry, "entry_points", fake_entry_points(("fake-key", f"{__name__}:FakeKeyProvider")))
    config = {"api_key": "real-key", "region": "eu"}
    stored = registry.create_provider("fake-key", config).public_options()
    assert "api_key" not in stored and "real-key" not in repr(stored)
    rebuilt = registry.create_provider("fake-key", {**config, **stored})
    assert rebuilt.key == "real-key"
    monkeypatch.setenv(ENV, "env-key")
    assert registry.create_provider("fake-key", {**stored}).key == "env-key"


def test_demo_public_options_are_unchanged() -> None:
    p = registry.create_provider("demo", {"latency_ms": "0"})
    assert p.public_options()["latency_ms"] == 0.0 and "fail_symbols" in p.public_options()


def test_providers_command_lists_the_real_providers(home: Path) -> None:
    r = CliRunner().invoke(app, ["providers", "--json"])
    assert r.exit_code == 0
    rows = {row["name"]: row for row in json.loads(r.stdout)}
    assert rows["binance"]["network"] is True and rows["binance"]["credentials"] is False
    assert rows["csv"]["network"] is False and "4h" not in rows["yahoo"]["timeframes"]
    assert "exchange_calendars" in rows["yahoo"]["description"]
