"""The built-in search spaces, addressable by name (``search_space: quick``).

Their home is the repository's top-level ``search_spaces/`` folder; the built package ships
them as ``autosqueeze/search_spaces/*.yaml`` (see ``setup.py``). A name is a file's stem:
``quick`` is ``search_spaces/quick.yaml``.
"""
from __future__ import annotations

import re
from pathlib import Path

_NAME = re.compile(r"[A-Za-z0-9_\-]+")


def builtin_spaces_dir() -> Path | None:
    """The folder holding the built-in spaces: inside the installed package (a wheel), else
    the source checkout's top-level ``search_spaces/`` (an editable install)."""
    package = Path(__file__).resolve().parent
    shipped = package / "search_spaces"
    if shipped.is_dir():
        return shipped
    checkout = package.parent
    if (checkout / "pyproject.toml").is_file() and (checkout / "search_spaces").is_dir():
        return checkout / "search_spaces"
    return None


def builtin_space_names() -> list[str]:
    """Names of the built-in spaces, sorted (``full``, ``quick``, ...)."""
    folder = builtin_spaces_dir()
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder else []


def builtin_space(name: str) -> Path:
    """The file of the built-in space ``name``; FileNotFoundError naming the choices if none."""
    folder = builtin_spaces_dir()
    path = folder / f"{name}.yaml" if folder and _NAME.fullmatch(name) else None
    if path is None or not path.is_file():
        raise FileNotFoundError(f"no built-in search space {name!r}; built-in: {', '.join(builtin_space_names())}")
    return path


def resolve_space(value: str | Path, folder: str | Path = ".") -> Path:
    """A study's ``search_space`` value as a file path.

    A path (absolute, or relative to ``folder``, the study file's folder) that exists wins;
    otherwise a bare name (``quick``, ``full``) names a built-in space. FileNotFoundError
    says what was looked for.
    """
    text = str(value)
    path = Path(text)
    path = path if path.is_absolute() else Path(folder) / path
    if path.is_file():
        return path.resolve()
    if _NAME.fullmatch(text) and text in builtin_space_names():
        return builtin_space(text).resolve()
    raise FileNotFoundError(f"search_space {path} does not exist (built-in spaces, by name: "
                            f"{', '.join(builtin_space_names()) or 'none found'})")
