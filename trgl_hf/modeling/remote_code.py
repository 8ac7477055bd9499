"""Remote code of whole TRGL models: `AutoModel.from_pretrained(folder, trust_remote_code=True)` without trgl_hf.

transformers' remote-code loader copies flat `*.py` files and follows `from .name import` only within one folder, but a
[`TRGLModel`] needs a good part of trgl_hf (architectures, models, tasks, ...). So `TRGLModel.save_pretrained` writes,
next to the weights:

- `configuration_trgl_remote.py` and `modeling_trgl_remote.py`: the entry points named by `config.json`'s `auto_map`;
- `trgl_hf_bundle.py`: this file's source followed by the sources of the trgl_hf modules the model needs (found by
  following relative imports from `modeling_trgl` and `configuration_trgl`), zlib-compressed and base64-encoded:
  transformers scans remote files for imports and refuses packages that are not installed, so they stay data.

At load, the entry points give the installed trgl_hf's `TRGLConfig` / `TRGLModel` when trgl_hf is importable and its
`__version__` is the one that saved the folder (the classes users import). Otherwise the bundled sources are installed
as a private package `_trgl_hf_bundle_<hash>` by an import hook of this module (the real `trgl_hf/__init__.py`, which
imports the trainer, datasets and accelerate, is never run: only the bundled submodules are), and the entry points
give its classes. The bundle needs only torch, transformers, huggingface_hub, numpy and safetensors.

This module imports only the standard library at import time and has no relative imports: saved folders run a copy.
"""

from __future__ import annotations

import ast
import base64
import hashlib
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import linecache
import logging
import os
import sys
import tempfile
import threading
import types
import zlib
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# Set in the copies written into saved folders (see `bundle_file_source`).
BUNDLE_VERSION: str | None = None
"""`trgl_hf.__version__` of the library that saved the folder."""
BUNDLE_SHA256: str | None = None
"""SHA-256 of the compressed bundle (`BUNDLE_DATA` decoded)."""
BUNDLE_DATA: str | None = None
"""Base64 of the zlib-compressed JSON `{"format", "version", "modules": {name: {"package", "source"}}}`."""

LIBRARY = "trgl_hf"
BUNDLE_FORMAT = 1
BUNDLE_MODULE = "trgl_hf_bundle"
BUNDLE_FILE = f"{BUNDLE_MODULE}.py"
PACKAGE_PREFIX = "_trgl_hf_bundle_"
LOADER_MODULE = "modeling.remote_code"
"""This module, by its name in the package (the bundle carries it: saving a model loaded from a bundle writes it)."""

ENTRY_POINTS = {
    # file written next to the weights: (Auto class, class it defines, trgl_hf module defining that class)
    "configuration_trgl_remote.py": ("AutoConfig", "TRGLConfig", "modeling.configuration_trgl"),
    "modeling_trgl_remote.py": ("AutoModel", "TRGLModel", "modeling.modeling_trgl"),
}
REMOTE_CODE_FILES = (*ENTRY_POINTS, BUNDLE_FILE)
"""Files `TRGLModel.save_pretrained` writes besides the config and weights."""

AUTO_CLASSES = {
    # model_type: (module, config class, {Auto class: (module, model class)}), as in `registration.py`, for the
    # base models a whole TRGL model may rebuild (a CIFAR ResNet) or export (a conv-head stage).
    "cifar_resnet": (
        "models.configuration_cifar_resnet",
        "CifarResNetConfig",
        {
            "AutoModel": ("models.modeling_cifar_resnet", "CifarResNetModel"),
            "AutoModelForImageClassification": (
                "models.modeling_cifar_resnet",
                "CifarResNetForImageClassification",
            ),
        },
    ),
    "trgl_stage": (
        "models.configuration_trgl_stage",
        "TRGLStageConfig",
        {
            "AutoModel": ("models.modeling_trgl_stage", "TRGLStageModel"),
            "AutoModelForImageClassification": ("models.modeling_trgl_stage", "TRGLStageForImageClassification"),
            "AutoModelForSequenceClassification": (
                "models.modeling_trgl_stage",
                "TRGLStageForSequenceClassification",
            ),
        },
    ),
}
"""Auto classes a bundle registers when the model type is not registered yet (trgl_hf not imported)."""

ROOT_MODULES = tuple(
    sorted(
        {module for _, _, module in ENTRY_POINTS.values()}
        | {LOADER_MODULE}
        | {entry[0] for entry in AUTO_CLASSES.values()}
        | {module for entry in AUTO_CLASSES.values() for module, _ in entry[2].values()}
    )
)
"""trgl_hf modules a bundle starts from; the modules they import relatively are added (see `bundled_modules`)."""

_LOCK = threading.RLock()


# ---------------------------------------------------------------------------------------------------- loading


def resolve_class(name: str) -> type:
    """The class `name` (`"TRGLConfig"` or `"TRGLModel"`) of the remote-code entry points of a saved folder.

    The installed trgl_hf's class when trgl_hf is importable and its `__version__` is `BUNDLE_VERSION`, else the class
    of the bundled sources (see [`load_bundle`]).
    """
    module_name = {class_name: module for _, class_name, module in ENTRY_POINTS.values()}[name]
    if BUNDLE_DATA is None or BUNDLE_SHA256 is None or BUNDLE_VERSION is None:
        raise ImportError(f"{__name__} holds no bundled trgl_hf sources: it is not a saved folder's {BUNDLE_FILE}.")
    library = installed_library(BUNDLE_VERSION)
    if library is not None:
        return getattr(library, name)
    package = load_bundle(BUNDLE_DATA, BUNDLE_SHA256, BUNDLE_VERSION)
    return getattr(importlib.import_module(f"{package.__name__}.{module_name}"), name)


def installed_library(version: str) -> types.ModuleType | None:
    """The installed `trgl_hf` package when it is importable and its `__version__` is `version`, else None.

    A version written as a literal in its `__init__.py` is compared before importing it, so a different version is not
    imported at all.
    """
    library = sys.modules.get(LIBRARY)
    if library is None:
        try:
            spec = importlib.util.find_spec(LIBRARY)
        except (ImportError, ValueError):
            spec = None
        if spec is None:
            logger.info("trgl_hf is not installed: using the trgl_hf %s sources bundled with the model.", version)
            return None
        installed = _literal_version(spec.origin)
        if installed is not None and installed != version:
            logger.warning("trgl_hf %s is installed, but trgl_hf %s saved this model: using the sources bundled with "
                           "it (its classes are not the installed trgl_hf's).", installed, version)  # fmt: skip
            return None
        try:
            library = importlib.import_module(LIBRARY)
        except Exception as error:  # installed but unusable (a dependency missing or too old): the bundle still works
            logger.warning("Importing the installed trgl_hf failed (%s: %s): using the trgl_hf %s sources bundled "
                           "with the model.", type(error).__name__, error, version)  # fmt: skip
            return None
    installed = getattr(library, "__version__", None)
    if installed != version:
        logger.warning("trgl_hf %s is imported, but trgl_hf %s saved this model: using the sources bundled with it "
                       "(its classes are not the imported trgl_hf's).", installed, version)  # fmt: skip
        return None
    return library


def _literal_version(init_file: str | None) -> str | None:
    """`__version__` of a package's `__init__.py` when it is assigned a string literal there, else None."""
    try:
        tree = ast.parse(Path(init_file).read_text(encoding="utf-8"))
    except (OSError, TypeError, ValueError, SyntaxError):
        return None
    for node in tree.body:
        if not isinstance(node, ast.Assign) or not isinstance(node.value, ast.Constant):
            continue
        if any(isinstance(t, ast.Name) and t.id == "__version__" for t in node.targets):
            return node.value.value if isinstance(node.value.value, str) else None
    return None


def decode_bundle(data: str, sha256: str) -> dict[str, Any]:
    """The bundle dictionary (`format`, `version`, `modules`) of `BUNDLE_DATA`, checked against its SHA-256."""
    raw = base64.b64decode(data.encode("ascii"))
    if hashlib.sha256(raw).hexdigest() != sha256:
        raise ImportError(f"The bundled trgl_hf sources are corrupted (SHA-256 is not {sha256}): save the model "
                          "again.")  # fmt: skip
    bundle = json.loads(zlib.decompress(raw).decode("utf-8"))
    if bundle.get("format") != BUNDLE_FORMAT:
        raise ImportError(f"Bundle format {bundle.get('format')!r} is not {BUNDLE_FORMAT}: update trgl_hf's remote "
                          "code.")  # fmt: skip
    return bundle


def load_bundle(data: str, sha256: str, version: str) -> types.ModuleType:
    """Install the bundled trgl_hf sources as the package `_trgl_hf_bundle_<sha256[:16]>` and return it.

    The package module is made here (with `__version__`), and a [`BundleFinder`] on `sys.meta_path` imports its
    submodules from the bundle when they are first imported. Loading the same bundle again returns the same package.
    The bundle's CIFAR ResNet and stage classes are registered with the Auto classes unless their model types already
    are (by an imported trgl_hf).
    """
    name = PACKAGE_PREFIX + sha256[:16]
    with _LOCK:
        package = sys.modules.get(name)
        if package is not None:
            return package
        bundle = decode_bundle(data, sha256)
        finder = BundleFinder(name, bundle["modules"], version, sha256)
        package = types.ModuleType(name, f"trgl_hf {version}, loaded from the sources bundled with a saved model.")
        package.__path__ = []
        package.__package__ = name
        package.__spec__ = importlib.machinery.ModuleSpec(name, finder, is_package=True)
        package.__loader__ = finder
        package.__version__ = version
        package.__trgl_bundle__ = {"version": version, "sha256": sha256, "data": data}
        sys.meta_path.append(finder)
        sys.modules[name] = package
        try:
            _register_auto_classes(name)
        except BaseException:
            for module_name in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
                del sys.modules[module_name]
            sys.meta_path.remove(finder)
            raise
        return package


def _register_auto_classes(package: str) -> None:
    import transformers
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    for model_type, (config_module, config_name, models) in AUTO_CLASSES.items():
        if model_type in CONFIG_MAPPING:
            continue
        config_class = getattr(importlib.import_module(f"{package}.{config_module}"), config_name)
        transformers.AutoConfig.register(model_type, config_class, exist_ok=True)
        for auto_name, (model_module, model_name) in models.items():
            model_class = getattr(importlib.import_module(f"{package}.{model_module}"), model_name)
            getattr(transformers, auto_name).register(config_class, model_class, exist_ok=True)


class BundleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports `<package>.<name>` from bundled sources (`{name: {"package": bool, "source": str}}`).

    Modules get a `__file__` under a `<trgl_hf VERSION bundle HASH>` folder that does not exist; their sources are put
    in `linecache` (and served by `get_source`) so tracebacks and `inspect.getsource` show them.
    """

    def __init__(self, package: str, modules: dict[str, dict[str, Any]], version: str, sha256: str):
        self.package, self.modules = package, modules
        self.root = f"<trgl_hf {version} bundle {sha256[:16]}>"

    def _relative(self, fullname: str) -> str | None:
        if not fullname.startswith(self.package + "."):
            return None
        relative = fullname[len(self.package) + 1 :]
        return relative if relative in self.modules else None

    def filename(self, relative: str) -> str:
        parts = relative.split(".") + (["__init__"] if self.modules[relative]["package"] else [])
        return "/".join([self.root, LIBRARY, *parts]) + ".py"

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        relative = self._relative(fullname)
        if relative is None:
            return None
        spec = importlib.machinery.ModuleSpec(fullname, self, origin=self.filename(relative),
                                              is_package=self.modules[relative]["package"])  # fmt: skip
        spec.has_location = True  # sets `__file__` (a name, not an existing file)
        return spec

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> None:
        return None

    def exec_module(self, module: types.ModuleType) -> None:
        relative = self._relative(module.__name__)
        source, filename = self.modules[relative]["source"], self.filename(relative)
        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
        exec(compile(source, filename, "exec", dont_inherit=True), module.__dict__)

    def get_source(self, fullname: str) -> str | None:
        relative = self._relative(fullname)
        return None if relative is None else self.modules[relative]["source"]

    def is_package(self, fullname: str) -> bool:
        relative = self._relative(fullname)
        return bool(relative is not None and self.modules[relative]["package"])


# ---------------------------------------------------------------------------------------------------- saving


def package_sources(package: str) -> dict[str, dict[str, Any]]:
    """Sources of every module of `package` (`trgl_hf`, or a loaded bundle's package), by dotted name relative to it.

    Returns:
        `dict`: `{name: {"package": bool, "source": str}}`; the top-level `__init__` is left out.
    """
    module = sys.modules[package]
    bundle = getattr(module, "__trgl_bundle__", None)
    if bundle is not None:
        return decode_bundle(bundle["data"], bundle["sha256"])["modules"]
    root = Path(module.__path__[0])
    sources = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if "__pycache__" in parts or not all(part.isidentifier() for part in parts) or parts == ("__init__",):
            continue
        is_package = parts[-1] == "__init__"
        name = ".".join(parts[:-1] if is_package else parts)
        sources[name] = {"package": is_package, "source": path.read_text(encoding="utf-8")}
    return sources


def bundled_modules(sources: dict[str, dict[str, Any]], roots: tuple[str, ...] = ROOT_MODULES) -> list[str]:
    """The modules of `sources` that `roots` need: `roots`, every module they import relatively (anywhere: function
    bodies and `TYPE_CHECKING` blocks included), recursively, and the `__init__` of every subpackage on the way.

    Raises:
        `ValueError`: a module imports the top-level package (`from .. import name` of a non-module, or `import
            trgl_hf...`), which a bundle does not run, or a module that does not exist.
    """
    needed: set[str] = set()
    pending = list(roots)
    while pending:
        name = pending.pop()
        if name in needed:
            continue
        if name not in sources:
            raise ValueError(f"The bundle for remote code needs trgl_hf.{name}, which does not exist.")
        parts = name.split(".")
        pending.extend(".".join(parts[:i]) for i in range(1, len(parts)))
        needed.add(name)
        package_parts = parts if sources[name]["package"] else parts[:-1]
        for node in ast.walk(ast.parse(sources[name]["source"])):
            if isinstance(node, ast.Import):
                absolute = [alias.name for alias in node.names if alias.name.split(".")[0] == LIBRARY]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                absolute = [node.module] if (node.module or "").split(".")[0] == LIBRARY else []
            else:
                absolute = []
            if absolute:
                raise ValueError(f"trgl_hf.{name} imports {absolute[0]} absolutely: use a relative import, so the "
                                 "bundle written for remote code can run it.")  # fmt: skip
            if not isinstance(node, ast.ImportFrom) or node.level == 0:
                continue
            if node.level - 1 > len(package_parts):
                raise ValueError(f"trgl_hf.{name} imports beyond the trgl_hf package.")
            base = package_parts[: len(package_parts) - (node.level - 1)]
            base = base + (node.module.split(".") if node.module else [])
            if base:
                pending.append(".".join(base))
            for alias in node.names:
                submodule = ".".join(base + [alias.name])
                if submodule in sources:
                    pending.append(submodule)
                elif not base:
                    raise ValueError(f"trgl_hf.{name} imports {alias.name} from the top-level trgl_hf package, "
                                     "which the bundle written for remote code does not run: import it from its "
                                     "module.")  # fmt: skip
    return sorted(needed)


def encode_bundle(package: str) -> tuple[str, str, str, str]:
    """`(version, sha256, data, loader)` of the bundle of `package` (`trgl_hf` or a loaded bundle's package): `data`
    holds the sources of [`bundled_modules`], `loader` is the source of this module among them.

    A loaded bundle is written back unchanged, so a model loaded from it saves the same remote code.
    """
    module = sys.modules[package]
    bundle = getattr(module, "__trgl_bundle__", None)
    if bundle is not None:
        version, sha256, data = bundle["version"], bundle["sha256"], bundle["data"]
        return version, sha256, data, decode_bundle(data, sha256)["modules"][LOADER_MODULE]["source"]
    version = module.__version__
    sources = package_sources(package)
    modules = {name: sources[name] for name in bundled_modules(sources)}
    payload = json.dumps({"format": BUNDLE_FORMAT, "version": version, "modules": modules}, sort_keys=True)
    raw = zlib.compress(payload.encode("utf-8"), 9)
    data = base64.b64encode(raw).decode("ascii")
    return version, hashlib.sha256(raw).hexdigest(), data, modules[LOADER_MODULE]["source"]


def bundle_file_source(version: str, sha256: str, data: str, loader: str) -> str:
    """The source of `trgl_hf_bundle.py`: `loader` (this module's source), then the bundle's constants."""
    lines = [loader.rstrip("\n"), "", "",
             "# ---- Written by trgl_hf's `TRGLModel.save_pretrained`: the trgl_hf sources this model needs. ----",
             f"BUNDLE_VERSION = {version!r}", f"BUNDLE_SHA256 = {sha256!r}", "BUNDLE_DATA = ("]  # fmt: skip
    lines += [f'    "{data[i : i + 100]}"' for i in range(0, len(data), 100)]
    return "\n".join(lines + [")", ""])


def entry_file_source(file: str, version: str) -> str:
    """The source of an entry point (`configuration_trgl_remote.py` or `modeling_trgl_remote.py`)."""
    auto_class, class_name, _ = ENTRY_POINTS[file]
    return "\n".join([
        f"# Written by trgl_hf's `TRGLModel.save_pretrained`: the {auto_class} entry point of this whole TRGL model.",
        f"# `{class_name}` is the installed trgl_hf's class when its version is {version} (the one that saved this",
        f"# folder), else the class of the trgl_hf sources bundled in `{BUNDLE_FILE}`.",
        f"from .{BUNDLE_MODULE} import resolve_class",
        "",
        f'{class_name} = resolve_class("{class_name}")',
        "",
    ])  # fmt: skip


def auto_map() -> dict[str, str]:
    """The `auto_map` entries of a whole TRGL model's `config.json`."""
    return {auto: f"{Path(file).stem}.{class_name}" for file, (auto, class_name, _) in ENTRY_POINTS.items()}


def write_remote_code(save_directory: str | os.PathLike, package: str | None = None) -> list[Path]:
    """Write the entry points and `trgl_hf_bundle.py` into `save_directory` (each file atomically).

    Args:
        save_directory (`str` or `os.PathLike`): the folder `save_pretrained` writes.
        package (`str`, *optional*): the package whose sources are bundled; defaults to the one of this module
            (`trgl_hf`, or a loaded bundle's package).

    Returns:
        `list[Path]`: the written files.
    """
    package = package or __name__.split(".")[0]
    folder = Path(save_directory)
    folder.mkdir(parents=True, exist_ok=True)
    version, sha256, data, loader = encode_bundle(package)
    contents = {BUNDLE_FILE: bundle_file_source(version, sha256, data, loader)}
    contents.update({file: entry_file_source(file, version) for file in ENTRY_POINTS})
    written = []
    for file, text in contents.items():
        handle, temporary = tempfile.mkstemp(dir=folder, prefix=f".{file}.", suffix=".tmp")
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as stream:
                stream.write(text)
            os.chmod(temporary, 0o644)
            os.replace(temporary, folder / file)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        written.append(folder / file)
    return written


__all__ = [
    "AUTO_CLASSES",
    "BundleFinder",
    "ENTRY_POINTS",
    "REMOTE_CODE_FILES",
    "auto_map",
    "bundled_modules",
    "installed_library",
    "load_bundle",
    "resolve_class",
    "write_remote_code",
]
