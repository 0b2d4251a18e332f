"""The one answer path: rows in, typed answers out (encode, group, constrain, `generate`, post-process).

```python
generator = processing.answers.AnswerGenerator(processor, "vqa", batch_size=8)
answers = generator.generate(model, rows)                                   # [{"label": "two", "in_set": True}, ...]
answers = processor.generate_answers(model, "caption", rows, num_beams=5)   # the same path, in one call
```

`pipeline("ofa-instruction")`, `MultiTaskTrainer.evaluate` / `predict`, `scripts/predict.py` (through the pipeline)
and the ONNX greedy check of `scripts/export_onnx.py` all go through [`AnswerGenerator`]:

1. **Encode** each row without targets (`OFAProcessor.encode(..., with_targets=False)`); examples encoded with
   targets (evaluation computes the loss on them) are cut to their inputs by [`generation_inputs`].
2. **Group** the rows by `(template, decoder prefix length)`: rows whose forced decoder prefix differs in length (an
   SNLI-VE prompt echoing the hypothesis) cannot share a `generate` call, and rows of another template may tokenize
   the closed set differently.
3. **Constrain** a closed-set target to its candidates: one trie per `(template, prefix or not)`, built once per
   generator, and `max_new_tokens` at least the longest candidate (with its `</s>`), so no answer is cut short.
4. **Generate** each group in batches of `batch_size` with the generation settings given (a task's own settings are
   merged by the caller: `Task.generate_kwargs`, or `processor.generation_defaults` for a saved task name).
5. **Post-process** into typed answers ([`TARGET_KINDS`]), returned in input order.

Image targets (kind `"image"`, and `"codes"` when the processor has an image tokenizer or the slot a `length`) are
generated as OFA does: only code tokens for exactly `h * w` steps, then `</s>` (`CodeTokenLogitsProcessor`), in the
decoder's image-code mode; for `"image"`, sampled with top-k and several candidates ([`IMAGE_GENERATION_DEFAULTS`],
under the task's and the caller's settings). Each row's candidates are ranked by CLIP when a `CLIPModel` folder is given
(`clip=`), else by their log-probability; the answer is the best one, with all of them under `"candidates"`.

Template at inference: `template=None` (the default) keeps the template `encode` draws for each row from
`(seed, row_index)`, as evaluation does, so every template of a `|||` instruction is evaluated; `template=k` uses
template `k` for every row. The pipeline and `scripts/predict.py` use `template=0`, OFASys's choice at inference.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm
from transformers.generation import LogitsProcessorList

from .closed_set import CandidateTrie, ClosedSetLogitsProcessor
from .image_generation import CodeScoreLogitsProcessor, CodeTokenLogitsProcessor, rank_images_with_clip
from .instruction import RepeatGroup, Slot, TaskPlan

if TYPE_CHECKING:
    from .processing_ofa import OFAProcessor

__all__ = [
    "IMAGE_GENERATION_DEFAULTS",
    "TARGET_KINDS",
    "AnswerGenerator",
    "AnswerGroup",
    "generation_inputs",
    "plan_target_kind",
    "target_kind",
]

TARGET_KINDS: dict[str, str] = {
    "text": "free text (TEXT, STRUCT, PHONE targets); answers {'text': str}",
    "label": "one label of a closed set (closed_set or CATEGORY targets); answers {'label': str, 'in_set': bool}",
    "box": "one box in original-image pixels (BOX target); answers {'box': [x0, y0, x1, y1] | None}",
    "objects": "boxes with labels (a repeated ( [BOX] [TEXT] )* group); answers {'objects': [{'box', 'label'}]}",
    "codes": "image codes (IMAGE_CODE target); answers {'codes': [int]}",
    "image": "a generated picture (IMAGE target with preprocess=image_vqgan or adaptor=image_vqgan); answers "
    "{'image': PIL.Image, 'codes': [int], 'candidates': [{'image', 'codes', 'score'}]} (best first)",
}
"""What a target slot produces: the kind's name -> its targets and its answer dict. The one table every part reads
(post-processing, `Task` references and metrics, the Hub card); a new kind (generated images) is one entry here and
one branch in [`target_kind`]."""


def target_kind(target: Slot | RepeatGroup | None) -> str:
    """The [`TARGET_KINDS`] entry of a target slot (a template's `target_slot`)."""
    if target is None:
        raise ValueError("the instruction has no target slot after '->'")
    if isinstance(target, RepeatGroup):
        return "objects"
    if target.modality == "BOX":
        return "box"
    if target.modality == "IMAGE_CODE":
        return "codes"
    if target.modality == "IMAGE":
        if "image_vqgan" not in (target.attr("preprocess"), target.attr("adaptor")):
            raise ValueError(
                f"the IMAGE target [{target.modality}:{target.column}] needs preprocess=image_vqgan (generated as VQ "
                "codes, OFASys's form)"
            )
        return "image"
    if target.closed_set or target.modality == "CATEGORY":
        return "label"
    return "text"


IMAGE_GENERATION_DEFAULTS: dict[str, Any] = {"do_sample": True, "top_k": 256, "num_return_sequences": 24}
"""OFA's text-to-image decoding (top-k 256 sampling, 24 candidates per caption), the defaults of an `"image"` target
under the task's `generation_defaults` and the caller's arguments (not applied when those ask for greedy or beam
search: `do_sample=False` or `num_beams > 1`); `top_k` is capped at the number of codes."""


def plan_target_kind(plan: TaskPlan) -> str:
    """The target kind shared by every template of `plan` (`TaskPlan.target_kind`); templates that disagree are an
    error, since one task has one kind of answer, reference and metric."""
    kinds = {target_kind(template.target_slot) for template in plan.templates}
    if len(kinds) > 1:
        raise ValueError(f"the templates of {plan.instruction!r} have different kinds of target {sorted(kinds)}")
    return kinds.pop()


def generation_inputs(example: Mapping[str, Any]) -> dict[str, Any]:
    """An encoded example cut to what `generate` starts from: no labels, and the decoder ids up to `<s>` + prefix.

    An example encoded with `with_targets=False` is returned unchanged (as a new dict).
    """
    out = {key: value for key, value in example.items() if key != "labels"}
    out["decoder_input_ids"] = list(example["decoder_input_ids"])[: 1 + example["meta"]["prefix_length"]]
    return out


@dataclasses.dataclass(frozen=True)
class AnswerGroup:
    """Rows that share one `generate` call layout: one template and one decoder prefix length.

    Args:
        template_index (`int`): The template of these rows (in the generator's plan).
        prefix_length (`int`): Forced decoder tokens after `<s>`.
        positions (`tuple[int, ...]`): The rows' positions in the examples given to `AnswerGenerator.groups`.
        closed_set (`ClosedSetLogitsProcessor`, *optional*): The closed-set constraint, `None` for open targets.
    """

    template_index: int
    prefix_length: int
    positions: tuple[int, ...]
    closed_set: ClosedSetLogitsProcessor | None = None

    @property
    def longest_answer(self) -> int | None:
        """Tokens of the longest candidate with its `</s>` (`None` without a closed set)."""
        return None if self.closed_set is None else max(len(answer) for answer in self.closed_set.trie)


class AnswerGenerator:
    r"""
    Typed answers of one task (or instruction) for many rows: the path every caller takes (see the module docstring).

    Args:
        processor (`OFAProcessor`): Encodes the rows and post-processes the generations.
        plan (`TaskPlan` or `str`): The task's plan, an instruction, or a task name saved in the processor.
        task (`str`, *optional*): The task's name (error messages; the saved closed set when `candidates` is not
            given). A saved task name given as `plan` is the default.
        candidates (`Sequence[str]`, *optional*): The closed set of a `closed_set` target; defaults to
            `processor.closed_sets[task]`. A closed-set target with neither is an error.
        template (`int`, *optional*): Use this template for every row; `None` keeps each row's drawn template.
        batch_size (`int`, defaults to 8): Rows per `generate` call (a group's last batch may be smaller).
        generate_kwargs (`Mapping`, *optional*): `generate()` arguments for every call (a `logits_processor` list is
            kept, the closed-set or code constraint is appended to it).
        progress (`bool`, defaults to `False`): Show a progress bar over the batches (tqdm).
        clip (`str`, `os.PathLike` or `(CLIPModel, CLIPProcessor)`, *optional*): Re-rank the candidates of an image
            target by CLIP similarity to the row's text (a local `CLIPModel` folder, or a loaded pair).
    """

    def __init__(
        self,
        processor: OFAProcessor,
        plan: TaskPlan | str,
        *,
        task: str | None = None,
        candidates: Iterable[str] | None = None,
        template: int | None = None,
        batch_size: int = 8,
        generate_kwargs: Mapping[str, Any] | None = None,
        progress: bool = False,
        clip: Any = None,
    ) -> None:
        if task is None and isinstance(plan, str) and plan in processor.task_instructions:
            task = plan
        plan = processor.plan(plan)
        if template is not None:
            if isinstance(template, bool) or not isinstance(template, int) or not 0 <= template < len(plan.templates):
                raise ValueError(f"template={template!r}: the instruction has {len(plan.templates)} template(s)")
            plan = dataclasses.replace(plan, templates=(plan.templates[template],))
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if candidates is None and task is not None and task in processor.closed_sets:
            candidates = processor.closed_sets[task]
        if isinstance(candidates, str):
            raise TypeError("candidates must be a list of answers, not one string")
        candidates = tuple(candidates) if candidates is not None else None
        if candidates is not None and not candidates:
            raise ValueError("candidates is empty: a closed set needs at least one answer")
        closed = any(isinstance(t.target_slot, Slot) and t.target_slot.closed_set for t in plan.templates)
        if closed and candidates is None:
            raise ValueError(
                f"the target of {plan.instruction!r} is a closed set but no candidates are known: pass candidates=[...]"
                " or save them in processor.closed_sets under the task's name"
            )
        self.processor, self.plan, self.task, self.candidates = processor, plan, task, candidates
        self.batch_size, self.progress = batch_size, progress
        if clip is not None and not isinstance(clip, tuple):
            from transformers import CLIPModel, CLIPProcessor  # loaded once, not per call

            clip = (
                CLIPModel.from_pretrained(clip, local_files_only=True).eval(),
                CLIPProcessor.from_pretrained(clip, local_files_only=True),
            )
        self.clip = clip
        self.generate_kwargs = dict(generate_kwargs or {})
        self._tries: dict[tuple[int, bool], CandidateTrie] = {}

    @property
    def target_kind(self) -> str:
        """What the answers hold ([`TARGET_KINDS`])."""
        return plan_target_kind(self.plan)

    # -- the five steps ------------------------------------------------------------------------------------------

    def encode(
        self, rows: Iterable[Mapping[str, Any]], *, split: str = "eval", seed: int = 0, first_index: int | None = 0
    ) -> list[dict[str, Any]]:
        """Encode rows without targets (target columns in a row are ignored); row `i` is `row_index=first_index+i`
        (which seeds its template draw and names it in errors), or unnamed with `first_index=None`."""
        examples = []
        for offset, row in enumerate(rows):
            if not isinstance(row, Mapping):
                raise TypeError(f"each row must be a mapping of column -> value, got {type(row).__name__}")
            index = None if first_index is None else first_index + offset
            examples.append(
                self.processor.encode(
                    self.plan, row, split=split, seed=seed, row_index=index, task=self.task, with_targets=False
                )
            )
        return examples

    def groups(self, examples: Sequence[Mapping[str, Any]]) -> list[AnswerGroup]:
        """The examples' positions by `(template, prefix length)`, in that order, each with its closed-set
        constraint."""
        by_key: dict[tuple[int, int], list[int]] = {}
        for position, example in enumerate(examples):
            meta = example["meta"]
            by_key.setdefault((meta["template_index"], meta["prefix_length"]), []).append(position)
        return [
            AnswerGroup(template, prefix, tuple(positions), self._constraint(template, prefix))
            for (template, prefix), positions in sorted(by_key.items())
        ]

    def batches(self, examples: Sequence[Mapping[str, Any]]) -> list[tuple[AnswerGroup, tuple[int, ...]]]:
        """`(group, positions)` per `generate` call: every group cut into runs of at most `batch_size` rows."""
        size = self.batch_size
        return [
            (group, group.positions[start : start + size])
            for group in self.groups(examples)
            for start in range(0, len(group.positions), size)
        ]

    def call_kwargs(self, group: AnswerGroup, generate_kwargs: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """`generate()` arguments of one group: the generator's settings under `generate_kwargs`, plus the group's
        closed-set constraint and step budget."""
        kwargs = {**self.generate_kwargs, **(generate_kwargs or {})}
        codes = self._code_count(group.template_index)
        if codes is not None:
            searched = kwargs.get("do_sample") is False or (kwargs.get("num_beams") or 1) > 1
            if self.target_kind == "image" and not searched:  # a caller's greedy or beam search keeps its settings
                kwargs = {**IMAGE_GENERATION_DEFAULTS, **kwargs}
                if kwargs.get("top_k"):
                    kwargs["top_k"] = min(int(kwargs["top_k"]), self.processor.vocab.num_codes)
            vocab = self.processor.vocab
            constraint = CodeTokenLogitsProcessor(
                codes, vocab.code_offset, vocab.num_codes, vocab.eos_id, prefix_length=1 + group.prefix_length
            )
            processors = [*(kwargs.get("logits_processor") or []), constraint]
            if self.target_kind == "image" and (kwargs.get("num_beams") or 1) == 1:
                processors.append(CodeScoreLogitsProcessor(1 + group.prefix_length))
            kwargs["logits_processor"] = LogitsProcessorList(processors)
            # The constraint fixes the length (codes, then EOS); a shorter budget would cut the picture.
            kwargs.pop("max_length", None)
            kwargs["max_new_tokens"] = codes + 1
            kwargs["eos_token_id"] = vocab.eos_id
        if group.closed_set is not None:
            longest = group.longest_answer
            if kwargs.get("max_new_tokens") is not None:  # never cut a candidate short
                kwargs["max_new_tokens"] = max(kwargs["max_new_tokens"], longest)
            elif kwargs.get("max_length") is None:
                kwargs["max_new_tokens"] = longest
            kwargs["logits_processor"] = LogitsProcessorList(
                [*(kwargs.get("logits_processor") or []), group.closed_set]
            )
        return kwargs

    def generate(self, model: Any, rows: Iterable[Mapping[str, Any]], **kwargs: Any) -> list[Any]:
        """Typed answers of dataset rows, in input order: `encode` then [`generate_from_examples`] (same keywords)."""
        return self.generate_from_examples(model, self.encode(rows), **kwargs)

    def generate_from_examples(
        self,
        model: Any,
        examples: Sequence[Mapping[str, Any]],
        *,
        generate_kwargs: Mapping[str, Any] | None = None,
        prepare_inputs: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None = None,
        num_calls: Callable[[int], int] | None = None,
    ) -> list[Any]:
        """Typed answers, one per example in input order (a list of `num_return_sequences` answers when that is > 1).

        Args:
            model: The OFA model (`generate` is called on it, under `torch.no_grad`).
            examples: What `OFAProcessor.encode` made for the plan, with or without targets ([`generation_inputs`]).
            generate_kwargs: `generate()` arguments of this call, over the generator's own.
            prepare_inputs: Moves a collated batch to the model (default: `.to(model.device)`); the trainer passes
                its own `_prepare_inputs`.
            num_calls: Maps this process's number of `generate` calls to the number to run; sharded models
                (DeepSpeed ZeRO-3, FSDP) need every rank to run as many, so the last batch is repeated, unused.
        """
        examples = [generation_inputs(example) for example in examples]
        work = self.batches(examples)
        calls = num_calls(len(work)) if num_calls is not None else len(work)
        if calls and not work:
            raise RuntimeError(f"task {self.task!r}: this process has no rows to generate while others have some")
        prepare = prepare_inputs if prepare_inputs is not None else (lambda batch: batch.to(model.device))
        answers: list[Any] = [None] * len(examples)
        with torch.no_grad():
            for number in tqdm(range(calls), desc=f"generating {self.task or 'answers'}", disable=not self.progress):
                group, positions = work[min(number, len(work) - 1)]
                batch = [examples[position] for position in positions]
                kwargs = self.call_kwargs(group, generate_kwargs)
                per_row = kwargs.get("num_return_sequences") or 1
                image = self.target_kind == "image"
                if image and (kwargs.get("num_beams") or 1) > 1:
                    kwargs.update(return_dict_in_generate=True, output_scores=False)
                output = model.generate(**prepare(self.processor.collate(batch)), **kwargs)  # (rows * per_row, T)
                sequences = output.sequences if hasattr(output, "sequences") else output
                if number >= len(work):  # a repeat that only keeps sharded ranks in step
                    continue
                metas = [example["meta"] for example in batch for _ in range(per_row)]
                results = self.processor.post_process_generation(
                    sequences, self.plan, metas, candidates=self.candidates
                )
                if image:
                    results = self._best_pictures(results, batch, per_row, output, kwargs)
                    per_row = 1
                for j, position in enumerate(positions):
                    answers[position] = results[j] if per_row == 1 else results[j * per_row : (j + 1) * per_row]
        return answers

    def _best_pictures(
        self, results: list[dict[str, Any]], batch: Sequence[Mapping[str, Any]], per_row: int, output: Any, kwargs
    ) -> list[dict[str, Any]]:
        """One answer per row from its `per_row` candidates: ranked by CLIP (when given), else by log-probability."""
        if self.clip is not None:
            _, scores = rank_images_with_clip(
                [result["image"] for result in results], [example["meta"]["caption"] for example in batch], self.clip
            )  # (rows, per_row)
        else:
            if getattr(output, "sequences_scores", None) is not None:  # beam search's own
                flat = output.sequences_scores
            else:
                scorer = next(p for p in kwargs["logits_processor"] if isinstance(p, CodeScoreLogitsProcessor))
                flat = scorer.total
            scores = flat.detach().float().cpu().view(len(batch), per_row)  # (rows * per_row,) -> (rows, per_row)
        answers = []
        for row in range(len(batch)):
            order = scores[row].argsort(descending=True).tolist()
            candidates = [{**results[row * per_row + k], "score": float(scores[row, k])} for k in order]
            answers.append({"image": candidates[0]["image"], "codes": candidates[0]["codes"], "candidates": candidates})
        return answers

    # -- helpers -------------------------------------------------------------------------------------------------

    def _code_count(self, template: int) -> int | None:
        """Codes a generated image target has (the image tokenizer's grid, or the slot's `length`); `None` for other
        targets, and for an IMAGE_CODE target of unknown size (generated unconstrained)."""
        target = self.plan.templates[template].target_slot
        kind = target_kind(target)
        if kind == "image":
            height, width = self.processor.image_grid
            return height * width
        if kind == "codes":
            if target.attr("length") is not None:
                return int(target.attr("length"))
            if self.processor.image_tokenizer is not None:
                height, width = self.processor.image_grid
                return height * width
        return None

    def _constraint(self, template: int, prefix_length: int) -> ClosedSetLogitsProcessor | None:
        target = self.plan.templates[template].target_slot
        if self.candidates is None or not (isinstance(target, Slot) and target.closed_set):
            return None
        # The candidates' tokens depend on the template's target attributes and on whether a prefix precedes them
        # (the leading-space rule); the trie is built once per such pair.
        key = (template, prefix_length == 0)
        if key not in self._tries:
            self._tries[key] = self.processor.closed_set_trie(
                self.candidates, self.plan, template_index=template, prefix_length=prefix_length
            )
        vocab = self.processor.vocab
        return ClosedSetLogitsProcessor(
            self._tries[key], eos_token_id=vocab.eos_id, pad_token_id=vocab.pad_id, prefix_length=prefix_length
        )
