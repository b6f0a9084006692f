"""Triton kernels of the engine, installed as ``ddk_fast.kernels`` (``setup.py``'s ``package_dir``).

This folder sits at the top of a checkout, so whenever the checkout's root is on ``sys.path``
(``python -m pytest`` or ``python -m ddk_fast.cli`` run from the root, ``PYTHONPATH=<checkout>``) a plain
``import kernels`` finds it before the ``kernels`` distribution that ``transformers`` depends on (and
imports from ``transformers.integrations.hub_kernels``). Imported under that top-level name, this file
therefore steps aside: it loads the installed distribution in its place, so ``transformers`` works from
a checkout as it does elsewhere. As ``ddk_fast.kernels`` it is an ordinary package.
"""
import importlib.machinery
import importlib.util
import os
import sys

if __name__ == "kernels":
    _checkout = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    _elsewhere = [p for p in sys.path if os.path.abspath(p or os.curdir) != _checkout]
    _spec = importlib.machinery.PathFinder.find_spec("kernels", _elsewhere)
    if _spec is None:
        raise ModuleNotFoundError("No module named 'kernels' (this checkout's kernels/ folder is "
                                  "ddk_fast.kernels, not the 'kernels' distribution)", name="kernels")
    _module = importlib.util.module_from_spec(_spec)
    sys.modules["kernels"] = _module  # the import statement returns what sys.modules holds after this file ran
    _spec.loader.exec_module(_module)
