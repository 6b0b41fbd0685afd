"""Import helpers for the PyTorch side of parity tests and golden-file generators.

Why this exists
---------------
timm imports torchvision at import time. The torchvision wheel on PyPI links against the CUDA
build of libtorch; installed beside a CPU-only torch, its C extension fails to load, torchvision
then skips registering its custom operators (``torchvision::nms`` and friends), and its
``_meta_registrations`` module crashes with ``RuntimeError: operator torchvision::nms does not
exist``. That error propagates out of ``import timm``.

The work-around is to define the two operator *schemas* torchvision's Python code refers to
(no kernels are needed: nothing in a ViT calls NMS) before torchvision is imported. The
``torch.library.Library`` object that owns the definitions must stay alive, otherwise torch
deregisters them, so it is kept in a module global.

We only apply the work-around when a plain ``import torchvision`` would fail. That check runs in
a subprocess, because a failed in-process import leaves half-initialised torchvision submodules
and partial registrations behind.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import types

# Owns the torchvision op schemas defined by the work-around; must outlive their use.
_TORCHVISION_LIB = None
_TIMM = None


def _torchvision_imports_cleanly() -> bool:
    if "torchvision" in sys.modules:
        return True
    if importlib.util.find_spec("torchvision") is None:
        return True  # nothing to break; timm decides what it needs
    proc = subprocess.run([sys.executable, "-c", "import torchvision"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return proc.returncode == 0


def _torchvision_op_exists(name: str) -> bool:
    import torch
    try:
        getattr(torch.ops.torchvision, name).default
        return True
    except (AttributeError, RuntimeError):
        return False


def import_timm() -> types.ModuleType:
    """Imports and returns ``timm``, working around a broken torchvision if needed.

    Idempotent: the probe and the op definitions happen at most once per process.
    """
    global _TORCHVISION_LIB, _TIMM
    if _TIMM is not None:
        return _TIMM
    import torch

    if _TORCHVISION_LIB is None and not _torchvision_imports_cleanly():
        missing = [n for n in ("nms", "qnms") if not _torchvision_op_exists(n)]
        if missing:
            lib = torch.library.Library("torchvision", "DEF")
            if "nms" in missing:
                lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
            if "qnms" in missing:
                lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold, "
                           "Tensor? roi_idxs=None) -> Tensor")
            _TORCHVISION_LIB = lib

    import timm
    _TIMM = timm
    return timm
