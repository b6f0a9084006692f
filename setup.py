"""Build ddk_fast._C: the C++ (OpenMP) part always, the CUDA part when it can be built.

Why this shape: build hosts often have no GPU, so `torch.cuda.is_available()` is the wrong test.
CUDA is built when torch is a CUDA build and nvcc is found, or when FORCE_CUDA=1.
"""
import glob
import os
import shutil
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _want_cuda(torch_mod, cuda_home):
    if os.environ.get("FORCE_CUDA", "0") == "1":
        return True
    if os.environ.get("DDK_FAST_NO_CUDA", "0") == "1":
        return False
    return torch_mod.version.cuda is not None and cuda_home is not None


def _extensions():
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
    except ImportError:  # pragma: no cover - documented: install torch first
        sys.stderr.write(
            "ddk-fast: torch must be installed before building the extension "
            "(pip install torch, then pip install --no-build-isolation -e .)\n"
        )
        raise
    cpp_sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    cu_sources = sorted(glob.glob(os.path.join("csrc", "*.cu")))
    cxx_flags = ["-O3", "-std=c++17", "-fopenmp"]
    if sys.platform == "linux" and os.environ.get("DDK_FAST_NATIVE", "0") == "1":
        cxx_flags.append("-march=native")
    link_args = ["-fopenmp"]
    if _want_cuda(torch, CUDA_HOME) and cu_sources:
        ext = CUDAExtension(
            "ddk_fast._C",
            cpp_sources + cu_sources,
            define_macros=[("WITH_CUDA", None)],
            extra_compile_args={
                "cxx": cxx_flags,
                "nvcc": ["-O3", "-std=c++17", "--use_fast_math", "-lineinfo"],
            },
            extra_link_args=link_args,
        )
    else:
        ext = CppExtension("ddk_fast._C", cpp_sources, extra_compile_args={"cxx": cxx_flags},
                           extra_link_args=link_args)
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)}


ext_modules, cmdclass = _extensions()

setup(
    packages=find_packages(include=["ddk_fast", "ddk_fast.*"]) + ["ddk_fast.kernels"],
    package_dir={"ddk_fast.kernels": "kernels"},
    package_data={"ddk_fast": ["**/*.txt", "**/*.json"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
