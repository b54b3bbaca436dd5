"""scripts/compare_runs.py: the evaluation tables in docs/training.md are what the runs' cards say."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "compare_runs.py"


def _card(folder: Path, aji: float, recipe: str = "scribbles") -> Path:
    folder.mkdir(parents=True)
    card = {"thresholds": {"foreground": 0.4, "centre": 0.3},
            "metrics": {"mean": {"aji": aji, "pixel_iou": 0.5}},
            "training": {"recipe": recipe, "shipped": {"net": "net", "epoch": 27}, "wall_s": 1815.0,
                         "config": {"optim": {"epochs": 30}}}}
    (folder / "card.json").write_text(json.dumps(card))
    return folder


def test_table_rows_come_from_the_cards(tmp_path: Path):
    a, b = _card(tmp_path / "s10", 0.41234), _card(tmp_path / "pts", 0.5, recipe="points")
    out = subprocess.run([sys.executable, str(SCRIPT), str(a), str(b), "--metrics", "aji", "mdice"],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[0] == "| run | recipe | epochs | shipped | thresholds | aji | mdice | minutes |"
    assert out[2] == "| s10 | scribbles | 30 | net@27 | 0.4/0.3 | 0.412 | – | 30.2 |"
    assert out[3].startswith("| pts | points |") and len(out) == 4


def test_an_unfinished_run_is_exit_2_with_one_line(tmp_path: Path):
    (tmp_path / "running").mkdir()
    done = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "running")],
                          check=False, capture_output=True, text=True)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "no card.json" in done.stderr
