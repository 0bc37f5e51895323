"""The fmmkit-xformers plugin: registration, the selection logic, and the one-line error on machines
where xformers cannot run (this one: no CUDA, xformers not installed)."""

from __future__ import annotations

import importlib.machinery
import sys
import types

import pytest
import torch

import fmmkit.registry
import fmmkit_xformers
from fmmkit.core.attention import AttentionBackendError
from fmmkit.core.errors import UserError
from fmmkit.registry import load_registry
from fmmkit.spec import load_spec
from fmmkit.training.build import build_pipeline
from fmmkit_xformers import XFormersAttention

SPEC = {
    "data": {"kind": "digits"},
    "model": {"kind": "unet", "channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1,
              "attention_resolutions": [4], "groups": 4, "num_heads": 2, "time_dim": 8, "attention": "xformers"},
    "loss": {"kind": "lagrangian_self_distillation"},
    "train": {"device": "cpu"},
}


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> fmmkit.registry.Registry:
    """A registry with the plugin loaded from its module (installed or not), used by every lookup."""
    reg = load_registry(extra_plugins=[("fmmkit_xformers", fmmkit_xformers)], entry_points=False)
    monkeypatch.setattr(fmmkit.registry, "get_registry", lambda: reg)
    return reg


def _fake_xformers(monkeypatch: pytest.MonkeyPatch, *, cpp: bool = True, built_for: str | None = None) -> None:
    """Install a stand-in ``xformers`` package whose kernel is the math attention."""
    from fmmkit.nets.attention.functional import math_attention

    pkg = types.ModuleType("xformers")
    pkg.__spec__ = importlib.machinery.ModuleSpec("xformers", None)
    pkg.__version__ = "0.0.35"
    pkg._has_cpp_library = cpp
    ops = types.ModuleType("xformers.ops")
    ops.memory_efficient_attention = lambda q, k, v: math_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)
    lib = types.ModuleType("xformers._cpp_lib")
    lib._build_metadata = types.SimpleNamespace(torch_version=built_for) if built_for else None
    for name, module in (("xformers", pkg), ("xformers.ops", ops), ("xformers._cpp_lib", lib)):
        monkeypatch.setitem(sys.modules, name, module)


def test_plugin_registers_the_backend(registry: fmmkit.registry.Registry) -> None:
    entry = registry.get("attention_backend", "xformers")
    assert entry.component is XFormersAttention and entry.plugin == "fmmkit_xformers"
    assert not XFormersAttention.supports_forward_ad
    assert {"sdpa", "math", "forward_ad", "xformers"} <= set(registry.names("attention_backend"))


def test_this_machine_gets_a_one_line_reason() -> None:
    reason = XFormersAttention.unavailable_reason()
    assert reason is not None and "\n" not in reason
    if not torch.cuda.is_available():  # true here; the reason names the first blocker met
        assert "not installed" in reason or "CUDA" in reason or "built for" in reason


def test_choosing_it_here_fails_at_build_with_one_line(registry: fmmkit.registry.Registry) -> None:
    spec = load_spec(SPEC, registry=registry)
    with pytest.raises(AttentionBackendError) as info:
        build_pipeline(spec, registry)
    message = str(info.value)
    assert isinstance(info.value, UserError) and "\n" not in message
    assert message.startswith("model.attention: attention backend 'xformers' cannot run here: ")
    assert message.endswith(XFormersAttention.unavailable_reason())


def test_cli_spec_check_prints_the_reason(registry: fmmkit.registry.Registry, monkeypatch: pytest.MonkeyPatch,
                                          tmp_path, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    import fmmkit.spec.loader
    import fmmkit.training.build
    from fmmkit.cli import main

    monkeypatch.setattr(fmmkit.spec.loader, "get_registry", lambda: registry)
    monkeypatch.setattr(fmmkit.training.build, "get_registry", lambda: registry)
    spec = tmp_path / "x.toml"
    spec.write_text('[data]\nkind = "digits"\n[model]\nkind = "dit"\ndepth = 1\nhidden_size = 16\nnum_heads = 2\n'
                    'attention = "xformers"\n[loss]\nkind = "flow_matching"\n')
    assert main(["spec", "check", str(spec)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "attention backend 'xformers' cannot run here" in err[0]


def test_reason_when_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fmmkit_xformers.importlib.util, "find_spec", lambda name: None)
    assert XFormersAttention.unavailable_reason().startswith("xformers is not installed")


@pytest.mark.parametrize(("cpp", "built_for", "expected"), [
    (False, None, "was built for another torch"),
    (True, "2.5.1", "was built for torch 2.5.1"),
])
def test_reason_for_a_build_for_another_torch(monkeypatch: pytest.MonkeyPatch, cpp: bool, built_for: str | None,
                                              expected: str) -> None:
    _fake_xformers(monkeypatch, cpp=cpp, built_for=built_for)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    reason = XFormersAttention.unavailable_reason()
    assert reason is not None and expected in reason and torch.__version__ in reason


def test_reason_without_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_xformers(monkeypatch, built_for=torch.__version__)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "no CUDA device" in XFormersAttention.unavailable_reason()


def test_selected_when_runnable_and_switched_off_for_derivatives(registry: fmmkit.registry.Registry,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """With a working xformers, the backbone uses it for plain passes and forward_ad inside
    forward_ad_mode(); on CPU tensors the kernel refuses with a one-line error."""
    _fake_xformers(monkeypatch, built_for=torch.__version__)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert XFormersAttention.unavailable_reason() is None
    pipeline = build_pipeline(load_spec(SPEC, registry=registry), registry, device=torch.device("cpu"))
    backbone = pipeline.model.backbone
    layers = backbone.attention_layers()
    assert layers and all(isinstance(layer.active_backend(), XFormersAttention) for layer in layers)
    assert pipeline.model.supports_forward_ad
    with backbone.forward_ad_mode():
        assert all(type(layer.active_backend()).__name__ == "ForwardADAttentionBackend" for layer in layers)
    x = torch.randn(2, 1, 8, 8)
    with pytest.raises(AttentionBackendError, match="needs CUDA tensors"):
        pipeline.model(x, torch.zeros(2), torch.ones(2))


def test_kernel_layout_matches_math(monkeypatch: pytest.MonkeyPatch) -> None:
    """(B, H, N, D) in and out: the plugin transposes to xformers' (B, N, H, D) and back."""
    from fmmkit.nets.attention.functional import math_attention

    _fake_xformers(monkeypatch, built_for=torch.__version__)
    q, k, v = (torch.randn(2, 3, 5, 4, dtype=torch.float64) for _ in range(3))
    backend = XFormersAttention()
    monkeypatch.setattr(fmmkit_xformers, "_on_cuda", lambda x: True)
    out = backend.attend(q, k, v)
    torch.testing.assert_close(out, math_attention(q, k, v))
