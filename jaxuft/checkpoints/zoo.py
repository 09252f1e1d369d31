"""Named foundation models: where they come from, how they are verified, and the local cache.

``fetch(name)`` returns the directory of the converted model (``config.json`` +
``params.safetensors``), downloading, verifying (sha256) and converting the
original checkpoint the first time only::

    $JAXUFT_CACHE (default ~/.cache/jaxuft)/
        checkpoints/<file>           original checkpoints, verified by sha256
        models/<name>/               converted models
        models/<name>.stamp.json     hashes tying a converted model to its source
        locks/<name>.lock            one fetch per model at a time

A cached checkpoint or converted model whose hash no longer matches (a truncated
download, a bit flip, a hand edit) is detected on the next ``fetch`` and
obtained or converted again.

Sources:

* ``sevennet-0`` ships inside the ``sevenn`` wheel on PyPI, so a machine that
  reaches only the package index can get it: from an installed ``sevenn`` (found
  with ``importlib.util.find_spec``, never imported) or with
  ``python -m pip download --no-deps sevenn==0.13.0`` and read out of the wheel.
* The MACE-MP files are GitHub release assets; where GitHub is unreachable the
  download fails within seconds (``timeout``) and the message says how to pass a
  local copy (``jaxuft fetch NAME --file FILE`` or ``jaxuft convert FILE DEST``).

CLI pieces: :func:`register` adds ``fetch`` and ``models`` sub-commands.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import CheckpointError, JaxuftError

#: the elements of MPtrj (H-Bi and Ac-Pu): both SevenNet-0 and the MACE-MP models cover them
MPTRJ_ELEMENTS = tuple(range(1, 84)) + tuple(range(89, 95))

#: seconds before a network step (connect / read) is given up
DEFAULT_TIMEOUT = 10.0


@dataclass(frozen=True)
class ZooModel:
    """One named model: its source checkpoint and what it covers."""

    name: str
    family: str  # jaxuft model family after conversion: "nequip" | "mace"
    description: str
    source: str  # an https URL, or "pypi:<requirement>" for a file inside a wheel
    filename: str  # name of the original checkpoint in the cache
    sha256: str  # of the original checkpoint file
    size: int  # bytes of the original checkpoint file
    cutoff: float  # Å
    elements: tuple = MPTRJ_ELEMENTS  # atomic numbers
    member: str = ""  # path inside the wheel (pypi sources)
    license: str = ""
    citation: str = ""
    extra: dict = field(default_factory=dict, compare=False)

    @property
    def symbols(self) -> list[str]:
        from ase.data import chemical_symbols

        return [chemical_symbols[z] for z in self.elements]


_MACE = "https://github.com/ACEsuit/mace-mp/releases/download"

MODELS: dict[str, ZooModel] = {
    m.name: m
    for m in (
        ZooModel(
            name="sevennet-0",
            family="nequip",
            description="SevenNet-0 (11Jul2024): NequIP, 5 layers, lmax 2, MPtrj; jaxuft's default",
            source="pypi:sevenn==0.13.0",
            member="sevenn/pretrained_potentials/SevenNet_0__11Jul2024/checkpoint_sevennet_0.pth",
            filename="checkpoint_sevennet_0__11Jul2024.pth",
            sha256="7052cb42b7b3be42b40b97fa0d21077a48c54b5548948fc4dcf346629f813c36",
            size=10268648,
            cutoff=5.0,
            license="MIT (sevenn)",
            citation="Park et al., J. Chem. Theory Comput. 20, 4857 (2024)",
        ),
        ZooModel(
            name="mace-mp-0b-small",
            family="mace",
            description="MACE-MP-0b small (Agnesi-transformed radial + ZBL), MPtrj",
            source=f"{_MACE}/mace_mp_0b/mace_agnesi_small.model",
            filename="mace_agnesi_small.model",
            sha256="7e3a0abcaf41e03a80e69f778e1b11b29de1cca704783dc25917a736392f8cf0",
            size=67603120,
            cutoff=6.0,
            license="MIT",
            citation="Batatia et al., arXiv:2401.00096",
        ),
        ZooModel(
            name="mace-mp-0-small",
            family="mace",
            description="MACE-MP-0 small (128x0e, L0), MPtrj",
            source=f"{_MACE}/mace_mp_0/2023-12-10-mace-128-L0_energy_epoch-249.model",
            filename="2023-12-10-mace-128-L0_energy_epoch-249.model",
            sha256="2ddb079cee0e131eaaf6912ba581b394551ead283e95c99cfe78c605d10b5736",
            size=32581838,
            cutoff=6.0,
            license="MIT",
            citation="Batatia et al., arXiv:2401.00096",
        ),
        ZooModel(
            name="mace-mp-0-medium",
            family="mace",
            description="MACE-MP-0 medium (128x0e+128x1o, L1), MPtrj",
            source=f"{_MACE}/mace_mp_0/2023-12-03-mace-128-L1_epoch-199.model",
            filename="2023-12-03-mace-128-L1_epoch-199.model",
            sha256="01bfe22100139f424713cf921144e5509cbe353d67aa9fa1be9c6e1e0ed35845",
            size=44422970,
            cutoff=6.0,
            license="MIT",
            citation="Batatia et al., arXiv:2401.00096",
        ),
        ZooModel(
            name="mace-mpa-0-medium",
            family="mace",
            description="MACE-MPA-0 medium, MPtrj + sAlex",
            source=f"{_MACE}/mace_mpa_0/mace-mpa-0-medium.model",
            filename="mace-mpa-0-medium.model",
            sha256="75428afe3a1d7d8062e19bcaabd5c433623cabf308242ec9fb493e38604fb638",
            size=79462305,
            cutoff=6.0,
            license="MIT",
            citation="Batatia et al., arXiv:2401.00096",
        ),
    )
}

DEFAULT_MODEL = "sevennet-0"


class FetchError(JaxuftError, ConnectionError):
    """A named model could not be obtained (network, pip, or a file that fails verification)."""


# ---------------------------------------------------------------------------------------------
# cache layout
# ---------------------------------------------------------------------------------------------
def cache_dir() -> Path:
    """``$JAXUFT_CACHE`` or ``~/.cache/jaxuft``."""
    env = os.environ.get("JAXUFT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "jaxuft"


def _model(name: str) -> ZooModel:
    try:
        return MODELS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(MODELS)} (see `jaxuft models`)") from None


def checkpoint_path(name: str) -> Path:
    """Where the verified original checkpoint of ``name`` is cached."""
    return cache_dir() / "checkpoints" / _model(name).filename


def model_dir(name: str) -> Path:
    """Where the converted model ``name`` is cached."""
    _model(name)
    return cache_dir() / "models" / name


def _stamp_path(name: str) -> Path:
    return cache_dir() / "models" / f"{name}.stamp.json"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _converted_files(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.is_file()) if d.is_dir() else []


def is_cached(name: str, verify: bool = False) -> bool:
    """Is a converted ``name`` in the cache?  ``verify=True`` also re-checks every hash."""
    m = _model(name)
    d, stamp_p = model_dir(name), _stamp_path(name)
    try:
        stamp = json.loads(stamp_p.read_text())
    except (OSError, ValueError):
        return False
    if stamp.get("source_sha256") != m.sha256 or not d.is_dir():
        return False
    files = stamp.get("files", {})
    if sorted(files) != [p.name for p in _converted_files(d)]:
        return False
    if verify:
        return all(_sha256(d / f) == h for f, h in files.items())
    return True


@contextlib.contextmanager
def _lock(name: str):
    p = cache_dir() / "locks" / f"{name}.lock"
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _say(msg: str, quiet: bool) -> None:
    if not quiet:
        print(f"[jaxuft] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# public entry point
# ---------------------------------------------------------------------------------------------
def fetch(
    name: str,
    *,
    file: str | os.PathLike | None = None,
    force: bool = False,
    timeout: float | None = None,
    quiet: bool = False,
) -> Path:
    """The directory of the converted model ``name``, obtaining and converting it if needed.

    ``file``: a local copy of the original checkpoint (or, for ``sevennet-0``, of the
    ``sevenn`` wheel) to use instead of the network; it must match the recorded sha256.
    ``force``: convert again even if a verified conversion is cached.
    ``timeout``: seconds per network step (default ``$JAXUFT_DOWNLOAD_TIMEOUT`` or 10).
    Raises :class:`FetchError` when the source cannot be reached or fails verification.
    """
    m = _model(name)
    if timeout is None:
        timeout = float(os.environ.get("JAXUFT_DOWNLOAD_TIMEOUT", DEFAULT_TIMEOUT))
    with _lock(name):
        if file is not None:  # verify (and cache) the given file even if a conversion exists
            checkpoint_path(name).parent.mkdir(parents=True, exist_ok=True)
            _install_local_file(m, Path(file), checkpoint_path(name))
        if not force and is_cached(name, verify=True):
            return model_dir(name)
        damaged = not force and (_stamp_path(name).exists() or model_dir(name).exists())
        if damaged:
            _say(f"{name}: the cached conversion in {model_dir(name)} is incomplete or fails its hash "
                 "check; converting again", quiet)
        try:
            ckpt = _obtain_checkpoint(m, None, timeout, quiet)
            return _convert_and_stamp(m, ckpt, quiet)
        except (FetchError, CheckpointError) as exc:
            if not damaged:
                raise
            raise type(exc)(f"{exc}\nThe cached copy of {name} at {model_dir(name)} is damaged and could not be "
                            f"repaired; clear it with `rm -rf {model_dir(name)} {_stamp_path(name)}` and run "
                            f"`jaxuft fetch {name}` again") from None


# ---------------------------------------------------------------------------------------------
# obtaining the original checkpoint
# ---------------------------------------------------------------------------------------------
def _obtain_checkpoint(m: ZooModel, file, timeout: float, quiet: bool) -> Path:
    dest = checkpoint_path(m.name)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if file is not None:
        _install_local_file(m, Path(file), dest)
        return dest
    if dest.exists():
        if dest.stat().st_size == m.size and _sha256(dest) == m.sha256:
            return dest
        _say(f"{dest} is corrupted (sha256 mismatch); obtaining it again", quiet)
        dest.unlink()
    if m.source.startswith("pypi:"):
        _from_pypi(m, dest, timeout, quiet)
    else:
        _download(m, dest, timeout, quiet)
    return dest


def _verify_into(m: ZooModel, tmp: Path, dest: Path, what: str) -> None:
    size, digest = tmp.stat().st_size, _sha256(tmp)
    if digest != m.sha256:
        tmp.unlink(missing_ok=True)
        raise FetchError(
            f"{what} for {m.name} does not match the recorded checksum "
            f"(sha256 {digest}, {size} bytes; expected {m.sha256}, {m.size} bytes). "
            "Nothing was cached. If you trust this file, convert it directly with "
            "`jaxuft convert FILE DEST` and use `--model DEST`."
        )
    os.replace(tmp, dest)


def _tmp_in(dest: Path) -> Path:
    fd, p = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    os.close(fd)
    return Path(p)


def _install_local_file(m: ZooModel, src: Path, dest: Path) -> None:
    if not src.is_file():
        raise FetchError(f"{src}: no such file")
    tmp = _tmp_in(dest)
    try:
        if m.member and zipfile.is_zipfile(src) and src.suffix == ".whl":
            _extract_member(src, m.member, tmp)
        else:
            shutil.copyfile(src, tmp)
        _verify_into(m, tmp, dest, f"{src}")
    finally:
        tmp.unlink(missing_ok=True)


def _extract_member(wheel: Path, member: str, out: Path) -> None:
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(member) as src, open(out, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    except KeyError:
        raise FetchError(f"{wheel} does not contain {member}") from None
    except zipfile.BadZipFile as e:
        raise FetchError(f"{wheel} is not a valid wheel: {e}") from None


def installed_sevenn_file(member: str) -> Path | None:
    """``member`` (``sevenn/...``) inside an installed ``sevenn`` package, located without importing it."""
    try:
        spec = importlib.util.find_spec("sevenn")
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    roots = list(spec.submodule_search_locations or [])
    if not roots and spec.origin:
        roots = [str(Path(spec.origin).parent)]
    rel = Path(*Path(member).parts[1:])
    for root in roots:
        p = Path(root) / rel
        if p.is_file():
            return p
    return None


def _from_pypi(m: ZooModel, dest: Path, timeout: float, quiet: bool) -> None:
    requirement = m.source[len("pypi:") :]
    local = installed_sevenn_file(m.member)
    tmp = _tmp_in(dest)
    try:
        if local is not None:
            shutil.copyfile(local, tmp)
            if _sha256(tmp) == m.sha256:
                _say(f"{m.name}: using the checkpoint of the installed sevenn ({local})", quiet)
                os.replace(tmp, dest)
                return
            _say(f"{m.name}: installed sevenn's checkpoint differs from {requirement}'s; downloading", quiet)
        with tempfile.TemporaryDirectory(prefix="jaxuft-pip-") as wd:
            _say(f"{m.name}: pip download --no-deps {requirement}", quiet)
            cmd = [
                sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                "--disable-pip-version-check", "--no-input", "--quiet",
                "--timeout", str(max(1, int(round(timeout)))), "--retries", "1",
                "-d", wd, requirement,
            ]  # fmt: skip
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=max(120.0, 20 * timeout))
            except (OSError, subprocess.TimeoutExpired) as e:
                raise FetchError(_pypi_help(m, requirement, str(e))) from None
            wheels = sorted(Path(wd).glob("*.whl"))
            if proc.returncode != 0 or not wheels:
                reason = (proc.stderr or proc.stdout or "").strip().splitlines()[-3:]
                raise FetchError(_pypi_help(m, requirement, " | ".join(reason) or f"exit {proc.returncode}"))
            _extract_member(wheels[0], m.member, tmp)
        _verify_into(m, tmp, dest, f"{m.member} from {wheels[0].name}")
    finally:
        tmp.unlink(missing_ok=True)


def _pypi_help(m: ZooModel, requirement: str, reason: str) -> str:
    return (
        f"cannot obtain {m.name} from the package index ({reason}).\n"
        f"On a machine with access run `pip download --no-deps {requirement}`, copy the wheel here and run\n"
        f"  jaxuft fetch {m.name} --file sevenn-*.whl\n"
        "(or `pip install sevenn` here; or convert any SevenNet checkpoint with `jaxuft convert FILE DEST` "
        "and use `--model DEST`)."
    )


def _download(m: ZooModel, dest: Path, timeout: float, quiet: bool) -> None:
    tmp = _tmp_in(dest)
    t0 = time.monotonic()
    try:
        try:
            req = urllib.request.Request(m.source, headers={"User-Agent": "jaxuft"})
            with urllib.request.urlopen(req, timeout=timeout) as resp, open(tmp, "wb") as out:
                total = int(resp.headers.get("Content-Length") or 0) or m.size
                bar = _progress(total, f"{m.name}", quiet)
                while block := resp.read(1 << 20):
                    out.write(block)
                    bar.update(len(block))
                bar.close()
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = getattr(e, "reason", None) or e
            raise FetchError(
                f"cannot download {m.name} from {m.source} ({reason}; gave up after "
                f"{time.monotonic() - t0:.1f} s).\n"
                f"If this machine cannot reach it, download the file elsewhere "
                f"(sha256 {m.sha256}), copy it here and run either\n"
                f"  jaxuft fetch {m.name} --file FILE      (verifies it and caches it under this name)\n"
                f"or\n"
                f"  jaxuft convert FILE DEST               and then use  --model DEST"
            ) from None
        _verify_into(m, tmp, dest, f"the file downloaded from {m.source}")
    finally:
        tmp.unlink(missing_ok=True)


class _NoBar:
    def update(self, n):
        pass

    def close(self):
        pass


def _progress(total: int, desc: str, quiet: bool):
    if quiet:
        return _NoBar()
    try:
        from tqdm import tqdm

        return tqdm(total=total, unit="B", unit_scale=True, desc=desc, file=sys.stderr)
    except ImportError:  # pragma: no cover
        return _NoBar()


# ---------------------------------------------------------------------------------------------
# conversion
# ---------------------------------------------------------------------------------------------
def _convert_and_stamp(m: ZooModel, ckpt: Path, quiet: bool) -> Path:
    dest = model_dir(m.name)
    dest.parent.mkdir(parents=True, exist_ok=True)
    _stamp_path(m.name).unlink(missing_ok=True)
    if dest.is_symlink() or dest.is_file():
        dest.unlink()
    elif dest.exists() and not _is_valid_model_dir(dest):
        shutil.rmtree(dest)  # a half-written or damaged cache entry (this directory belongs to the cache)
    _say(f"{m.name}: converting {ckpt.name}", quiet)
    metadata = {
        "zoo_name": m.name,
        "source": m.source + (f"#{m.member}" if m.member else ""),
        "source_sha256": m.sha256,
        "license": m.license,
        "citation": m.citation,
    }
    try:
        if m.family == "nequip":
            from .format import save_model
            from .sevennet import convert_sevennet
            from .torch_pickle import read_checkpoint

            from .validate import validate_model

            config, params = convert_sevennet(read_checkpoint(ckpt))
            validate_model(config, {"params": params}, source=f"{ckpt} (converted)")
            # same layout as jaxuft.checkpoints.convert writes: {"params": ...}
            save_model(dest, config, {"params": params}, metadata=metadata, overwrite=True)
        else:
            try:
                from .convert import convert
            except ImportError as e:  # pragma: no cover - depends on the MACE converter
                raise CheckpointError(f"the MACE converter is not available ({e})") from None
            convert(ckpt, dest, overwrite=True)
    except Exception:
        if dest.exists() and not (dest / "config.json").exists():
            shutil.rmtree(dest, ignore_errors=True)
        raise
    files = {p.name: _sha256(p) for p in _converted_files(dest)}
    stamp = {"name": m.name, "source_sha256": m.sha256, "files": files,
             "converted": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}  # fmt: skip
    from ..fileio import atomic_write_json

    atomic_write_json(_stamp_path(m.name), stamp)
    return dest


def _is_valid_model_dir(d: Path) -> bool:
    """A converted model whose config.json parses (the conversion will replace it)."""
    from .format import is_converted_model

    return is_converted_model(d)


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------
def _elements_summary(zs) -> str:
    from ase.data import chemical_symbols

    zs = sorted(zs)
    runs, start = [], zs[0]
    for a, b in zip(zs, zs[1:] + [None]):
        if b != a + 1:
            runs.append(chemical_symbols[start] + ("" if a == start else f"-{chemical_symbols[a]}"))
            start = b
    return f"{len(zs)} ({', '.join(runs)})"


def models_table() -> str:
    """A plain-text table of the named models (what ``jaxuft models`` prints)."""
    rows = [("name", "family", "size", "elements", "cutoff", "cached", "description")]
    for m in MODELS.values():
        rows.append((
            m.name, m.family, f"{m.size / 1e6:.1f} MB", _elements_summary(m.elements),
            f"{m.cutoff:g} Å", "yes" if is_cached(m.name) else "no", m.description,
        ))  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:-1], widths)) + "  " + r[-1] for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths) + "  " + "-" * 11)
    lines.append(f"\ncache: {cache_dir()}  (set JAXUFT_CACHE to move it); default model: {DEFAULT_MODEL}")
    return "\n".join(lines)


def _cmd_fetch(args) -> int:
    try:
        path = fetch(args.name, file=args.file, force=args.force, timeout=args.timeout)
    except (FetchError, CheckpointError, KeyError) as e:
        print(f"jaxuft fetch: {e.args[0] if isinstance(e, KeyError) else e}", file=sys.stderr)
        return 1
    print(path)
    return 0


def _cmd_models(args) -> int:
    print(models_table())
    return 0


def register(subparsers) -> None:
    """Add ``fetch NAME`` and ``models`` to an argparse sub-parser collection.

    Each sub-command sets ``func``: call ``args.func(args)``, which returns an exit code.
    """
    p = subparsers.add_parser(
        "fetch",
        help="download, verify and convert a named model into the cache",
        description="Obtain a named model (see `jaxuft models`), verify its sha256, convert it "
        "once and print the directory of the converted model.",
    )
    p.add_argument("name", choices=sorted(MODELS), metavar="NAME", help=", ".join(MODELS))
    p.add_argument("--file", help="use this local copy of the original checkpoint (or sevenn wheel)")
    p.add_argument("--force", action="store_true", help="convert again even if cached")
    p.add_argument("--timeout", type=float, default=None, help=f"network timeout in s (default {DEFAULT_TIMEOUT:g})")
    p.set_defaults(func=_cmd_fetch)
    p = subparsers.add_parser("models", help="list the named models and whether they are cached")
    p.set_defaults(func=_cmd_models)
