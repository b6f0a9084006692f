"""The build, the extension loader, the CLI, and the CUDA sources' compile check."""
import glob
import os
import shutil
import subprocess
import sys

import pytest
import torch

import ddk_fast
from ddk_fast import _ext

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_extension_is_built_and_matches_torch():
    mod = _ext.extension()
    assert mod is not None, _ext.extension_error()
    assert mod.TORCH_VERSION.split("+")[0] == torch.__version__.split("+")[0]
    assert _ext.extension_error() is None


def test_cpp_soft_ce_matches_reference():
    """A C++ op from _C runs and matches its plain-PyTorch formula, value and gradient."""
    mod = _ext.require_extension()
    student = torch.randn(37, 5, dtype=torch.float32)
    teacher = torch.randn(37, 5, dtype=torch.float32)
    temperature = 2.5
    row_loss, grad = mod.soft_ce(student, teacher, temperature, True)
    ref_student = student.clone().requires_grad_(True)
    p_t = torch.softmax(teacher / temperature, -1)
    ref_rows = -(p_t * torch.log_softmax(ref_student / temperature, -1)).sum(-1)
    (ref_rows.mean() * temperature**2).backward()
    torch.testing.assert_close(row_loss, ref_rows.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, ref_student.grad, rtol=1e-5, atol=1e-7)


def test_extension_rejects_bad_shapes_with_a_clear_message():
    mod = _ext.require_extension()
    with pytest.raises(RuntimeError, match="same shape"):
        mod.soft_ce(torch.randn(3, 4), torch.randn(3, 5), 1.0, False)


def test_stale_extension_message(monkeypatch):
    """A missing extension is reported plainly; the reference paths stay usable."""
    _ext._load.cache_clear()
    monkeypatch.setitem(sys.modules, "ddk_fast._C", None)  # makes `from ddk_fast import _C` fail
    monkeypatch.delattr(ddk_fast, "_C", raising=False)
    try:
        assert _ext.extension() is None
        assert "not built" in _ext.extension_error() or "another torch" in _ext.extension_error()
        with pytest.raises(RuntimeError, match="pip install --no-build-isolation"):
            _ext.require_extension()
    finally:
        monkeypatch.undo()
        _ext._load.cache_clear()
    assert _ext.extension() is not None


def test_package_imports_without_gpu_queries():
    """Importing the package and its kernels in a fresh interpreter must not initialise CUDA."""
    code = (
        "import torch, ddk_fast, ddk_fast.ops, ddk_fast.kernels, ddk_fast.cli;"
        "import importlib, pkgutil;"
        "[importlib.import_module('ddk_fast.kernels.' + m.name) for m in pkgutil.iter_modules(ddk_fast.kernels.__path__)];"
        "print(torch.cuda.is_initialized())"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip().endswith("False")


def test_cli_version_and_doctor():
    exe = [sys.executable, "-m", "ddk_fast.cli"]
    version = subprocess.run(exe + ["--version"], capture_output=True, text=True, check=True)
    assert ddk_fast.__version__ in version.stdout
    doctor = subprocess.run(exe + ["doctor"], capture_output=True, text=True, check=True)
    for key in ("torch", "triton", "transformers", "extension_cpu", "triton_mode", "gated_attention", "masked_ffn"):
        assert key in doctor.stdout


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed")
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_cuda_sources_compile(arch, tmp_path):
    """Every .cu file compiles with the machine's nvcc (plain CUDA: no torch headers needed)."""
    sources = sorted(glob.glob(os.path.join(ROOT, "csrc", "*.cu")))
    assert sources, "no CUDA sources found"
    for src in sources:
        obj = tmp_path / (os.path.basename(src) + f".{arch}.o")
        cmd = ["nvcc", "-c", "-std=c++17", "-O2", f"-arch={arch}", "-I", os.path.join(ROOT, "csrc"), src, "-o", str(obj)]
        res = subprocess.run(cmd, capture_output=True, text=True)
        assert res.returncode == 0, f"{os.path.basename(src)} failed for {arch}:\n{res.stderr}"
        assert obj.stat().st_size > 0
