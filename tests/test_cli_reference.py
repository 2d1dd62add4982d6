"""docs/cli.md is the commands' `--help`, rendered; it fails here when it is out of date."""

from __future__ import annotations

from pathlib import Path

from ichbench.cli.reference import REGENERATE, WIDTH, render

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "docs" / "cli.md"


def test_reference_is_up_to_date():
    assert REFERENCE.is_file(), f"docs/cli.md is missing; run `{REGENERATE}`"
    assert REFERENCE.read_text(encoding="utf-8") == render(), (
        f"docs/cli.md is out of date with the commands' --help; run `{REGENERATE}`"
    )


def test_reference_is_plain_fixed_width_and_complete(monkeypatch):
    monkeypatch.setenv("COLUMNS", "40")
    monkeypatch.setenv("FORCE_COLOR", "1")
    text = render()
    monkeypatch.setenv("COLUMNS", "250")
    assert render() == text  # whatever the terminal
    assert "\x1b" not in text
    assert all(len(line) <= WIDTH for line in text.splitlines())
    for command in (
        "ichbench",
        "ichbench run",
        "ichbench grid",
        "ichbench data check",
        "ichbench data stats",
        "ichbench sql",
    ):
        assert f"\n## `{command}`\n" in text
        assert f"Usage: {command} " in text
