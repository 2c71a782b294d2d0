"""The direction of imports, as declared in pyproject.toml's [tool.importlinter] contracts.

The suite fails when code breaks a contract (an import `lint-imports` reports), and when the contracts
and docs/CONTRACTS.md stop saying the same thing.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"protocol", "models", "training", "export", "serving", "loadtest"}

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    tomllib = pytest.importorskip("tomli")


def _config() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["importlinter"]


def test_import_contracts_are_kept(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    cli = pytest.importorskip("importlinter.cli", reason="import-linter is in the test extra")
    monkeypatch.chdir(ROOT)
    monkeypatch.syspath_prepend(str(ROOT))
    code = cli.lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True, no_logo=True)
    report = capsys.readouterr().out
    assert code == 0, "import contracts broken (see docs/CONTRACTS.md, 'Architecture'):\n" + report
    assert f"Contracts: {len(_config()['contracts'])} kept, 0 broken" in report


def test_every_package_is_bound_by_a_contract() -> None:
    config = _config()
    assert set(config["root_packages"]) == PACKAGES
    assert {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()} <= PACKAGES | {"tests"}
    sources = {m.split(".")[0] for c in config["contracts"] for m in c["source_modules"]}
    assert sources == PACKAGES


def test_contracts_md_states_every_contract_and_exception() -> None:
    """docs/CONTRACTS.md lists each contract by name and each ignored import, so the prose cannot drift."""
    text = re.sub(r"\s+", " ", (ROOT / "docs" / "CONTRACTS.md").read_text(encoding="utf-8"))
    for contract in _config()["contracts"]:
        assert contract["name"] in text, f"docs/CONTRACTS.md does not state the contract {contract['name']!r}"
        for ignored in contract.get("ignore_imports", []):
            assert f"`{ignored}`" in text, f"docs/CONTRACTS.md does not list the exception {ignored!r}"
