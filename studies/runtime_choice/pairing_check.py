"""Alone, paired and in blocks: one ONNX Runtime point (work/trial-36, from run.py) against the teacher.

    python studies/runtime_choice/pairing_check.py   # after run.py; writes results/pairing_check.json
"""
import json
import statistics
import time
from pathlib import Path

import numpy as np
import optuna
import torch
from transformers import AutoModelForSequenceClassification

from autosqueeze import (
    HardwareProfile,
    OrtClassifier,
    StudyRecord,
    fixed_threads,
    hardware_fingerprint,
    make_session,
    synthetic_inputs,
)

HERE = Path(__file__).resolve().parent
folder = HERE / "work" / "trial-36"

s = optuna.load_study(study_name="runtime_choice", storage=f"sqlite:///{HERE / 'results' / 'runtime_choice.db'}")
teacher = AutoModelForSequenceClassification.from_pretrained(StudyRecord.from_study(s).teacher_info["path"]).eval()
prof = HardwareProfile(threads=2, batch_size=1, seq_len=128, runtime="onnxruntime")
batch = synthetic_inputs(prof, teacher.config.vocab_size)


def run(m):
    return lambda: m(**batch)


def alone(f, n=200):
    for _ in range(10):
        f()
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        f()
        ts.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(ts)


with fixed_threads(2), torch.inference_mode():
    T = run(teacher)
    on = OrtClassifier(make_session(folder / "model.onnx", prof, spinning=True), None)
    off = OrtClassifier(make_session(folder / "model.onnx", prof, spinning=False), None)
    res = {}
    for rnd in range(2):
        res[f"teacher_alone_{rnd}"] = alone(T)
        res[f"ort_spin_on_alone_{rnd}"] = alone(run(on))
        res[f"ort_spin_off_alone_{rnd}"] = alone(run(off))
    for name, m in (("off", off), ("on", on)):
        c, t = [], []
        for _ in range(200):
            t0 = time.perf_counter()
            T()
            t1 = time.perf_counter()
            m(**batch)
            t2 = time.perf_counter()
            t.append(t1 - t0)
            c.append(t2 - t1)
        r = np.array(t) / np.array(c)
        res[f"paired_spin_{name}"] = {"teacher_ms": 1e3 * np.median(t), "cand_ms": 1e3 * np.median(c),
                                      "ratio": float(np.median(r))}
        # blocks of 20
        c, t = [], []
        for _ in range(10):
            tb = [0.0] * 20
            for i in range(20):
                t0 = time.perf_counter()
                T()
                tb[i] = time.perf_counter() - t0
            cb = [0.0] * 20
            for i in range(20):
                t0 = time.perf_counter()
                m(**batch)
                cb[i] = time.perf_counter() - t0
            t.append(np.median(tb[2:]))
            c.append(np.median(cb[2:]))
        res[f"blocks_spin_{name}"] = {"teacher_ms": 1e3 * np.median(t), "cand_ms": 1e3 * np.median(c),
                                      "ratio": float(np.median(np.array(t) / np.array(c)))}

res["fingerprint"] = hardware_fingerprint(2, "onnxruntime")
(HERE / "results" / "pairing_check.json").write_text(json.dumps(res, indent=1) + "\n")
print(json.dumps(res, indent=1))
