"""Every registered method's cases (tests/cases) deployed through ONNX Runtime, on every architecture.

Each case is built on its tiny model of each architecture in ``tiny.ARCHS`` (builder.build),
exported the way ``apply`` and an ``onnxruntime`` profile export it
(:func:`export_for_deployment`, TorchScript exporter for speed; the dynamo exporter is covered
in test_onnx.py), run in an ONNX Runtime session, and its logits compared with the PyTorch
model's on a padded batch of another shape than the traced one. Tolerances, relative to the
largest |logit| of the PyTorch model:

- fp32 graphs (structure, training, weight-only int8/int4, embedding int8, vocabulary): 1e-4;
- fp16 weights (``cast_precision`` fp16): 5e-3;
- int8 redone by ONNX Runtime (``quantize_dynamic`` → ORT dynamic int8, ``quantize_static`` →
  ORT QDQ static int8): 5e-2, and the predicted class agrees wherever PyTorch's top-2 margin is
  larger than twice that bound (other kernels round differently; near ties may flip).

A case ONNX Runtime cannot run is refused with one line (no graph dump, no colour codes) that
names the reason; :func:`refusal` lists which, and the test asserts that exact refusal. A
method the architecture adapter refuses for a family is skipped here (the methods contract
asserts that refusal), and so is a pair ONNX export cannot handle for a reason of the
architecture's own (:data:`ARCH_SKIPS`, with the reason).
"""
from __future__ import annotations

import importlib
import re

import pytest
import torch

from autosqueeze.builder import build
from autosqueeze.measure import HardwareProfile
from autosqueeze.methods import get_method, method_names
from autosqueeze.recipe import Recipe, Step
from autosqueeze.runtimes import OnnxUnsupported, export_for_deployment
from tests import tiny

pytest.importorskip("onnxruntime", reason="needs the onnx extra: pip install 'autosqueeze[onnx]'")
INT8 = ("quantize_dynamic", "quantize_static")
# (arch, method or None for every method) -> why ONNX export of that pair is skipped
ARCH_SKIPS: dict[tuple[str, str | None], str] = {}


def refusal(name: str, params: dict) -> str | None:
    """The reason (a regex) a case is refused, or None when it must export."""
    if name == "early_exit":
        return r"^its cost is decided per batch at run time \(early exit\)"
    if (name == "cast_precision" and params.get("dtype", "bf16") == "bf16") or \
            (name == "quantize_weights" and params.get("compute") == "bf16"):
        return r"^bf16 weights or compute: ONNX Runtime's CPU provider has no bf16 MatMul kernel"
    if name == "prune_unstructured" and params.get("kernel") == "csr":
        return r"^CSR sparse kernels \(prune_unstructured kernel: csr\) have no ONNX operator"
    return None


def tolerance(name: str, params: dict) -> float:
    if name in INT8:
        return 5e-2
    if name == "cast_precision" and params.get("dtype") == "fp16":
        return 5e-3
    return 1e-4


def _cases():
    out = []
    for name in method_names():
        try:
            mod = importlib.import_module(f"tests.cases.case_{name}")
        except ModuleNotFoundError:  # test_methods_contract fails for it already
            continue
        for arch in tiny.ARCHS:
            for i, params in enumerate(mod.CASES):
                out.append(pytest.param(arch, name, params, mod, id=f"{arch}-{name}-{i}"))
    return out


def _ort_logits(path: str, b: dict[str, torch.Tensor]) -> torch.Tensor:
    from autosqueeze.runtimes.ort import OrtClassifier, make_session

    model = OrtClassifier(make_session(path, HardwareProfile(threads=1)))
    return model(**{k: v for k, v in b.items() if k != "labels"}).logits


def assert_one_line(reason: str) -> None:
    assert reason and "\n" not in reason and "\x1b" not in reason and len(reason) <= 600, repr(reason)
    assert "graph(" not in reason and "Traceback" not in reason


@pytest.mark.parametrize("arch,name,params,case", _cases())
def test_method_deploys_in_onnx_runtime(arch, name, params, case, tmp_path, tmp_path_factory, monkeypatch):
    skip = ARCH_SKIPS.get((arch, name)) or ARCH_SKIPS.get((arch, None))
    if skip:
        pytest.skip(f"{arch} x {name}: {skip}")
    maker = getattr(case, "make_teacher", None)
    teacher = maker(arch) if maker is not None else tiny.tiny_model(arch)
    why = get_method(name).refusal(teacher)
    if why is not None:
        pytest.skip(f"{name} is refused for {arch} ({why}); test_methods_contract checks the refusal")
    if hasattr(case, "prepare"):  # a case that needs more than params (elastic: a cached student)
        params = case.prepare(params, tmp_path_factory.mktemp("case"), monkeypatch, maker(arch) if maker else
                              tiny.tiny_model(arch))
    recipe = Recipe(steps=[Step(name, params)])
    built = build(recipe, teacher, tiny.context(teacher))
    path = tmp_path / "model.onnx"
    expected = refusal(name, params)
    if expected is not None:
        with pytest.raises(OnnxUnsupported) as err:
            export_for_deployment(built.model, path, float_model=built.float_model, recipe=recipe,
                                  exporter="torchscript")
        assert_one_line(str(err.value))
        assert re.search(expected, str(err.value)), str(err.value)
        assert not path.exists()
        return
    info = export_for_deployment(built.model, path, float_model=built.float_model, recipe=recipe,
                                 exporter="torchscript")
    assert info.quantized == (name in INT8) and path.is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]  # no float graph left behind
    b = tiny.batch(batch_size=5, seq=9, seed=4)  # not the traced shape; one padded row
    ref = tiny.logits(built.model, b)
    out = _ort_logits(str(path), b)
    bound = tolerance(name, params) * float(ref.abs().max()) + 1e-6
    diff = float((out - ref).abs().max())
    assert diff <= bound, f"ONNX Runtime differs from PyTorch by {diff:.3g} (bound {bound:.3g})"
    if name in INT8:
        top2 = ref.topk(2, dim=1).values
        clear = (top2[:, 0] - top2[:, 1]) > 2 * bound
        assert torch.equal(out.argmax(1)[clear], ref.argmax(1)[clear])


def test_refusals_are_one_line_even_when_the_exporter_dumps_a_graph(tmp_path, capfd):
    """An exporter failure deep inside (here: an operator without an ONNX symbolic) comes back as
    one line naming the exporter, and nothing is printed to the terminal."""
    from autosqueeze.runtimes import export_onnx

    class Unexportable(torch.nn.Module):
        def forward(self, x):  # noqa: ANN001, ANN201
            return torch.linalg.eigvals(x @ x.transpose(-1, -2)).real

    model = tiny.tiny_bert(layers=1)
    model.bert.encoder.layer[0].output.dense = torch.nn.Sequential(model.bert.encoder.layer[0].output.dense,
                                                                   _Swap(Unexportable()))
    with pytest.raises(OnnxUnsupported) as err:
        export_onnx(model, tmp_path / "x.onnx", exporter="torchscript")
    assert_one_line(str(err.value))
    assert str(err.value).startswith("torchscript exporter: ")
    captured = capfd.readouterr()
    assert "graph(" not in captured.out + captured.err and "\x1b[" not in captured.out + captured.err


class _Swap(torch.nn.Module):
    """Applies ``inner`` to each sequence's square block and adds it back (keeps the shape)."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.0 * self.inner(x[..., : x.shape[-2], :]).sum()
