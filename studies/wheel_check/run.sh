#!/usr/bin/env bash
# Issue 10's done-when: a wheel built with `pip wheel .`, installed in a fresh virtual environment,
# runs a study that names `search_space: quick` from a folder outside the repository.
#
# Offline here: the wheel is built from a clean copy of the working tree (tracked and untracked,
# not ignored, files: no stale build/ folder) without build isolation (setuptools is already
# installed), and the venv takes torch, transformers, optuna ... from the system site-packages
# (--system-site-packages; --no-deps installs the wheel alone). The system's editable install of
# autosqueeze stays visible to that venv only behind the wheel's copy: the script checks that
# `import autosqueeze` resolves inside the venv. The study is a tiny random 6-layer BERT with a
# word-level vocabulary and a 48-sentence SST-2 folder, both written here; two trials.
#
#   bash studies/wheel_check/run.sh          # writes studies/wheel_check/output.txt
set -euo pipefail
REPO="$(cd "$(dirname "$0")/../.." && pwd)"
OUT="$REPO/studies/wheel_check/output.txt"
WORK="$(mktemp -d /tmp/asq_wheel_check.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
PY="${PYTHON:-python3}"

{
echo "# wheel check ($(date -u +%Y-%m-%dT%H:%M:%SZ)), work folder outside the repository: $WORK"

echo "## 1. pip wheel . (a clean copy of the working tree)"
mkdir -p "$WORK/src" "$WORK/dist"
(cd "$REPO" && git ls-files -z --cached --others --exclude-standard \
  | while IFS= read -r -d '' f; do if [ -e "$f" ]; then cp --parents -- "$f" "$WORK/src"; fi; done)  # not deleted ones
(cd "$WORK/src" && "$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$WORK/dist" .)
WHEEL="$(ls "$WORK"/dist/autosqueeze-*.whl)"
echo "built $(basename "$WHEEL")"
"$PY" - "$WHEEL" <<'EOF'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
spaces = sorted(n for n in names if n.startswith("autosqueeze/search_spaces/") and n.endswith(".yaml"))
print(f"{len(names)} files; built-in spaces shipped: {[n.rsplit('/', 1)[1] for n in spaces]}")
assert "autosqueeze/search_spaces/quick.yaml" in names, "quick.yaml is not in the wheel"
assert "autosqueeze/builder.py" in names and "autosqueeze/artifact.py" in names
assert not any(n.startswith(("tests/", "studies/")) for n in names), "tests or studies leaked into the wheel"
EOF

echo "## 2. a fresh virtual environment with the wheel"
"$PY" -m venv --system-site-packages "$WORK/venv"
VPY="$WORK/venv/bin/python"
"$VPY" -m pip install -q --no-deps --no-index "$WHEEL"
mkdir -p "$WORK/outside" && cd "$WORK/outside"  # nothing of the repository on the path from here
"$VPY" - "$WORK/venv" <<'EOF'
import sys
import autosqueeze
from autosqueeze import builtin_space_names, resolve_space
where = autosqueeze.__file__
print(f"autosqueeze {autosqueeze.__version__} imported from {where}")
assert where.startswith(sys.argv[1]), f"not the wheel's copy: {where}"
print(f"built-in spaces: {builtin_space_names()}; quick = {resolve_space('quick')}")
assert resolve_space("quick").is_relative_to(sys.argv[1])  # no file "quick" here: the built-in space
EOF
echo "autosqueeze command: $(command -v "$WORK/venv/bin/autosqueeze")"

echo "## 3. a study outside the repository naming search_space: quick"
"$VPY" - <<'EOF'
"""A tiny random 6-layer BERT folder (word-level vocabulary) and a small SST-2 folder."""
import random
from pathlib import Path

import yaml
from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast
from transformers.utils import logging as hf_logging

hf_logging.disable_progress_bar()

good = ["a charming journey", "a masterpiece", "warm and funny", "truly moving", "smart and tender"]
bad = ["unflinchingly bleak", "a dull mess", "tedious and flat", "badly acted", "a waste of time"]
rng = random.Random(0)
glue = Path("glue_data/SST-2")
glue.mkdir(parents=True)
for split, n in (("train", 48), ("dev", 16)):
    rows = [(f"{rng.choice(good)} , {rng.choice(good)} .", 1) if i % 2 else (f"{rng.choice(bad)} , {rng.choice(bad)} .", 0)
            for i in range(n)]
    (glue / f"{split}.tsv").write_text("sentence\tlabel\n" + "".join(f"{s}\t{y}\n" for s, y in rows))
model = Path("tiny_model")
model.mkdir()
words = sorted({w for s in good + bad for w in s.split()} | {",", "."})
(model / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words) + "\n")
tok = BertTokenizerFast(vocab=str(model / "vocab.txt"), do_lower_case=True)
cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=6, num_attention_heads=4,
                 intermediate_size=64, max_position_embeddings=64)
BertForSequenceClassification(cfg).save_pretrained(model)
tok.save_pretrained(model)
study = {"name": "wheel_check", "task": "sst2", "model": "tiny_model", "search_space": "quick", "trials": 2,
         "sampler": "random", "teacher": {"steps": 60, "batch_size": 8, "max_seq_len": 16, "lr": 3.0e-3},
         "recovery": {"batch_size": 8, "max_seq_len": 16}, "hardware": {"seq_len": 16},
         "latency": {"warmup": 1, "repeats": 5, "min_time_s": 0.0, "idle_wait_s": 0.0}}
Path("study.yaml").write_text(yaml.safe_dump(study, sort_keys=False))
print(Path("study.yaml").read_text(), end="")
EOF
ls
export AUTOSQUEEZE_CACHE="$WORK/cache"
unset AUTOSQUEEZE_GLUE_DIR
echo "\$ autosqueeze search study.yaml --data-dir glue_data"
bars='^\s*$|[0-9]+%\|'  # progress bars (tqdm): not kept in the output
"$WORK/venv/bin/autosqueeze" search study.yaml --data-dir glue_data 2>&1 | tr '\r' '\n' | { grep -Ev "$bars" || true; }
echo "\$ autosqueeze report study.yaml"
"$WORK/venv/bin/autosqueeze" report study.yaml 2>&1 | tr '\r' '\n' | { grep -Ev "$bars" || true; }
"$VPY" - <<'EOF'
import optuna
study = optuna.load_study(study_name="wheel_check", storage="sqlite:///wheel_check.db")
done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
print(f"trials complete: {len(done)} of {len(study.trials)}; objectives: {study.metric_names}")
for t in done:
    print(f"  trial {t.number}: {t.user_attrs.get('methods')} -> {t.values}")
assert len(done) == 2
EOF
echo "## wheel check passed"
} 2>&1 | tee "$OUT"
exit "${PIPESTATUS[0]}"
