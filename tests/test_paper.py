"""`jaxuft paper reproduce` on a tiny slice of the paper data, and the paper's HCl counts on the full 9 ns runs."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from jaxuft.analysis import bond_formation, read_frames
from jaxuft.cli import main


def test_hcl_formation_in_the_9ns_runs_as_in_the_paper(paper_data):
    """The paper: H–Cl bonds in 44 of 58 frames of the N-50 run and in none of 56 of the FT5 run."""
    n50 = bond_formation(read_frames(paper_data / "chclca" / "long" / "N-50.xyz"), "H", "Cl", cutoff=1.6)
    ft5 = bond_formation(read_frames(paper_data / "chclca" / "long" / "FT5.xyz"), "H", "Cl", cutoff=1.6)
    assert (n50["n_frames_with_bond"], n50["n_frames"]) == (44, 58)
    assert (ft5["n_frames_with_bond"], ft5["n_frames"]) == (0, 56)


def test_cli_reproduce_tiny_slice(paper_data, tmp_path, capsys):
    out = tmp_path / "report"
    args = ["paper", "reproduce", str(paper_data), "-o", str(out), "--max-frames", "2",
            "--soap-n-max", "2", "--soap-l-max", "1", "-q"]
    assert main(args) == 0
    text = (out / "README.md").read_text()
    for fig in re.findall(r"\]\(([^)]+\.png)\)", text):
        assert (out / fig).stat().st_size > 1000, fig
    assert len(re.findall(r"\.png\)", text)) >= 9
    summary = json.loads((out / "summary.json").read_text())  # strict JSON
    # the FT5 row equals an independent computation on the same two frames
    frames = read_frames(paper_data / "chclca" / "eval" / "FT5.xyz")[:2]
    with open(paper_data / "chclca" / "thermo" / "Periodic-FT5.tsv") as f:
        names = f.readline().split()
    th = np.loadtxt(paper_data / "chclca" / "thermo" / "Periodic-FT5.tsv", skiprows=1)
    pot = th[:, names.index("PotEng")]
    r = np.array([(pot[a.info["thermo_row"]] - a.get_potential_energy()) / len(a) * 1e3 for a in frames])
    row = summary["residuals"]["FT5"]
    assert row["mean"] == pytest.approx(r.mean()) and row["rmse"] == pytest.approx(np.sqrt(np.mean(r**2)))
    assert f"| FT5 | periodic | 50 | 2 | {r.mean():.2f} | {np.sqrt(np.mean(r**2)):.2f} |" in text
    assert set(summary["residuals"]) == {"U", *(f"N-{n}" for n in (10, 21, 31, 40, 50)),
                                         *(f"NP-{n}" for n in (10, 21, 31, 40, 50)), *(f"FT{k}" for k in range(1, 6))}
    q = summary["qres"]
    assert set(q["explained_variance_ratio"]) == {"N-50", "FT5", "NP-50", "N-50 + FT5"}
    assert 0.0 <= q["eval"]["FT5"]["fraction_over"]["FT5"] <= 1.0
    assert q["liclcocl2"]["explained_variance_ratio"]
    # a second run into the same folder is refused unless told
    assert main(args) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_cli_reproduce_bad_data_folder(tmp_path, capsys):
    assert main(["paper", "reproduce", str(tmp_path / "nowhere"), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "paper-data folder" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
