#!/usr/bin/env bash
# One-call GPU benchmark of jaxuft (issue 15): on a machine with one NVIDIA GPU, from a fresh clone,
# in under 8 minutes, printing every result as it is measured and appending them to
# benchmarks/RESULTS.md (a run cut off part-way still records what it measured).
#
#   bash benchmarks/gpu_suite.sh                 # everything (installs the CUDA jax wheel if needed)
#   bash benchmarks/gpu_suite.sh --dry-run       # the plan and the checks only; installs and runs nothing
#   bash benchmarks/gpu_suite.sh --quick         # the replica series only (about 2 minutes)
#   bash benchmarks/gpu_suite.sh --cpu-smoke     # the script's own path on the CPU: toy model, tiny
#                                                # settings, RESULTS.md section written to --out-dir only
#
# Stages (each under its own timeout, all under --total-s, default 480 s):
#   0. environment: a python whose jax sees the GPU and that imports jaxuft's dependencies. Tried in
#      order: $JAXUFT_PYTHON, .venv-gpu, .venv, python3 (this checkout on PYTHONPATH); if none does and
#      --no-install is not given, a venv (.venv-gpu, with the system's site packages visible, so a
#      preinstalled CUDA jax is reused) gets "jax[cuda13]" (driver CUDA >= 13) or "jax[cuda12]" (older
#      drivers), never jax 0.10.2, and jaxuft's dependencies. --wheels DIR installs from a folder of
#      wheels instead of the package index (machines without network).
#   1. the acceptance series: MACE-MP-0b-small-shaped MD (random weights) on the paper's 197-atom
#      frame at R = 1 64 1024 replicas: atom-steps/s and per-atom-step cost against R = 1;
#   2. the rest of `jaxuft bench`: SevenNet-0 replicas, system size (paper frame tiled up to 64x),
#      energy+forces, a fine-tuning step, SOAP + Q;
#   3. reference: mace-torch on CUDA on the same weights (a random mp0b-small built by
#      tests/reference/mace_build.py), energy+forces and ASE Langevin MD, against jaxuft on that file;
#      skipped with a message when no python with torch (CUDA) + mace-torch is found or installable.
#   4. RESULTS.md: one section from the JSON reports (python -m jaxuft.bench.record); also run on exit.
#
# Environment: JAXUFT_PYTHON (the python to use), JAXUFT_TORCH_PYTHON (python with torch+mace for
# stage 3), JAXUFT_PAPER_DATA (folder holding chclca/; else ../shared/paper-data, shared/paper-data,
# or .bench-data/independent.xyz), JAXUFT_CACHE (the model-zoo cache; .bench-data/cache if present,
# so SevenNet-0 needs no network). docs/bench.md shows how to stage .bench-data for a machine that
# cannot see ../shared or the package index. Outputs: --out-dir (default .bench-gpu/): the JSON
# reports, the mace-torch model and results-section.md (the text appended to RESULTS.md).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
T0=$(date +%s)
TOTAL_S=480
DRY=0 SMOKE=0 QUICK=0 INSTALL=1 REFERENCE=1 WHEELS="" OUTDIR="$REPO/.bench-gpu" RECORD=1

usage() { sed -n '2,33p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
while [[ $# -gt 0 ]]; do
    case "$1" in
        --dry-run) DRY=1 ;;
        --quick) QUICK=1 ;;
        --cpu-smoke) SMOKE=1 INSTALL=0 REFERENCE=0 ;;
        --no-install) INSTALL=0 ;;
        --no-reference) REFERENCE=0 ;;
        --no-record) RECORD=0 ;;
        --wheels) WHEELS="${2:?--wheels needs a folder}"; shift ;;
        --total-s) TOTAL_S="${2:?--total-s needs seconds}"; shift ;;
        --out-dir) OUTDIR="${2:?--out-dir needs a folder}"; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "gpu_suite.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
[[ "$TOTAL_S" =~ ^[0-9]+$ ]] || { echo "gpu_suite.sh: --total-s must be a whole number of seconds" >&2; exit 2; }
[[ -z "$WHEELS" || -d "$WHEELS" ]] || { echo "gpu_suite.sh: --wheels $WHEELS is not a folder" >&2; exit 2; }

say() { printf '[gpu_suite %4ds] %s\n' "$(( $(date +%s) - T0 ))" "$*"; }
left() { echo $(( TOTAL_S - ($(date +%s) - T0) )); }
# budget PLANNED: the stage's timeout, capped by what is left of the total (minus 20 s for recording)
budget() { local l; l=$(( $(left) - 20 )); (( l < $1 )) && echo "$l" || echo "$1"; }
run() {  # run TIMEOUT LABEL CMD...: prints as it goes, never aborts the suite
    local t="$1" label="$2"; shift 2
    if (( t < 15 )); then say "SKIP $label: only $(left) s of the ${TOTAL_S} s budget left"; return 0; fi
    say "$label (timeout ${t} s): $*"
    if (( DRY )); then return 0; fi
    local rc=0
    timeout --kill-after=10 "$t" "$@" || rc=$?
    if (( rc == 124 || rc == 137 )); then say "TIMEOUT $label after ${t} s (what it measured is kept)";
    elif (( rc != 0 )); then say "FAILED $label (exit $rc)"; fi
    return 0
}

(( DRY )) || mkdir -p "$OUTDIR"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's jaxuft, installed or not
if [[ -z "${JAXUFT_CACHE:-}" && -d "$REPO/.bench-data/cache" ]]; then export JAXUFT_CACHE="$REPO/.bench-data/cache"; fi
(( DRY )) && say "dry run: checks and plan only; nothing is installed or measured"

# ------------------------------------------------------------------ 0. environment
if (( SMOKE )); then
    export JAX_PLATFORMS=cpu
    say "CPU smoke run: JAX_PLATFORMS=cpu, toy model, tiny settings; RESULTS section -> $OUTDIR/RESULTS.md"
    CUDA_MAJOR=""
elif command -v nvidia-smi >/dev/null 2>&1; then
    say "GPU: $(nvidia-smi -L 2>/dev/null | head -1)"
    CUDA_MAJOR=$(nvidia-smi 2>/dev/null | sed -n 's/.*CUDA Version: *\([0-9]*\).*/\1/p' | head -1)
else
    say "nvidia-smi not found: no NVIDIA driver here"
    CUDA_MAJOR=""
    if (( ! DRY )); then
        say "this script needs an NVIDIA GPU (use 'jaxuft bench' on other devices, or --cpu-smoke to test it)"; exit 3
    fi
fi
EXTRA="cuda12"; [[ -n "$CUDA_MAJOR" && "$CUDA_MAJOR" -ge 13 ]] && EXTRA="cuda13"

# jaxuft's run-time dependencies (pyproject.toml) that the suite imports
DEPS=(flax optax jax-md e3nn-jax ase numpy safetensors tqdm matplotlib scipy "pydantic>=2.6" pyyaml)
CHECK="import sys, jax, flax, optax, jax_md, e3nn_jax, ase, safetensors, pydantic, jaxuft.bench.suite; \
sys.exit(0 if jax.default_backend() == '$( (( SMOKE )) && echo cpu || echo gpu )' else 1)"
CHECK_S="${JAXUFT_CHECK_TIMEOUT:-180}"  # seconds for one candidate's imports (a busy machine needs more)
(( SMOKE )) && CHECK_S="${JAXUFT_CHECK_TIMEOUT:-600}"
gpu_python() {  # prints the first python whose jax sees a GPU and which imports jaxuft's dependencies
    local c
    for c in "${JAXUFT_PYTHON:-}" "$REPO/.venv-gpu/bin/python" "$REPO/.venv/bin/python" "$(command -v python3 || true)"; do
        [[ -n "$c" && -x "$c" ]] || continue
        if timeout "$CHECK_S" "$c" -c "$CHECK" >/dev/null 2>&1; then echo "$c"; return 0; fi
    done
    return 1
}

PY=""
if (( DRY )); then
    PY="${JAXUFT_PYTHON:-$(command -v python3 || true)}"
    say "would use the first of \$JAXUFT_PYTHON, .venv-gpu, .venv, python3 whose jax sees the GPU (dry run: $PY)"
    say "else: python3 -m venv --system-site-packages .venv-gpu; pip install ${WHEELS:+--no-index --find-links $WHEELS }\"jax[$EXTRA]!=0.10.2\" ${DEPS[*]}"
elif PY=$(gpu_python); then
    say "python with GPU jax and jaxuft: $PY"
elif (( INSTALL )); then
    BASE="${JAXUFT_PYTHON:-$(command -v python3)}"
    PIPX=(); [[ -n "$WHEELS" ]] && PIPX=(--no-index --find-links "$WHEELS")
    t=$(budget 240)
    say "installing CUDA jax (jax[$EXTRA]) and jaxuft into .venv-gpu (timeout ${t} s)"
    if [[ ! -x "$REPO/.venv-gpu/bin/python" ]]; then "$BASE" -m venv --system-site-packages "$REPO/.venv-gpu"; fi
    JAXREQ="jax[$EXTRA]!=0.10.2"
    if timeout 60 "$REPO/.venv-gpu/bin/python" -c "import jax, sys; sys.exit(0 if jax.default_backend() == 'gpu' else 1)" \
        >/dev/null 2>&1; then JAXREQ="jax!=0.10.2"; say "a GPU jax is there already: keeping it"; fi
    timeout "$t" "$REPO/.venv-gpu/bin/python" -m pip install -q "${PIPX[@]}" "$JAXREQ" "${DEPS[@]}" \
        || say "pip install failed or timed out (no network? pass --wheels DIR; see docs/bench.md)"
    PY=$(gpu_python) || { say "no python with a GPU-enabled jax and jaxuft: stopping (see the messages above)"; exit 3; }
    say "installed: $PY"
else
    say "no python with a GPU-enabled jax and jaxuft, and --no-install given: stopping"; exit 3
fi

if (( ! DRY )); then
    "$PY" - <<'EOF'
import jax, jaxuft
print(f"[gpu_suite] jax {jax.__version__}, devices {jax.devices()}, jaxuft {jaxuft.__version__}", flush=True)
EOF
fi

FRAME=$("${PY:-python3}" -c "from jaxuft.bench.suite import find_paper_frame as f; print(f() or '')" 2>/dev/null || true)
if [[ -n "$FRAME" ]]; then
    say "paper frame: $FRAME"
else
    say "WARNING: the paper frame was not found (JAXUFT_PAPER_DATA, ../shared/paper-data, .bench-data/independent.xyz):"
    say "         the series runs on rock-salt NaCl (216 atoms) instead and is labelled so"
fi

record() {
    (( RECORD && ! DRY )) || return 0
    local files=() f
    for f in "$OUTDIR/replicas.json" "$OUTDIR/suite.json" "$OUTDIR/reference-jaxuft.json"; do
        [[ -s "$f" ]] && files+=("$f")
    done
    (( ${#files[@]} )) || { say "nothing measured: RESULTS.md unchanged"; return 0; }
    local target="$REPO/benchmarks/RESULTS.md"; (( SMOKE )) && target="$OUTDIR/RESULTS.md"
    "$PY" -m jaxuft.bench.record --results "$target" --title "GPU suite (benchmarks/gpu_suite.sh)" \
        --torch "$OUTDIR/reference-torch.json" --extra "Total wall time $(( $(date +%s) - T0 )) s." "${files[@]}" \
        > "$OUTDIR/results-section.md" && say "appended to $target (also $OUTDIR/results-section.md)" \
        || say "recording failed"
    RECORD=0
}
trap record EXIT
trap 'say "interrupted: recording what was measured"; record; exit 143' TERM INT

BENCH=("$PY" -m jaxuft.cli bench)
S1=(--models mace-mp0b-small --items md-replicas --replicas 1 64 1024 --steps 20 --budget-s 150)
S2=(--models mace-mp0b-small sevennet-0 --items md-sizes energy-forces finetune soap-q md-replicas
    --sizes 1 8 27 64 --replicas 1 64 1024 --steps 10 --budget-s 60)
if (( SMOKE )); then
    S1=(--tiny --items md-replicas --replicas 1 2 --steps 2)
    S2=(--tiny --items energy-forces soap-q)
fi

# ------------------------------------------------------------------ 1. the acceptance series
run "$(budget 170)" "MACE-MP-0b-small-shaped MD, R = 1 64 1024" "${BENCH[@]}" "${S1[@]}" -o "$OUTDIR/replicas.json"
(( QUICK )) && { say "quick: done"; exit 0; }

# ------------------------------------------------------------------ 2. the rest of the suite
run "$(budget 150)" "jaxuft bench: sizes, energy+forces, fine-tuning, SOAP + Q; SevenNet-0 replicas" \
    "${BENCH[@]}" "${S2[@]}" -o "$OUTDIR/suite.json"

# ------------------------------------------------------------------ 3. mace-torch on CUDA, same weights
if (( REFERENCE )); then
    TPY=""
    for c in "${JAXUFT_TORCH_PYTHON:-}" "$REPO/.venvs/mace/bin/python" "$(command -v python3 || true)"; do
        [[ -n "$c" && -x "$c" ]] || continue
        if (( DRY )) || timeout 90 "$c" -c "import torch, mace, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
            >/dev/null 2>&1; then TPY="$c"; break; fi
    done
    if [[ -z "$TPY" && $INSTALL -eq 1 && $DRY -eq 0 ]]; then
        t=$(budget 60)
        if (( t > 30 )) && command -v python3 >/dev/null; then
            say "no python with torch (CUDA) + mace-torch: trying pip install mace-torch into .venv-torchref (${t} s)"
            [[ -x "$REPO/.venv-torchref/bin/python" ]] || python3 -m venv --system-site-packages "$REPO/.venv-torchref"
            timeout "$t" "$REPO/.venv-torchref/bin/python" -m pip install -q ${WHEELS:+--no-index --find-links "$WHEELS"} \
                mace-torch && TPY="$REPO/.venv-torchref/bin/python" || say "mace-torch not installable here"
        fi
    fi
    if [[ -z "$TPY" ]]; then
        say "SKIP reference: no python with torch (CUDA) and mace-torch (set JAXUFT_TORCH_PYTHON)"
    else
        MODEL="$OUTDIR/mp0b-small-s0-float32.model"
        run "$(budget 45)" "build the same random mp0b-small in mace-torch" env TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 \
            "$TPY" tests/reference/mace_build.py --preset mp0b-small --seed 0 --dtype float32 -o "$MODEL"
        if (( DRY )) || [[ -s "$MODEL" ]]; then
            run "$(budget 60)" "mace-torch on CUDA: energy+forces and ASE Langevin" env TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 \
                "$TPY" benchmarks/gpu_torch_reference.py "$MODEL" "$OUTDIR/reference-torch.json" "$FRAME"
            run "$(budget 60)" "jaxuft on the same file" "${BENCH[@]}" --models "$MODEL" \
                --items energy-forces md-replicas --replicas 1 --steps 20 -o "$OUTDIR/reference-jaxuft.json"
        fi
    fi
fi

# ------------------------------------------------------------------ 4. RESULTS.md
record
say "done in $(( $(date +%s) - T0 )) s; reports in $OUTDIR"
