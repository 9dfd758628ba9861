"""The kernel's environment variables follow one rule (issue 26): on/off values, choices and paths are
read by ternary_hf.kernels.env, and a value outside the rule is a clear error, never a silent "off"."""

from __future__ import annotations

import pytest

from ternary_hf import kernels
from ternary_hf.errors import InvalidInputError
from ternary_hf.kernels import _build
from ternary_hf.kernels.env import DISABLE_ENV, VERBOSE_ENV, env_choice, env_flag, env_path

ON = ["1", "true", "TRUE", "Yes", "on", " on "]
OFF = ["0", "false", "False", "no", "OFF", "", "  "]
BAD = ["2", "y", "enable", "maybe", "-1", "none"]


@pytest.mark.parametrize("value", ON)
def test_on_values(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(VERBOSE_ENV, value)
    assert env_flag(VERBOSE_ENV) is True


@pytest.mark.parametrize("value", OFF)
def test_off_values(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(VERBOSE_ENV, value)
    assert env_flag(VERBOSE_ENV) is False


def test_unset_is_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(VERBOSE_ENV, raising=False)
    assert env_flag(VERBOSE_ENV) is False


@pytest.mark.parametrize("value", BAD)
def test_other_values_are_refused_naming_the_variable(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(VERBOSE_ENV, value)
    with pytest.raises(InvalidInputError, match=f"{VERBOSE_ENV}='{value}' is not an on/off value"):
        env_flag(VERBOSE_ENV)


@pytest.mark.parametrize("value", ON)
def test_disable_variable_accepts_every_on_value(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(DISABLE_ENV, value)
    assert kernels.cpu_kernel_available() is False
    assert "disabled" in kernels.kernel_status()


@pytest.mark.parametrize("value", ["0", "off", "no", ""])
def test_disable_variable_off_values_leave_the_kernel_on(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.delenv(DISABLE_ENV, raising=False)
    expected = kernels.cpu_kernel_available()
    monkeypatch.setenv(DISABLE_ENV, value)
    assert kernels.cpu_kernel_available() is expected
    assert _build.kernel_disabled() is False


@pytest.mark.parametrize("value", ["2", "maybe"])
def test_disable_variable_with_a_wrong_value_is_an_error(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(DISABLE_ENV, value)
    with pytest.raises(InvalidInputError, match=DISABLE_ENV):
        kernels.cpu_kernel_available()


def test_choice_and_path(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("TERNARY_HF_TEST_CHOICE", " Helpers ")
    assert env_choice("TERNARY_HF_TEST_CHOICE", ("openmp", "helpers"), "openmp") == "helpers"
    monkeypatch.setenv("TERNARY_HF_TEST_CHOICE", "")
    assert env_choice("TERNARY_HF_TEST_CHOICE", ("openmp", "helpers"), "openmp") == "openmp"
    monkeypatch.setenv("TERNARY_HF_TEST_CHOICE", "gpu")
    with pytest.raises(InvalidInputError, match="'gpu' is not one of openmp, helpers"):
        env_choice("TERNARY_HF_TEST_CHOICE", ("openmp", "helpers"), "openmp")
    monkeypatch.setenv(_build.CACHE_ENV, str(tmp_path))
    assert env_path(_build.CACHE_ENV) == tmp_path and _build.cache_root() == tmp_path
    monkeypatch.setenv(_build.CACHE_ENV, "")
    assert env_path(_build.CACHE_ENV) is None and _build.cache_root() != tmp_path
