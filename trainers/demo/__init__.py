"""The offline demo: its synthetic multimodal corpus (`trainers.demo.corpus`) and its run config (`demo.yaml`).

The demo is an application of the library, not part of it: it lives beside the trainer (its detection score uses
`trainers.metrics`), so that `modeling_ofa` and `processing` import nothing above themselves. `demo.yaml` is package
data, found from an installed package too (`DEMO_CONFIG`); `configs/demo.yaml` in the source tree is the same file.
"""

from importlib import resources
from pathlib import Path

from . import corpus
from .corpus import *  # noqa: F403  (the corpus's public names, listed once in its __all__)

DEMO_CONFIG = Path(str(resources.files(__name__) / "demo.yaml"))
"""The demo's run config (`python scripts/train.py` with no config runs it)."""

__all__ = [*corpus.__all__, "DEMO_CONFIG"]
