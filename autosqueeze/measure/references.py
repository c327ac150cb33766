"""The three references every result is compared with, timed interleaved in one process.

The fp32 teacher in PyTorch, its PyTorch dynamic int8 (``quantize_dynamic``) and its ONNX
Runtime dynamic int8 (what a user deploys without autosqueeze) are called round-robin, one
call of each per round, together with any candidates (:func:`interleaved`); a speedup is the
median over rounds of the per-round ratio reference / candidate (:func:`paired_speedup`), with
its p10–p90, so what both calls of a round share (machine load, clocks) cancels. This module
times and summarizes callables; the references themselves, as callables, come from
:mod:`autosqueeze.runtimes.references` (:func:`~autosqueeze.runtimes.references.time_references`).

Used by the headline study (its reference stage) and the timing-agreement study; a search
records the same three points through its trial path (``search.objective.reference_points``).
"""
from __future__ import annotations

from .timing import REFERENCES, interleaved, paired_speedup, summarize

__all__ = ["REFERENCES", "interleaved", "paired_speedup", "summarize"]
