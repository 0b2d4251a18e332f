"""The processor's code, saved beside its files, loads without this package (`trust_remote_code=True`).

`ProcessorMixin.save_pretrained` copies the module of a class registered with `register_for_auto_class` and its
relative imports into the folder (transformers' `custom_object_save`). Within the package, `processing` imports
`modeling_ofa` by absolute name (the layering runs processing -> modeling_ofa); such an import fails where the package
is not installed. `make_code_self_contained` rewrites those imports of the saved copies into relative ones and copies
the modules they name, so that the folder's code imports only transformers and its dependencies.
"""

from __future__ import annotations

import importlib
import os
import re
import shutil
from collections.abc import Iterable
from pathlib import Path

from transformers.dynamic_module_utils import get_relative_import_files

__all__ = ["OWN_PACKAGES", "make_code_self_contained"]

OWN_PACKAGES: tuple[str, ...] = ("modeling_ofa", "processing")
"""Top-level packages of ofa-hf: absolute imports of their modules are made relative in saved code."""

_ABSOLUTE_IMPORT = re.compile(
    rf"^(?P<indent>[ \t]*)from (?P<package>{'|'.join(OWN_PACKAGES)})\.(?P<module>\w+) import ", re.MULTILINE
)


def _copy_module(source: Path, folder: Path) -> Path | None:
    """Copy one module file into the folder; None when the same file is already there."""
    target = folder / source.name
    if target.exists():
        if target.read_bytes() != source.read_bytes():
            raise ValueError(
                f"{target} exists and differs from {source}: the saved code of two modules would share one file name"
            )
        return None
    shutil.copyfile(source, target)
    return target


def make_code_self_contained(folder: str | os.PathLike, saved_files: Iterable[str]) -> list[Path]:
    """Make the code saved in `folder` import its own modules relatively.

    Args:
        folder: The folder `save_pretrained` wrote.
        saved_files (`Iterable[str]`): Names of the module files it copied there (e.g. `processing_ofa.py`).

    Returns:
        `list[Path]`: the module files this function copied in addition.
    """
    folder = Path(folder)
    pending = [folder / name for name in saved_files]
    copied: list[Path] = []
    while pending:
        path = pending.pop()
        source = path.read_text(encoding="utf-8")
        needed = sorted({(m["package"], m["module"]) for m in _ABSOLUTE_IMPORT.finditer(source)})
        if not needed:
            continue
        path.write_text(_ABSOLUTE_IMPORT.sub(r"\g<indent>from .\g<module> import ", source), encoding="utf-8")
        for package, module in needed:
            module_file = Path(importlib.import_module(f"{package}.{module}").__file__)
            for file in (module_file, *(Path(f) for f in get_relative_import_files(module_file))):
                target = _copy_module(file, folder)
                if target is not None:
                    copied.append(target)
                    pending.append(target)
    return copied
