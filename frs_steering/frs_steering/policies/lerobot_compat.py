"""Import LeRobot 0.6.1's pi0 / pi05 code where its declared pins cannot be met.

LeRobot 0.6.1 declares Python >= 3.12 and torch < 2.12 and imports torchvision. Where the
interpreter is 3.11 and the only CPU torch is 2.13 (this project's machines), the model code
still runs once three things are handled at import time, and only when they are needed:

* **torchvision** (only used by LeRobot's dataset transforms; PyPI's build links CUDA torch):
  if it cannot be imported, a permissive stub module stands in for it.
* **Python 3.12 type-parameter syntax** (``class C[T]:``, ``def f[T](...)``, ``type X = ...``)
  in a handful of LeRobot modules: on Python < 3.12, a LeRobot module that fails to compile is
  recompiled with the type parameters rewritten to ``typing.Generic`` / ``TypeVar`` and
  annotations postponed. Modules that compile as they are load unchanged.
* the ``lerobot.policies`` package ``__init__`` imports every policy's config (and their
  dependencies): the three packages pi0 / pi05 need are entered without running their
  ``__init__``.

Nothing here touches a Python >= 3.12 install that has a working torchvision, except the last
point, which is harmless. docs/lerobot.md lists every deviation from LeRobot's pins.
"""

from __future__ import annotations
import __future__ as future_flags

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import re
import sys
import types
from dataclasses import dataclass
from typing import Any

SUPPORTED_VERSION = "0.6.1"

#: Packages entered without running their ``__init__`` (see the module docstring).
_BYPASSED_PACKAGES = ("lerobot.policies", "lerobot.policies.pi0", "lerobot.policies.pi05")


class LeRobotUnavailable(ImportError):
    """LeRobot (or what it needs) cannot be imported here; ``str(err)`` says why."""


# ------------------------------------------------------------------------------ torchvision stub


class _Anything(type):
    """A class whose every attribute and call is another such class (stands in for anything)."""

    def __getattr__(cls, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return _Anything(name, (), {})

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        return cls


class _StubModule(types.ModuleType):
    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return _Anything(name, (), {})


class _TorchvisionStub(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Resolves ``torchvision`` and its submodules to :class:`_StubModule` instances."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname == "torchvision" or fullname.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        module = _StubModule(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        return None


def _torchvision_importable() -> bool:
    if "torchvision" in sys.modules:
        return not isinstance(sys.modules["torchvision"], _StubModule)
    if importlib.util.find_spec("torchvision") is None:
        return False
    try:
        importlib.import_module("torchvision")
    except (ImportError, OSError, RuntimeError):
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]
        return False
    return True


# ------------------------------------------------------------------- type-parameter rewriting

_TYPE_PARAMS_DEF = re.compile(r"^(\s*(?:async\s+)?def\s+\w+)\[[^\]]*\]\(", re.M)
_TYPE_PARAMS_CLASS = re.compile(r"^(\s*)class\s+(\w+)\[([^\]]*)\](?:\(([^)]*)\))?\s*:", re.M)
_TYPE_ALIAS = re.compile(r"^(\s*)type\s+(\w+)\s*=", re.M)


def _generic_class(match: re.Match[str]) -> str:
    indent, name, params, bases = match.groups()
    names = [p.split(":")[0].strip() for p in params.split(",") if p.strip()]
    type_vars = ", ".join(f"__import__('typing').TypeVar({n!r})" for n in names)
    generic = f"__import__('typing').Generic[{type_vars}]"
    return f"{indent}class {name}({bases + ', ' if bases else ''}{generic}):"


def rewrite_type_parameters(source: str) -> str:
    """Python 3.12 type-parameter syntax -> Python 3.11 equivalents (annotations postponed)."""
    source = _TYPE_PARAMS_DEF.sub(r"\1(", source)
    source = _TYPE_PARAMS_CLASS.sub(_generic_class, source)
    return _TYPE_ALIAS.sub(r"\1\2 =", source)


class _RewritingLoader(importlib.machinery.SourceFileLoader):
    """Compiles a module as is, or, on a SyntaxError, with :func:`rewrite_type_parameters`."""

    def source_to_code(self, data: Any, path: Any, *, _optimize: int = -1) -> types.CodeType:  # type: ignore[override]
        source = data.decode("utf-8") if isinstance(data, bytes) else data
        try:
            return compile(source, path, "exec", dont_inherit=True, optimize=_optimize)
        except SyntaxError:
            flags = future_flags.annotations.compiler_flag
            rewritten = rewrite_type_parameters(source)
            return compile(rewritten, path, "exec", flags=flags, dont_inherit=True)

    def get_code(self, fullname: str) -> types.CodeType:  # never trust a .pyc of the original
        path = self.get_filename(fullname)
        return self.source_to_code(self.get_data(path), path)


class _RewritingFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if not fullname.startswith("lerobot."):
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.origin and spec.origin.endswith(".py"):
            spec.loader = _RewritingLoader(fullname, spec.origin)
        return spec


# ---------------------------------------------------------------------------------- entry point


@dataclass(frozen=True)
class LeRobotModules:
    """The LeRobot modules the pi0 / pi05 adapter uses."""

    version: str
    modeling_pi0: types.ModuleType
    modeling_pi05: types.ModuleType
    configuration_pi0: types.ModuleType
    configuration_pi05: types.ModuleType
    processor_pi0: types.ModuleType
    processor_pi05: types.ModuleType
    configs_policies: types.ModuleType
    configs_types: types.ModuleType
    pipeline: types.ModuleType
    vla_utils: types.ModuleType
    torchvision_stubbed: bool
    syntax_rewritten: bool


_MODULES: LeRobotModules | None = None


def _install_hooks() -> tuple[bool, bool]:
    spec = importlib.util.find_spec("lerobot")  # first: no hooks where there is no LeRobot
    if spec is None or not spec.submodule_search_locations:
        raise LeRobotUnavailable(
            "lerobot is not installed in this environment (scripts/setup_lerobot.sh builds "
            ".venv-lerobot with it)"
        )
    stub = not _torchvision_importable()
    if stub and not any(isinstance(f, _TorchvisionStub) for f in sys.meta_path):
        sys.meta_path.insert(0, _TorchvisionStub())
    rewrite = sys.version_info < (3, 12)
    if rewrite and not any(isinstance(f, _RewritingFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _RewritingFinder())
    root = list(spec.submodule_search_locations)[0]
    for package in _BYPASSED_PACKAGES:
        if package not in sys.modules:
            module = types.ModuleType(package)
            module.__path__ = [root + "/" + package.split(".", 1)[1].replace(".", "/")]
            sys.modules[package] = module
    return stub, rewrite


def import_lerobot() -> LeRobotModules:
    """Import LeRobot's pi0 / pi05 modules (installing the hooks above once); raises
    :class:`LeRobotUnavailable` naming the cause when that is not possible here."""
    global _MODULES
    if _MODULES is not None:
        return _MODULES
    stub, rewrite = _install_hooks()
    try:
        from importlib.metadata import version

        found = version("lerobot")
        names = {
            "modeling_pi0": "lerobot.policies.pi0.modeling_pi0",
            "modeling_pi05": "lerobot.policies.pi05.modeling_pi05",
            "configuration_pi0": "lerobot.policies.pi0.configuration_pi0",
            "configuration_pi05": "lerobot.policies.pi05.configuration_pi05",
            "processor_pi0": "lerobot.policies.pi0.processor_pi0",
            "processor_pi05": "lerobot.policies.pi05.processor_pi05",
            "configs_policies": "lerobot.configs.policies",
            "configs_types": "lerobot.configs.types",
            "pipeline": "lerobot.processor.pipeline",
            "vla_utils": "lerobot.policies.common.vla_utils",
        }
        modules = {key: importlib.import_module(name) for key, name in names.items()}
    except ImportError as error:
        raise LeRobotUnavailable(f"LeRobot's pi0 / pi05 code does not import: {error}") from error
    if found != SUPPORTED_VERSION:
        raise LeRobotUnavailable(
            f"lerobot {found} is installed; this adapter is written and tested against "
            f"{SUPPORTED_VERSION} (its denoise_step / embed_prefix signatures)"
        )
    _MODULES = LeRobotModules(
        version=found, torchvision_stubbed=stub, syntax_rewritten=rewrite, **modules
    )
    return _MODULES
