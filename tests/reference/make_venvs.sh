#!/usr/bin/env bash
# Create reference (PyTorch) virtual environments used by the parity tests.
#
#   tests/reference/make_venvs.sh mace        -> .venvs/mace
#   tests/reference/make_venvs.sh sevenn      -> .venvs/sevenn
#   tests/reference/make_venvs.sh torchsim    -> .venvs/torchsim  (optional, benchmarks only:
#       TorchSim + sevenn for benchmarks/bench_md.py --peer torchsim; not built by CI)
#
# Idempotent: a venv is considered complete when its marker file
# (.venvs/<name>/.jaxuft-complete) exists; then the script exits 0 at once.
# Works from the package registries only (PyPI via pip).  torch is always
# installed FIRST with an exact version pin so that later installs never pull a
# CUDA build of torch from the index.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENVS_DIR="${REPO_ROOT}/.venvs"
PYTHON="${PYTHON:-python3}"
TORCH_VERSION="2.13.0"

usage() {
    echo "usage: $0 {mace|sevenn|torchsim} [...]" >&2
    exit 2
}

now() { date +%s; }

# make_venv NAME PIP-REQUIREMENT...   (torch is installed first, then the rest)
make_venv() {
    local name="$1"; shift
    local venv="${VENVS_DIR}/${name}"
    local marker="${venv}/.jaxuft-complete"
    if [[ -f "${marker}" ]]; then
        echo "[make_venvs] ${name}: already complete (${marker})"
        return 0
    fi
    local t0 t1 t2 t3
    t0=$(now)
    echo "[make_venvs] ${name}: creating ${venv}"
    mkdir -p "${VENVS_DIR}"
    "${PYTHON}" -m venv "${venv}"
    local py="${venv}/bin/python"
    "${py}" -m pip install -qq --upgrade pip
    t1=$(now)
    echo "[make_venvs] ${name}: installing torch==${TORCH_VERSION} (CPU)"
    "${py}" -m pip install -qq "torch==${TORCH_VERSION}"
    t2=$(now)
    echo "[make_venvs] ${name}: installing $*"
    # Re-state the torch pin so pip's resolver can never swap in another build.
    "${py}" -m pip install -qq "torch==${TORCH_VERSION}" "$@"
    t3=$(now)
    "${py}" -m pip freeze > "${venv}/pip-freeze.txt"
    echo "[make_venvs] ${name}: timings: venv+pip $((t1 - t0))s, torch $((t2 - t1))s, rest $((t3 - t2))s, total $((t3 - t0))s"
}

check_mace() {
    local py="${VENVS_DIR}/mace/bin/python"
    "${py}" - <<'PY'
import torch, e3nn, mace, ase, numpy
from mace.modules.models import ScaleShiftMACE  # noqa: F401
from mace.calculators import MACECalculator  # noqa: F401
print(f"[make_venvs] mace: torch {torch.__version__} (cuda={torch.version.cuda}), "
      f"e3nn {e3nn.__version__}, mace {mace.__version__}, ase {ase.__version__}, "
      f"numpy {numpy.__version__}")
assert torch.version.cuda is None, "a CUDA torch was installed"
PY
}

check_sevenn() {
    local py="${VENVS_DIR}/sevenn/bin/python"
    "${py}" - <<'PY'
import torch, e3nn, sevenn, ase, numpy
from sevenn.calculator import SevenNetCalculator  # noqa: F401
from sevenn.util import pretrained_name_to_path
path = pretrained_name_to_path("7net-0_11Jul2024")
print(f"[make_venvs] sevenn: torch {torch.__version__} (cuda={torch.version.cuda}), "
      f"e3nn {e3nn.__version__}, sevenn {sevenn.__version__}, ase {ase.__version__}, "
      f"numpy {numpy.__version__}; checkpoint {path}")
assert torch.version.cuda is None, "a CUDA torch was installed"
PY
}

check_torchsim() {
    local py="${VENVS_DIR}/torchsim/bin/python"
    "${py}" - <<'PY'
from importlib.metadata import version
import torch, sevenn
import torch_sim.models.sevennet as tsm
assert hasattr(tsm, "torch_script_type"), "torch-sim cannot use this sevenn (calculator.torch_script_type missing)"
from torch_sim.integrators import nvt_langevin  # noqa: F401
print(f"[make_venvs] torchsim: torch {torch.__version__} (cuda={torch.version.cuda}), "
      f"torch-sim-atomistic {version('torch-sim-atomistic')}, sevenn {sevenn.__version__}")
assert torch.version.cuda is None, "a CUDA torch was installed"
PY
}

[[ $# -ge 1 ]] || usage
for target in "$@"; do
    case "${target}" in
        mace)
            if [[ ! -f "${VENVS_DIR}/mace/.jaxuft-complete" ]]; then
                make_venv mace "mace-torch==0.3.16" numpy ase
                check_mace
                touch "${VENVS_DIR}/mace/.jaxuft-complete"
            else
                echo "[make_venvs] mace: already complete"
            fi
            ;;
        sevenn)
            # sevenn needs e3nn >= 0.5 (mace-torch pins 0.4.4), hence its own venv.
            # 0.13.0's wheel ships SevenNet_0__11Jul2024/checkpoint_sevennet_0.pth.
            if [[ ! -f "${VENVS_DIR}/sevenn/.jaxuft-complete" ]]; then
                make_venv sevenn "sevenn==0.13.0" numpy ase
                check_sevenn
                touch "${VENVS_DIR}/sevenn/.jaxuft-complete"
            else
                echo "[make_venvs] sevenn: already complete"
            fi
            ;;
        torchsim)
            # TorchSim (the batched-MD peer of bench_md.py) running SevenNet-0 through sevenn's
            # model; 0.3.0 is the newest release for Python 3.11 and its SevenNet wrapper needs sevenn <= 0.12
            # (0.13 dropped calculator.torch_script_type); 0.12.1 ships the same SevenNet_0__11Jul2024
            # checkpoint.  Benchmarks only: not built by CI.
            if [[ ! -f "${VENVS_DIR}/torchsim/.jaxuft-complete" ]]; then
                make_venv torchsim "torch-sim-atomistic==0.3.0" "sevenn==0.12.1" numpy ase
                check_torchsim
                touch "${VENVS_DIR}/torchsim/.jaxuft-complete"
            else
                echo "[make_venvs] torchsim: already complete"
            fi
            ;;
        *)
            usage
            ;;
    esac
done
