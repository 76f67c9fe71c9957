"""Subcommands' --help: a description, choices, defaults and date formats."""

from __future__ import annotations

import argparse

import pytest

from app.cli import build_parser, main
from app.settings import CHECK_IDS


def help_of(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as done:
        main([*argv, "--help"])
    assert done.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines; compare words


def test_findings_help_lists_choices_and_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    text = help_of(["findings"], capsys)
    assert "Current results" in text
    assert "output format (default: table)" in text
    assert "{pass,fail,unknown,not_applicable,excepted}" in text
    assert "workspace slug, e.g. acme" in text
    for check in CHECK_IDS:
        assert check in text.replace("- ", "-")  # argparse may break a long id at its hyphen


def test_dates_are_shown_with_their_format(capsys: pytest.CaptureFixture[str]) -> None:
    assert "--expires YYYY-MM-DD valid through that day, at most 365 days ahead" in help_of(
        ["exceptions", "add"], capsys
    )
    assert "--expires YYYY-MM-DD valid through that day" in help_of(["evidence", "add"], capsys)
    assert "offboarded_on (YYYY-MM-DD)" in help_of(["personnel", "import"], capsys)


def test_ports_and_limits_show_their_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    assert "TCP port to listen on (default: 8000)" in help_of(["serve"], capsys)
    assert "address to listen on (default: 127.0.0.1)" in help_of(["serve"], capsys)
    assert "(default: 8100)" in help_of(["sandbox"], capsys)
    assert "how many of the latest events to show (default: 20)" in help_of(["events"], capsys)
    assert "(default: None)" not in help_of(["reconcile"], capsys)


def test_every_subcommand_has_a_description() -> None:
    def walk(parser: argparse.ArgumentParser, path: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    assert child.description, f"{path} {name} has no description"
                    walk(child, f"{path} {name}")

    walk(build_parser(), "lowerplane-bitbucket")


def test_a_limit_below_one_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["events", "--limit", "0"]) == 2
    assert "--limit: must be at least 1" in capsys.readouterr().err
