"""A user's mistake on any `piqa` command is one line on stderr and a non-zero exit, never a traceback.

Each mistake is one the command finds before it starts Ray or loads a model, so these run in a moment.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from jobs.cli import run

MISTAKES = {
    "score: a bad flag value": (["score", "{tmp}/in", "--out", "{tmp}/out", "--batch-size", "0"], "batch_size"),
    "score: an unknown choice": (["score", "{tmp}/in", "--out", "{tmp}/out", "--decode", "fast"], "invalid choice"),
    "predict: a missing bundle": (["predict", "{tmp}/a.jpg", "--bundle", "{tmp}/no-bundle"], "not a model bundle"),
    "show: a missing score folder": (["show", "{tmp}/no-scores"], "does not exist"),
    "filter: an unknown status": (
        ["filter", "{tmp}/no-scores", "--out", "{tmp}/out", "--status", "OK"],
        "unknown status",
    ),
    "report: a missing score folder": (["report", "{tmp}/no-scores", "--out", "{tmp}/r.html"], "does not exist"),
    "train: a missing config file": (["train", "--config", "{tmp}/missing.yaml"], "missing.yaml does not exist"),
    "data degrade: a bad level count": (["data", "degrade", "{tmp}", "--out", "{tmp}/out", "--levels", "0"], "levels"),
    "weights import-dnpiqa: a missing checkpoint": (
        ["weights", "import-dnpiqa", "--checkpoint", "{tmp}/PIQ_model.pth", "--out", "{tmp}/bundle"],
        "checkpoint not found",
    ),
}


@pytest.mark.parametrize(("argv", "message"), MISTAKES.values(), ids=MISTAKES.keys())
def test_a_mistake_is_one_line_and_a_failing_exit(tmp_path: Path, capsys, argv: list[str], message: str) -> None:
    code = run([arg.format(tmp=tmp_path) for arg in argv])
    err = capsys.readouterr().err
    assert code != 0
    assert err.count("\n") == 1 and err.startswith("piqa: error: ") and message in err, err
    assert "Traceback" not in err


def test_every_command_has_a_mistake_checked() -> None:
    checked = {" ".join(argv[:2]) if argv[0] in ("data", "weights") else argv[0] for argv, _ in MISTAKES.values()}
    assert checked == {
        "score",
        "predict",
        "show",
        "filter",
        "report",
        "train",
        "data degrade",
        "weights import-dnpiqa",
    }
