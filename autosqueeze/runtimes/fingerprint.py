"""What a latency was measured on: CPU model and features, cores, threads, library versions.

Recorded with every exported recipe, so a user who sees other numbers after ``apply`` can
tell whether the machine or the software differs. Cheap (reads /proc/cpuinfo once).
"""
from __future__ import annotations

import os
import platform
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from typing import Any

# CPU features that decide which int8 / bf16 kernels run
FEATURES = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16",
            "asimd", "sve")
PACKAGES = ("torch", "transformers", "onnxruntime", "onnx", "onnxscript", "numpy", "optuna", "autosqueeze")


@lru_cache(maxsize=1)
def cpu_info() -> dict[str, Any]:
    """CPU model name and the kernel-relevant feature flags (Linux /proc/cpuinfo, else platform)."""
    model, flags = "", set[str]()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                if key in ("model name", "hardware", "cpu model") and not model:
                    model = value.strip()
                elif key in ("flags", "features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return {"model": model or platform.processor() or platform.machine(),
            "features": [f for f in FEATURES if f in flags], "logical_cores": os.cpu_count() or 1}


def cpu_has_bf16(features: list[str] | tuple[str, ...] | None = None) -> bool | None:
    """Whether the CPU has bf16 matmul units (x86 ``avx512_bf16`` / ``amx_bf16``); None when its
    features are unknown (no /proc/cpuinfo flags). ``features`` defaults to :func:`cpu_info`'s."""
    feats = cpu_info()["features"] if features is None else list(features)
    if not feats:
        return None
    return any(f in feats for f in ("avx512_bf16", "amx_bf16"))


def library_versions(packages: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    """Python's version and each of ``packages``' installed version (one not installed is left out)."""
    out = {"python": platform.python_version()}
    for pkg in packages:
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def hardware_fingerprint(threads: int | None = None, runtime: str | None = None) -> dict[str, Any]:
    """A JSON-safe description of this machine and software, for provenance."""
    fp: dict[str, Any] = {"cpu": cpu_info(), "system": f"{platform.system()} {platform.release()}",
                          "machine": platform.machine(), "versions": library_versions()}
    if threads is not None:
        fp["threads"] = int(threads)
    if runtime is not None:
        fp["runtime"] = runtime
    try:
        import torch

        fp["torch_backend"] = {"mkldnn": bool(torch.backends.mkldnn.is_available()),
                               "quantized_engine": str(torch.backends.quantized.engine),
                               "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    except Exception:  # torch is a dependency; this only guards odd builds
        pass
    return fp


def same_machine(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """What differs between two fingerprints in ways that change latency (empty: comparable)."""
    diffs = []
    for key, label in ((("cpu", "model"), "CPU"), (("threads",), "threads"), (("runtime",), "runtime"),
                       (("versions", "torch"), "torch"), (("versions", "onnxruntime"), "onnxruntime")):
        va: Any = a
        vb: Any = b
        for k in key:
            va = va.get(k) if isinstance(va, dict) else None
            vb = vb.get(k) if isinstance(vb, dict) else None
        if va is not None and vb is not None and va != vb:
            diffs.append(f"{label} {va} vs {vb}")
    return diffs
