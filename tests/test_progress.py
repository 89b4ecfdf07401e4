"""The progress bar keeps what matters at 80 columns."""

from __future__ import annotations

import pytest
from rich.console import Console

from pyrotrain.metrics import ProgressDisplay


def _bar_line(width: int) -> str:
    console = Console(width=width, force_terminal=True, record=True, color_system=None)
    display = ProgressDisplay(3000, "bar", console)
    display.update(1500, 43651.8123, {"locs": 0.01, "scales": 0.001, "weights": 0.001}, 123.4)
    display.close()
    return console.export_text().splitlines()[-1]


@pytest.mark.parametrize("width", [80, 100])
def test_a_narrow_terminal_keeps_step_total_loss_and_eta(width):
    line = _bar_line(width).rsplit("\x1b[2K", 1)[-1]  # the bar's last refresh
    assert "1500/3000" in line and "loss 4.365e+04" in line and "eta" in line, line
    assert "…" not in line, line
    assert "lr " not in line  # the lrs go first


def test_a_wide_terminal_also_shows_lrs_and_speed():
    line = _bar_line(160).rsplit("\x1b[2K", 1)[-1]
    assert "lr locs=0.01 scales=0.001 weights=0.001" in line and "123.4 steps/s" in line, line
