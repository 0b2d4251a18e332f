"""PEFT (LoRA) for OFA: default target modules, a config helper, and one adapter per task.

Importing this module registers OFA's default LoRA targets with PEFT (when PEFT is installed), so that PEFT needs no
`target_modules` for an OFA model:

```python
from modeling_ofa.peft_utils import freeze_resnet_norm  # importing registers "ofa" in PEFT's target-module tables
from peft import LoraConfig, get_peft_model

freeze_resnet_norm(ofa_model)  # see below; get_ofa_peft_model and TaskAdapters do it themselves
model = get_peft_model(ofa_model, LoraConfig(r=8, task_type="SEQ_2_SEQ_LM"))  # attention + FFN + MoE experts
```

The registration writes to PEFT's public `peft.utils.TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING` (keyed by
`config.model_type`), the table `get_peft_model` consults when a config has no `target_modules`; it never overrides an
entry that is already there. The default targets are every attention projection (encoder self-attention, decoder
self- and cross-attention: `q_proj`, `k_proj`, `v_proj`, `out_proj`) and every feed-forward linear (`fc1`, `fc2`),
which PEFT matches by name suffix, so the experts of an OFA+ mixture (`layers.{i}.moe.experts.{e}.fc1`) are adapted too.
Left out on purpose: the learned MoE router (a few thousand weights whose low-rank update would only re-route tokens),
the tied embeddings / LM head, the relative-position projections and the modality adapters.

`TaskAdapters` keeps one LoRA adapter per task on one model and switches between them by task name; a multi-task
trainer calls `activate(task)` before each batch of that task.

An adapter must reproduce the trained model on the base it was trained on, so PEFT here never changes a base
buffer. The only buffers a train-mode forward moves are the running statistics of the ResNet stem's BatchNorms
(`resnet_norm="batch"`); `get_ofa_peft_model` and `TaskAdapters` first turn them into `FrozenBatchNorm2d`
(`freeze_resnet_norm`: same values, same keys, same eval outputs, fixed from then on). Plain `peft.get_peft_model`
knows nothing of the stem: call `freeze_resnet_norm(model)` before it.

PEFT is an optional dependency (the `[train]` extra): it is imported when a function here needs it.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from .resnet import freeze_resnet_norm

if TYPE_CHECKING:
    from peft import LoraConfig, PeftModel

__all__ = [
    "LORA_TARGET_GROUPS",
    "OFA_LORA_TARGET_MODULES",
    "TaskAdapters",
    "freeze_resnet_norm",
    "get_ofa_peft_model",
    "ofa_lora_config",
    "register_peft_defaults",
]

OFA_LORA_TARGET_MODULES: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
"""Default LoRA targets: module-name suffixes of every attention projection and feed-forward linear (experts too)."""

LORA_TARGET_GROUPS: dict[str, tuple[str, ...]] = {
    "all": OFA_LORA_TARGET_MODULES,
    "attention": ("q_proj", "k_proj", "v_proj", "out_proj"),
    "ffn": ("fc1", "fc2"),
}
"""Named target sets for `ofa_lora_config(targets=...)`."""

# PEFT tuners whose default targets are linear layers picked by name, like LoRA's (PEFT keeps one dict per tuner).
_PEFT_TARGET_TABLES: tuple[str, ...] = (
    "TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING",
    "TRANSFORMERS_MODELS_TO_ADALORA_TARGET_MODULES_MAPPING",
    "TRANSFORMERS_MODELS_TO_LOHA_TARGET_MODULES_MAPPING",
    "TRANSFORMERS_MODELS_TO_LOKR_TARGET_MODULES_MAPPING",
)

# Expert linears of an OFA+ mixture; a full-match regex in PEFT's `exclude_modules` when experts are left out.
_EXPERT_LINEARS = r".*\.moe\.experts\.\d+\.(fc1|fc2)"

# A PEFT adapter parameter: `...<layer>.lora_A.<adapter>.weight`, `...lora_magnitude_vector.<adapter>...`, etc.
_ADAPTER_PARAMETER = re.compile(r"\.lora_[A-Za-z_]+\.(?P<adapter>[^.]+)(\.|$)")

# Adapter names become `nn.ModuleDict` keys and folder names; "default" is PEFT's name for an unnamed adapter, which
# it saves at the top of the folder rather than in a sub-folder of its own.
_TASK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_\-]*")
_RESERVED_NAMES = frozenset({"default"})

_INDEX_FILE = "task_adapters.json"
_INDEX_FORMAT = 1


def _import_peft():
    try:
        import peft
    except ImportError as error:
        raise ImportError("LoRA adapters need PEFT; install the training extra: pip install 'ofa-hf[train]'") from error
    return peft


def register_peft_defaults(model_type: str = "ofa") -> None:
    """Register OFA's default targets (`OFA_LORA_TARGET_MODULES`) in PEFT's per-model-type tables.

    Runs when this module is imported (if PEFT is installed); call it again after registering OFA under another
    `model_type`. Existing entries are left alone, so a user's own registration wins.

    Args:
        model_type (`str`, defaults to `"ofa"`): The `config.model_type` PEFT will look up.
    """
    peft_utils = _import_peft().utils
    for table_name in _PEFT_TARGET_TABLES:
        if hasattr(peft_utils, table_name):  # older PEFT releases lack some tuners
            getattr(peft_utils, table_name).setdefault(model_type, list(OFA_LORA_TARGET_MODULES))


def ofa_lora_config(
    targets: str | Sequence[str] = "all",
    *,
    experts: bool = True,
    **lora_kwargs: Any,
) -> LoraConfig:
    """A `peft.LoraConfig` for OFA.

    Args:
        targets (`str` or `Sequence[str]`, defaults to `"all"`):
            A key of `LORA_TARGET_GROUPS` (`"all"`, `"attention"`, `"ffn"`) or module-name suffixes.
        experts (`bool`, defaults to `True`):
            Adapt the feed-forward experts of an OFA+ mixture too. With `False` only the dense layers get LoRA.
        lora_kwargs:
            Other `LoraConfig` arguments (`r`, `lora_alpha`, `lora_dropout`, `init_lora_weights`, ...). `task_type`
            defaults to `"SEQ_2_SEQ_LM"`.

    Returns:
        `peft.LoraConfig`
    """
    peft = _import_peft()
    if isinstance(targets, str):
        if targets not in LORA_TARGET_GROUPS:
            raise ValueError(f"targets={targets!r} is not one of {sorted(LORA_TARGET_GROUPS)} nor a list of names")
        target_modules = list(LORA_TARGET_GROUPS[targets])
    else:
        target_modules = list(targets)
        bad = [t for t in target_modules if not isinstance(t, str) or not t]
        if not target_modules or bad:
            raise ValueError(f"targets must be a non-empty list of module names, got {targets!r}")
    if "target_modules" in lora_kwargs:
        raise TypeError("pass the modules as `targets`, not `target_modules`")
    if not experts:
        if "exclude_modules" in lora_kwargs:
            raise TypeError("experts=False sets exclude_modules itself; pass one of the two")
        lora_kwargs["exclude_modules"] = _EXPERT_LINEARS
    lora_kwargs.setdefault("task_type", "SEQ_2_SEQ_LM")
    return peft.LoraConfig(target_modules=target_modules, **lora_kwargs)


def _check_ofa(model: nn.Module, where: str) -> None:
    config = model.config if isinstance(model, nn.Module) and hasattr(model, "config") else None
    if config is None or config.model_type != "ofa":
        raise TypeError(f"{where} needs an OFA model (config.model_type 'ofa'), got {type(model).__name__}")


def get_ofa_peft_model(
    model: nn.Module,
    config: LoraConfig | None = None,
    *,
    adapter_name: str = "default",
    **lora_kwargs: Any,
) -> PeftModel:
    """Wrap an OFA model in a PEFT model with one LoRA adapter (the model's linears are modified in place).

    The ResNet stem's BatchNorms are frozen first (`freeze_resnet_norm`), so training never moves a base buffer and
    the saved adapter reproduces the trained model on the base.

    Args:
        model (`OFAForConditionalGeneration`): The model to adapt.
        config (`peft.LoraConfig`, *optional*): Defaults to `ofa_lora_config(**lora_kwargs)`.
        adapter_name (`str`, defaults to `"default"`): Name of the adapter.
        lora_kwargs: Arguments of `ofa_lora_config` when `config` is not given.

    Returns:
        `peft.PeftModelForSeq2SeqLM` (for the default task type).
    """
    peft = _import_peft()
    _check_ofa(model, "get_ofa_peft_model")
    if config is not None and lora_kwargs:
        raise TypeError(f"pass either a config or LoRA arguments, not both (got {sorted(lora_kwargs)})")
    config = config if config is not None else ofa_lora_config(**lora_kwargs)
    freeze_resnet_norm(model)
    return peft.get_peft_model(model, config, adapter_name=adapter_name)


def _check_task_name(task: Any) -> str:
    if not isinstance(task, str) or not _TASK_NAME.fullmatch(task):
        raise ValueError(
            f"task name {task!r} cannot name an adapter: use letters, digits, '_' and '-' (no '.', no spaces), "
            "starting with a letter or digit"
        )
    if task in _RESERVED_NAMES:
        raise ValueError(f"task name {task!r} is reserved by PEFT for its unnamed adapter; rename the task")
    return task


class TaskAdapters:
    r"""
    One LoRA adapter per task on one OFA model, switched by task name.

    The first `add` wraps the model in a `peft.PeftModel` (modifying its linears in place); later ones add adapters
    to it. The base model's ResNet BatchNorms are frozen (`freeze_resnet_norm`), so no base buffer moves in train
    mode. Exactly one adapter is active at a time. With `trainable=True` every task's adapter stays trainable
    whichever is active, so one optimizer built once covers all tasks: an inactive adapter is not in the graph, gets
    no gradient, and optimizers skip it for that step.

    ```python
    adapters = TaskAdapters(model, ["caption", "vqa"], r=8)
    trainer = Seq2SeqTrainer(model=adapters.model, ...)   # or any loop
    adapters.activate("vqa")                              # before a VQA batch
    adapters.save("out/adapters")
    adapters = TaskAdapters.load(fresh_base_model, "out/adapters")
    with adapters.using("caption"):
        ids = adapters.model.generate(**batch)
    ```

    Args:
        model (`OFAForConditionalGeneration` or `peft.PeftModel`):
            The base model, or a PEFT model whose adapters are already named by task.
        tasks (`Iterable[str]`, *optional*):
            Tasks to add adapters for right away (the first becomes active).
        config (`peft.LoraConfig`, *optional*):
            Adapter settings for every task added without its own config. Defaults to `ofa_lora_config(**lora_kwargs)`.
        trainable (`bool`, defaults to `True`):
            Keep the adapters' parameters trainable (and only them); `False` freezes them (inference).
        lora_kwargs:
            Arguments of `ofa_lora_config` when `config` is not given.
    """

    def __init__(
        self,
        model: nn.Module,
        tasks: Iterable[str] = (),
        *,
        config: LoraConfig | None = None,
        trainable: bool = True,
        **lora_kwargs: Any,
    ) -> None:
        peft = _import_peft()
        if config is not None and lora_kwargs:
            raise TypeError(f"pass either a config or LoRA arguments, not both (got {sorted(lora_kwargs)})")
        self.config = config if config is not None else ofa_lora_config(**lora_kwargs)
        self.trainable = trainable
        self._model: PeftModel | None = None
        if isinstance(model, peft.PeftModel):
            _check_ofa(model.get_base_model(), "TaskAdapters")
            for name in model.peft_config:
                _check_task_name(name)
            self._model = model
            self._base = model.get_base_model()
        else:
            _check_ofa(model, "TaskAdapters")
            self._base = model
        freeze_resnet_norm(self._base)
        for task in tasks:
            self.add(task)
        if self._model is not None:
            self._refresh_trainable()

    # -- state -----------------------------------------------------------------------------------------------------

    @property
    def model(self) -> PeftModel:
        """The PEFT model (what to train, evaluate or `generate` with)."""
        if self._model is None:
            raise RuntimeError("no adapter yet: call add(task) first")
        return self._model

    @property
    def base_model(self) -> nn.Module:
        """The OFA model under the adapters (its linears hold the LoRA layers once an adapter exists)."""
        return self._base

    @property
    def tasks(self) -> list[str]:
        """Task names with an adapter, in the order they were added."""
        return [] if self._model is None else list(self._model.peft_config)

    @property
    def active(self) -> str | None:
        """The active task's name (`None` before the first `add`)."""
        return None if self._model is None else self._model.active_adapter

    def __contains__(self, task: object) -> bool:
        return task in self.tasks

    def __len__(self) -> int:
        return len(self.tasks)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(tasks={self.tasks}, active={self.active!r}, trainable={self.trainable})"

    # -- adding and switching --------------------------------------------------------------------------------------

    def add(self, task: str, config: LoraConfig | None = None) -> None:
        """Add a fresh adapter for `task`. The first one becomes active; later ones leave the active task alone.

        Args:
            task (`str`): The task's name (letters, digits, `_`, `-`).
            config (`peft.LoraConfig`, *optional*): This task's settings; defaults to the shared `config`.
        """
        peft = _import_peft()
        _check_task_name(task)
        if task in self:
            raise ValueError(f"task {task!r} already has an adapter (tasks: {self.tasks})")
        config = copy.deepcopy(config if config is not None else self.config)
        if self._model is None:
            self._model = peft.get_peft_model(self._base, config, adapter_name=task)
        else:
            self._model.add_adapter(task, config)
        self._refresh_trainable()

    def activate(self, task: str) -> None:
        """Route the model through `task`'s adapter."""
        self._require(task)
        if self.active != task:
            self.model.set_adapter(task)
            self._refresh_trainable()  # PEFT's set_adapter freezes the other adapters; keep them trainable

    @contextmanager
    def using(self, task: str) -> Iterator[PeftModel]:
        """Activate `task` for the duration of a `with` block, then restore the previous task."""
        previous = self.active
        self.activate(task)
        try:
            yield self.model
        finally:
            if previous is not None:
                self.activate(previous)

    @contextmanager
    def disabled(self) -> Iterator[PeftModel]:
        """Run the base model without any adapter inside a `with` block."""
        with self.model.disable_adapter():
            yield self.model

    def adapter_parameters(self, task: str | None = None) -> dict[str, nn.Parameter]:
        """The adapter parameters of one task (or of all tasks), by name."""
        names = set(self.tasks) if task is None else {self._require(task)}
        return {n: p for n, p in self.model.named_parameters() if _adapter_of(n) in names}

    def merged(self, task: str) -> nn.Module:
        """A standalone copy of the base model with `task`'s adapter merged in (this object is left unchanged)."""
        self._require(task)
        clone = copy.deepcopy(self.model)
        return clone.merge_and_unload(adapter_names=[task])

    # -- saving and loading ----------------------------------------------------------------------------------------

    def save(self, directory: str | Path, tasks: Sequence[str] | None = None) -> Path:
        """Save adapters to `directory/<task>/` (PEFT's `adapter_config.json` + `adapter_model.safetensors`).

        Args:
            directory (`str` or `Path`): Output folder (created if needed).
            tasks (`Sequence[str]`, *optional*): Which adapters; all by default.

        Returns:
            `Path`: the folder, which also holds `task_adapters.json` (task order and the active task).
        """
        tasks = list(self.tasks if tasks is None else tasks)
        for task in tasks:
            self._require(task)
        if not tasks:
            raise ValueError("nothing to save: no task has an adapter")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(str(directory), selected_adapters=tasks)
        active = self.active if self.active in tasks else tasks[0]
        index = {"format": _INDEX_FORMAT, "tasks": tasks, "active": active}
        (directory / _INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
        return directory

    @classmethod
    def load(
        cls,
        model: nn.Module,
        directory: str | Path,
        tasks: Sequence[str] | None = None,
        *,
        trainable: bool = False,
    ) -> TaskAdapters:
        """Load adapters saved by `save` onto a base OFA model (modified in place).

        Args:
            model (`OFAForConditionalGeneration`): The base model the adapters were trained on.
            directory (`str` or `Path`): The folder `save` wrote.
            tasks (`Sequence[str]`, *optional*): A subset to load; all saved tasks by default.
            trainable (`bool`, defaults to `False`): Load for further training rather than inference.
        """
        peft = _import_peft()
        _check_ofa(model, "TaskAdapters.load")
        directory = Path(directory)
        index_path = directory / _INDEX_FILE
        if not index_path.is_file():
            raise FileNotFoundError(f"{index_path} not found: is {directory} a folder written by TaskAdapters.save?")
        index = json.loads(index_path.read_text())
        if index.get("format") != _INDEX_FORMAT:
            raise ValueError(f"{index_path}: unsupported format {index.get('format')!r} (expected {_INDEX_FORMAT})")
        saved = list(index["tasks"])
        tasks = saved if tasks is None else list(tasks)
        missing = [t for t in tasks if t not in saved]
        if missing or not tasks:
            raise ValueError(f"tasks {missing or tasks} are not among the saved adapters {saved}")
        first, *rest = [_check_task_name(t) for t in tasks]
        peft_model = peft.PeftModel.from_pretrained(
            model, str(directory / first), adapter_name=first, is_trainable=trainable
        )
        for task in rest:
            peft_model.load_adapter(str(directory / task), adapter_name=task, is_trainable=trainable)
        adapters = cls(peft_model, config=peft_model.peft_config[first], trainable=trainable)
        adapters.activate(index["active"] if index["active"] in tasks else first)
        adapters._refresh_trainable()
        return adapters

    # -- helpers ---------------------------------------------------------------------------------------------------

    def _require(self, task: str) -> str:
        if task not in self:
            raise KeyError(f"no adapter for task {task!r}; tasks with adapters: {self.tasks}")
        return task

    def _refresh_trainable(self) -> None:
        """Exactly the adapters' parameters train (all tasks' adapters, whichever is active), or none."""
        tasks = set(self.tasks)
        for name, parameter in self.model.named_parameters():
            parameter.requires_grad_(self.trainable and _adapter_of(name) in tasks)


def _adapter_of(parameter_name: str) -> str | None:
    match = _ADAPTER_PARAMETER.search(parameter_name)
    return match.group("adapter") if match else None


if importlib.util.find_spec("peft") is not None:
    register_peft_defaults()
