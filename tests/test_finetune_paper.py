"""Safe fine-tuning on the paper's data: SevenNet-0 at the default settings, a few FT5 frames.

Acceptance of issue 16: fine-tuning the foundation model on a few frames of one paper set
lowers both the energy and the force RMSE on held-out frames of the same system.  Kept to
two training frames and two epochs so that it runs in minutes on a CPU; skipped when the
paper data or the SevenNet-0 weights (``jaxuft fetch sevennet-0``) are absent.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

PAPER = Path(os.environ.get("JAXUFT_PAPER_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "paper-data"))


@pytest.fixture(scope="module")
def sevennet():
    if not (PAPER / "chclca").is_dir():
        pytest.skip(f"paper data not found at {PAPER} (set JAXUFT_PAPER_DATA)")
    import jaxuft

    try:
        return jaxuft.load("sevennet-0", dtype="float32")
    except Exception as exc:  # not cached and no network
        pytest.skip(f"SevenNet-0 unavailable ({str(exc).splitlines()[0]}); run `jaxuft fetch sevennet-0`")


@pytest.mark.slow
def test_default_finetune_of_sevennet_lowers_heldout_errors(sevennet):
    from ase.io import read

    from jaxuft.finetune import FinetuneConfig, evaluate, finetune_potential

    ft5 = read(str(PAPER / "chclca" / "train" / "periodic" / "FT5.xyz"), ":")
    train = [ft5[0], ft5[25]]
    held_out = [ft5[12], ft5[40]]  # same system, not trained on
    before = evaluate(sevennet, held_out, batch_size=2).overall
    logs = []
    res = finetune_potential(sevennet, train, FinetuneConfig(epochs=2, batch_size=2, progress=False), log=logs.append)
    after = evaluate(res.potential, held_out, batch_size=2).overall
    assert res.manifest["data"]["valid"]["kind"] == "training frames"  # 2 frames: nothing held out
    assert any("cannot detect over-fitting" in line for line in logs)
    assert after["energy_rmse"] < before["energy_rmse"], (before, after)
    assert after["forces_rmse"] < before["forces_rmse"], (before, after)
