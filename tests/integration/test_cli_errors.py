"""Every bad input to the CLI is one ``error:`` line, exit code 2, no traceback, nothing left behind."""

from __future__ import annotations

import pytest

from fedprune.cli import main

OK = '[run]\nname = "ok"\nnum-rounds = 1\n[data]\nmax-samples-per-client = 64\n'


def refused(capsys, argv: list[str], *needles: str) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert all(n in lines[0] for n in needles), err
    return lines[0]


@pytest.mark.parametrize("command", [["simulate"], ["train"], ["config", "--check"]])
def test_binary_config_file(tmp_path, capsys, command):
    cfg = tmp_path / "binary.toml"
    cfg.write_bytes(bytes(range(256)) * 4)
    refused(capsys, [*command, str(cfg)], "binary.toml", "not a text")


@pytest.mark.parametrize("command", ["simulate", "train"])
def test_out_pointing_at_a_file(tmp_path, capsys, command):
    cfg = tmp_path / "ok.toml"
    cfg.write_text(OK)
    target = tmp_path / "a-file"
    target.write_text("keep me")
    refused(capsys, [command, str(cfg), "--out", str(target)], "a-file", "is a file")
    assert target.read_text() == "keep me"
