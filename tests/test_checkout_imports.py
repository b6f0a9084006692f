"""Run from a checkout's root, ``kernels`` (the distribution transformers imports) is not shadowed.

Why: the Triton sources live in the top-level ``kernels/`` folder (installed as ``ddk_fast.kernels``);
with the root on ``sys.path`` (``python -m pytest`` from the root) a plain ``import kernels`` found that
folder and ``transformers`` failed to import ``kernels.CUDAProperties`` before any ddk_fast code ran.
"""
import importlib.metadata
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run_from_root(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_top_level_kernels_is_not_the_checkout_folder():
    try:
        importlib.metadata.version("kernels")
        installed = True
    except importlib.metadata.PackageNotFoundError:
        installed = False
    done = _run_from_root("import sys; sys.path.insert(0, ''); import kernels; print(kernels.__file__)")
    assert done.returncode == 0, done.stderr
    is_checkout = os.path.realpath(done.stdout.strip()) == os.path.realpath(os.path.join(ROOT, "kernels",
                                                                                          "__init__.py"))
    assert is_checkout != installed  # the distribution when there is one, else the (empty) checkout folder


def test_a_checkout_on_the_path_twice_does_not_recurse(tmp_path):
    link = tmp_path / "checkout"
    link.symlink_to(ROOT, target_is_directory=True)
    done = _run_from_root(f"import sys; sys.path[:0] = ['', {str(link)!r}]; import kernels; print('ok')")
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_transformers_and_ddk_fast_kernels_import_from_the_root():
    done = _run_from_root("import sys; sys.path.insert(0, ''); from transformers import PreTrainedModel; "
                          "import ddk_fast.kernels as k; print(k.__file__)")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith(os.path.join("kernels", "__init__.py"))
