"""Triton kernels of the engine, installed as ``ddk_fast.kernels`` (``setup.py``'s ``package_dir``).

This folder sits at the top of a checkout, so whenever the checkout's root is on ``sys.path``
(``python -m pytest`` or ``python -m ddk_fast.cli`` run from the root, ``PYTHONPATH=<checkout>``) a plain
``import kernels`` finds it before the ``kernels`` distribution that ``transformers`` depends on (and
imports from ``transformers.integrations.hub_kernels``). Imported under that top-level name, this file
therefore steps aside: it loads the installed distribution in its place, so ``transformers`` works from
a checkout as it does elsewhere (without the distribution it stays an empty package, which transformers
reads as "kernels not available"). As ``ddk_fast.kernels`` it is an ordinary package.
"""
import importlib.machinery
import importlib.util
import os
import sys


def _distribution_spec():
    """The spec of a ``kernels`` found elsewhere on ``sys.path`` than this folder (under any spelling of
    its path: a symlinked checkout on the path twice must not find itself again), or None."""
    here = os.path.realpath(__file__)
    for entry in sys.path:
        spec = importlib.machinery.PathFinder.find_spec("kernels", [entry or os.curdir])
        if spec is not None and spec.origin and os.path.realpath(spec.origin) != here:
            return spec
    return None


if __name__ == "kernels":
    _spec = _distribution_spec()
    if _spec is not None:  # else nothing else is called kernels: this folder stays, an empty package
        _module = importlib.util.module_from_spec(_spec)
        sys.modules["kernels"] = _module  # the import statement returns what sys.modules holds after this file
        _spec.loader.exec_module(_module)
