"""JAX's persistent compilation cache as jaxuft turns it on (jaxuft/compile_cache.py): one directory per
machine, a second process loads what the first compiled (cache hits, the same results, no loader noise),
the command line opts in, and it stays off where the user says so."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

from jaxuft import compile_cache

REPO = Path(__file__).resolve().parents[1]

# a fresh process: enable the cache in DIR, run a jitted function, report the cache hits and the result
SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, jax.numpy as jnp
    from jaxuft import compile_cache
    hits = []
    jax.monitoring.register_event_listener(lambda e, **k: hits.append(e) if e == "/jax/compilation_cache/cache_hits" else None)
    where = compile_cache.enable(sys.argv[1], min_compile_seconds=0.0)

    @jax.jit
    def f(x):
        for _ in range(20):
            x = jnp.tanh(x @ x.T) + jnp.sin(x)
        return x.sum(axis=0)

    y = f(jnp.arange(64.0).reshape(8, 8) / 64)
    print(json.dumps({"dir": str(where), "hits": len(hits), "y": [float(v) for v in y]}))
""")


def _run(directory, env=None):
    env = {**os.environ, **(env or {})}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    res = subprocess.run([sys.executable, "-c", SCRIPT, str(directory)], capture_output=True, text=True, env=env,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    return json.loads(res.stdout.strip().splitlines()[-1]), res.stderr


def test_second_process_loads_instead_of_compiling(tmp_path):
    first, _ = _run(tmp_path)
    assert first["dir"] == str(tmp_path) and first["hits"] == 0
    assert any(tmp_path.iterdir())  # the program was written
    second, stderr = _run(tmp_path)
    assert second["hits"] >= 1  # (CompilationCounter counts a load too: JAX reports it as a backend compile)
    np.testing.assert_array_equal(second["y"], first["y"])
    assert "cpu_aot_loader" not in stderr  # XLA:CPU's spurious "+prefer-no-gather" lines are silenced


def test_directory_per_machine_and_switches(tmp_path, monkeypatch):
    key = compile_cache.machine_key()
    assert len(key) == 16 and int(key, 16) >= 0 and key == compile_cache.machine_key()
    monkeypatch.setenv("JAXUFT_COMPILE_CACHE", str(tmp_path / "c"))
    assert compile_cache.default_directory() == tmp_path / "c" / key
    monkeypatch.delenv("JAXUFT_COMPILE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert compile_cache.default_directory() == tmp_path / "xdg" / "jaxuft" / "xla" / key
    for off in ("0", "off", "false"):
        monkeypatch.setenv("JAXUFT_COMPILE_CACHE", off)
        assert compile_cache.default_directory() is None
    # the user's own JAX setting wins; an off switch leaves JAX alone
    out, _ = _run(tmp_path / "ours", env={"JAX_COMPILATION_CACHE_DIR": str(tmp_path / "theirs")})
    assert out["dir"] == "None" and not (tmp_path / "ours").exists()


# ``jaxuft md`` in a fresh process, counting the persistent-cache hits
CLI = textwrap.dedent("""
    import json, sys
    import jax
    hits = []
    jax.monitoring.register_event_listener(lambda e, **k: hits.append(e) if e == "/jax/compilation_cache/cache_hits" else None)
    from jaxuft.cli import main
    rc = main(sys.argv[1:])
    print(json.dumps({"rc": rc, "hits": len(hits)}))
""")


def test_command_line_opts_in(tmp_path):
    """``jaxuft md`` twice with the cache in a temporary directory: the first run writes its programs,
    the second loads them and gives the same trajectory (without a visible progress bar the MD
    program has no host callbacks, so it can be cached)."""
    from ase.build import bulk
    from ase.io import write

    write(tmp_path / "cu.xyz", bulk("Cu", "fcc", a=3.6, cubic=True) * (2, 2, 2))
    env = {**os.environ, "JAXUFT_COMPILE_CACHE": str(tmp_path / "cache"), "JAXUFT_PROGRESS": "0"}
    runs = []
    for k in range(2):
        out = tmp_path / f"run{k}"
        args = ["md", "--model", "morse", "--structure", str(tmp_path / "cu.xyz"), "--steps", "20",
                "--chunk-steps", "10", "-o", str(out)]
        res = subprocess.run([sys.executable, "-c", CLI, *args], capture_output=True, text=True, env=env, timeout=600,
                             cwd=REPO)
        assert res.returncode == 0, res.stderr[-2000:]
        report = json.loads(res.stdout.strip().splitlines()[-1])
        assert report["rc"] == 0
        runs.append((report["hits"], np.load(out / "trajectory.npz")))
    assert any((tmp_path / "cache").rglob("jit_*-cache"))
    assert runs[0][0] == 0 and runs[1][0] >= 1
    np.testing.assert_array_equal(runs[1][1]["positions"], runs[0][1]["positions"])
