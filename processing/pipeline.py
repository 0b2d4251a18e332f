"""`OFAInstructionPipeline`: `pipeline("ofa-instruction", model=...)`, an instruction and a row in, a typed answer out.

```python
import modeling_ofa, processing  # registers OFA with the Auto classes and this pipeline with pipeline()
from transformers import pipeline

ofa = pipeline("ofa-instruction", model="path/or/repo")
ofa({"img": image}, instruction="[IMAGE:img] what does the image describe? -> [TEXT:cap]")  # {"text": "..."}
ofa("caption", {"img": image})                    # a task name saved in the processor, instruction first
ofa([row1, row2, row3], instruction="vqa", batch_size=2, num_beams=3)
ofa = pipeline("ofa-instruction", model=adapters.model, processor=processor, task_adapters=adapters)  # LoRA per task
```

The standard `pipeline("image-text-to-text", model=...)` also runs OFA (it is registered with
`AutoModelForImageTextToText`, and `OFAProcessor` takes `images=` and `text=`): a free prompt, with or without an
image, to free text, as for any vision-language model. This pipeline is the one for OFA's own tasks: saved
instructions, closed sets, boxes, objects and image codes.

Inputs: a row (column name -> value, as in a dataset) or a list of rows, plus the instruction (an OFASys instruction
or the name of a task in `processor.task_instructions`). Target columns in a row are ignored. The answer of each row is
`OFAProcessor.post_process_generation`'s dict: `{"text"}`, `{"label", "in_set"}`, `{"box"}`, `{"objects"}`,
`{"codes"}` or, for an image target (`[IMAGE:col,preprocess=image_vqgan]`), `{"image": PIL.Image, "codes",
"candidates"}`, following the target slot.

Closed sets: a `closed_set` target decodes only among `candidates=[...]`, or the task's saved
`processor.closed_sets[name]` when the instruction is a task name; with neither, the call is an error. `max_new_tokens`
is raised, if needed, so that the longest candidate always fits.

Batching (`batch_size=N`): rows are encoded one by one and every batch goes through the one answer path
(`processing.answers.AnswerGenerator`): split by decoder-prefix length (rows whose forced decoder prefix differs in
length, e.g. an SNLI-VE prompt echoing the hypothesis, cannot share a `generate` call), each group generated on its
own. The instruction's first template is used unless `template=` says otherwise (OFASys's choice at inference).
Generation arguments (`num_beams`, `max_new_tokens`, ...) can be given to `pipeline(...)` or per call; for a saved
task name they default to the task's `processor.generation_defaults` (what `MultiTaskTrainer` evaluated it with).
Rows are preprocessed in the main process (`num_workers` is not used).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from transformers import AutoModelForSeq2SeqLM, GenerationConfig, Pipeline
from transformers.pipelines import PIPELINE_REGISTRY

from .answers import AnswerGenerator
from .instruction import TaskPlan
from .processing_ofa import OFAProcessor

__all__ = ["PIPELINE_TASK", "OFAInstructionPipeline"]

PIPELINE_TASK = "ofa-instruction"

_GENERATION_KEYS = frozenset(k for k in vars(GenerationConfig()) if not k.startswith("_")) | {"logits_processor"}


@dataclasses.dataclass(frozen=True)
class _Request:
    """What one call decodes: the task name if any, and the answer path of its plan (one template, the closed set)."""

    task: str | None
    answers: AnswerGenerator


class OFAInstructionPipeline(Pipeline):
    r"""
    Run an OFA model on one-line OFASys instructions: `pipe(row_or_rows, instruction=...)` or `pipe(instruction, rows)`.

    Build it with `pipeline("ofa-instruction", model=path)` (after `import processing`), or directly with a model and
    an `OFAProcessor`. See the module docstring for inputs, outputs, closed sets and batching.

    Args:
        task_adapters (`modeling_ofa.peft_utils.TaskAdapters`, *optional*):
            Per-task LoRA adapters on the model (`model=task_adapters.model`): each call activates the adapter of its
            task, so the instruction must be the name of a task that has one.

    Call arguments:
        instruction (`str`): An instruction, or a task name saved in `processor.task_instructions`. Optional when the
            processor holds exactly one task.
        candidates (`Sequence[str]`, *optional*): The closed set for this call.
        template (`int`, defaults to 0): Which `|||` alternative of the instruction to use.
        clip (`str` or `(CLIPModel, CLIPProcessor)`, *optional*): Re-rank the candidates of an image target by CLIP
            (a local `CLIPModel` folder); without it they are ranked by their log-probability.
        generate_kwargs (`dict`, *optional*), or generation arguments as keywords: passed to `generate()`.
    """

    _load_processor = True
    _load_tokenizer = False
    _load_image_processor = False
    _load_feature_extractor = False
    _pipeline_calls_generate = True
    # OFA's answers are short; captions and detection lists fit. Image targets set their own length (the code grid).
    _default_generation_config = GenerationConfig(max_new_tokens=64)

    def __init__(self, *args: Any, task_adapters: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if task_adapters is not None and task_adapters.model is not self.model:
            raise ValueError("task_adapters.model must be the pipeline's model: pass model=task_adapters.model")
        self.task_adapters = task_adapters
        if not isinstance(self.processor, OFAProcessor):
            raise TypeError(
                f"the {PIPELINE_TASK!r} pipeline needs an OFAProcessor, got {type(self.processor).__name__}; save one "
                "next to the model (processor.save_pretrained) or pass processor=..."
            )
        self._last_request: tuple[tuple[Any, ...], _Request] | None = None  # reused across calls: its tries are built

    # -- calling ---------------------------------------------------------------------------------------------------

    def __call__(self, inputs: Any, rows: Any = None, **kwargs: Any) -> Any:
        """`pipe(row | rows, instruction=..., ...)` or `pipe(instruction, row | rows, ...)`.

        Returns one answer dict for a row, a list of them for a list of rows, an iterator for a dataset or generator.
        """
        if isinstance(inputs, str):
            if rows is None:
                raise ValueError(f"pipe({inputs!r}, rows): the rows (column -> value mappings) are missing")
            if "instruction" in kwargs:
                raise TypeError("the instruction was given twice: positionally and as instruction=")
            inputs, kwargs["instruction"] = rows, inputs
        elif rows is not None:
            raise TypeError("a second positional argument (rows) is accepted only after an instruction string")
        if isinstance(inputs, tuple):
            inputs = list(inputs)
        if isinstance(inputs, list) and not inputs:
            return []
        return super().__call__(inputs, **kwargs)

    def _sanitize_parameters(
        self,
        instruction: str | TaskPlan | None = None,
        candidates: Iterable[str] | None = None,
        template: int | None = None,
        generate_kwargs: Mapping[str, Any] | None = None,
        clip: Any = None,
        **kwargs: Any,
    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        unknown = sorted(set(kwargs) - _GENERATION_KEYS)
        if unknown:
            raise TypeError(f"{type(self).__name__} got unknown arguments {unknown}; generation arguments are accepted")
        preprocess: dict[str, Any] = {}
        if instruction is not None:
            preprocess["instruction"] = instruction
        if candidates is not None:
            if isinstance(candidates, str):
                raise TypeError("candidates must be a list of answers, not one string")
            preprocess["candidates"] = tuple(candidates)
        if template is not None:
            preprocess["template"] = template
        if clip is not None:
            preprocess["clip"] = clip
        forward: dict[str, Any] = {}
        if generate_kwargs is not None or kwargs:
            both = sorted(set(generate_kwargs or {}) & set(kwargs))
            if both:
                raise TypeError(f"{both} given both as keywords and in generate_kwargs")
            forward["generate_kwargs"] = {**(generate_kwargs or {}), **kwargs}
        return preprocess, forward, {}

    # -- the three stages ------------------------------------------------------------------------------------------

    def preprocess(
        self,
        row: Mapping[str, Any],
        instruction: str | TaskPlan | None = None,
        candidates: tuple[str, ...] | None = None,
        template: int = 0,
        batch_size: int = 1,
        clip: Any = None,
    ) -> dict[str, Any]:
        if not isinstance(row, Mapping):
            raise TypeError(f"each input must be a row (a mapping of column -> value), got {type(row).__name__}")
        request = self._request(instruction, candidates, template, batch_size, clip)
        (example,) = request.answers.encode([row], first_index=None)
        return {"examples": [example], "request": request}

    def _forward(self, model_inputs: dict[str, Any], generate_kwargs: Mapping[str, Any] | None = None) -> dict:
        examples, request = model_inputs["examples"], model_inputs["request"]
        if self.task_adapters is not None:
            if request.task not in self.task_adapters.tasks:
                raise ValueError(
                    f"task {request.task!r} has no adapter (tasks with adapters: {self.task_adapters.tasks}); with "
                    "task_adapters, give the instruction as the name of one of them"
                )
            self.task_adapters.activate(request.task)
        generate_kwargs = dict(generate_kwargs or {})
        if request.task is not None:  # the settings the task was evaluated with, under the caller's own
            generate_kwargs = {**self.processor.generation_defaults.get(request.task, {}), **generate_kwargs}
        answers = request.answers.generate_from_examples(
            self.model,
            examples,
            generate_kwargs=self._prepare_generate_kwargs(generate_kwargs),
            prepare_inputs=lambda batch: batch.to(self.device),
        )
        return {"answers": answers}

    def postprocess(self, model_outputs: dict[str, Any]) -> dict[str, Any] | list[dict[str, Any]]:
        (answer,) = model_outputs["answers"]
        return answer

    # -- batching: our own loop, since OFA batches are collated by the processor and split by prefix length -------

    def get_iterator(
        self,
        inputs: Iterable[Mapping[str, Any]],
        num_workers: int,
        batch_size: int,
        preprocess_params: dict[str, Any],
        forward_params: dict[str, Any],
        postprocess_params: dict[str, Any],
    ) -> Iterator[dict[str, Any] | list[dict[str, Any]]]:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        return self._iterate(inputs, batch_size, preprocess_params, forward_params, postprocess_params)

    def _iterate(self, inputs, batch_size, preprocess_params, forward_params, postprocess_params):
        preprocess_params = {**preprocess_params, "batch_size": batch_size}
        chunk: list[dict[str, Any]] = []
        for row in inputs:
            chunk.append(self.preprocess(row, **preprocess_params))
            if len(chunk) == batch_size:
                yield from self._run_chunk(chunk, forward_params, postprocess_params)
                chunk = []
        if chunk:
            yield from self._run_chunk(chunk, forward_params, postprocess_params)

    def _run_chunk(self, chunk: Sequence[dict[str, Any]], forward_params, postprocess_params):
        request = chunk[0]["request"]
        outputs = self.forward(
            {"examples": [item["examples"][0] for item in chunk], "request": request}, **forward_params
        )
        for answer in outputs["answers"]:
            yield self.postprocess({"answers": [answer]}, **postprocess_params)

    # -- helpers ---------------------------------------------------------------------------------------------------

    def _request(
        self,
        instruction: str | TaskPlan | None,
        candidates: tuple[str, ...] | None,
        template: int,
        batch_size: int,
        clip: Any = None,
    ) -> _Request:
        processor: OFAProcessor = self.processor
        if instruction is None:
            if len(processor.task_instructions) != 1:
                raise ValueError(
                    "no instruction: pass instruction=... (an instruction or one of the saved tasks "
                    f"{sorted(processor.task_instructions)})"
                )
            instruction = next(iter(processor.task_instructions))
        task = instruction if isinstance(instruction, str) and instruction in processor.task_instructions else None
        key = (instruction, candidates, template, batch_size, id(clip) if isinstance(clip, tuple) else clip)
        if self._last_request is None or self._last_request[0] != key:
            answers = AnswerGenerator(
                processor,
                instruction,
                task=task,
                candidates=candidates,
                template=template,
                batch_size=batch_size,
                clip=clip,
            )
            self._last_request = (key, _Request(task=task, answers=answers))
        return self._last_request[1]


PIPELINE_REGISTRY.register_pipeline(
    PIPELINE_TASK, pipeline_class=OFAInstructionPipeline, pt_model=AutoModelForSeq2SeqLM
)
