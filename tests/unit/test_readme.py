"""The README's configuration table is the user-facing contract: keep it complete."""

from pathlib import Path

from pipeline.config import Settings

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_every_setting_is_documented_with_its_flag() -> None:
    for name in Settings.model_fields:
        assert f"`GRAYSCOPE_{name.upper()}`" in README, name
        assert f"`--{name.replace('_', '-')}`" in README, name


def test_quick_start_is_two_commands() -> None:
    quick = README.split("## Quick start", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in quick.strip().splitlines()]
    assert commands == ["make demo", "make test"]


def test_configuration_table_is_current() -> None:
    from pipeline.commands.config_doc import table

    assert table() in README, "run: .venv/bin/python -m pipeline.commands.config_doc"
