"""Benchmark OFA against references measured beside it, in one process and one run.

Example:
    python scripts/benchmark.py                       # every figure, base size
    python scripts/benchmark.py --quick --size tiny   # a short run on small shapes
    python scripts/benchmark.py --only train_step_vs_bart,decode_flatness --json out.json
    python scripts/benchmark.py --threads 1 --reference-port /tmp/OFA --compile   # also the port and compile

Timings alone are meaningless on a shared machine, so every figure is a ratio against a reference timed in the same
run: transformers' `BartForConditionalGeneration` of the same dimensions, the dense model for mixture-of-experts,
a large fp32 matmul for the machine's peak, OFA's own early decoding steps for decode flatness, OFA's own text
generation after the same prompt for image generation (`image_generation`, at the demo size and the run's), and, with
`--reference-port DIR`, the original OFA port for transformers with the same weights.

The original port (`*_vs_port` figures, `port_logits_parity`, `train_memory_vs_port`): fetch OFA-Sys/OFA, branch
`feature/add_transformers`, and pass the checkout (or its `transformers/src/transformers/models/ofa` folder):

    git clone --branch feature/add_transformers --depth 1 https://github.com/OFA-Sys/OFA /tmp/OFA
    python scripts/benchmark.py --threads 1 --reference-port /tmp/OFA

Nothing else is needed: the benchmark copies the port's `configuration_ofa.py`, `resnet.py` and `modeling_ofa.py`
to a temporary package, makes their relative transformers imports absolute and applies `PORT_PATCHES` (what
transformers 5 needs), and leaves the checkout untouched. The port is randomly initialized, its state dict is
converted to ours with `modeling_ofa.convert.convert_state_dict(..., "hf_port")`, and `port_logits_parity` checks
that both then give the same logits. The port has no transformers-5 `generate`, so its searches run in
`port_generate`, a plain cached greedy / beam loop over its forward; ours run through `generate()`.

Method:
    * Threads are fixed with `torch.set_num_threads` (reported) and every run is timed with `time.perf_counter`.
    * Each figure warms every contender up, then times `repeats` rounds; a round runs every contender once, in an
      order that alternates between rounds (A B, B A, A B, ...), so drift of the machine hits all of them alike.
      Figures are medians over rounds; `value` is the ratio of the medians.
    * FLOPs (`mfu`) are counted exactly with `torch.utils.flop_counter.FlopCounterMode` over one forward+backward
      (matmuls, convolutions and attention; elementwise work is not counted, as usual for MFU).
    * Peak memory (`checkpointing_memory`) is measured in a fresh subprocess per configuration: the peak resident
      set size (Linux `VmHWM`, its mark reset through `/proc/self/clear_refs` after the imports so that their
      transient peak does not count; `resource.getrusage(...).ru_maxrss` where that is impossible) minus the
      resident size after the imports, over building the model and one train step. `tracemalloc` does not see
      torch's allocations, and a fresh process keeps the allocator's cached blocks of one configuration out of
      the other.
    * Figures whose prerequisites are missing (an optional dependency, the original port without
      `--reference-port`) report `{"value": null, "status": "unavailable: <reason>"}` instead of failing.

Figures timed in this process also carry `details.cpu_time_value`: the same ratio over process CPU time
(`time.process_time`), which other jobs on a shared machine do not stretch. With `--threads 1` it is the figure
the machine would give if it were idle; with more threads it includes OpenMP spin-waiting.

Output: one JSON object on stdout (and in `--json PATH`) with `machine`, `settings` and `figures`; a readable table
on stderr. Every figure record has `value`, `target`, `meets_target`, `reference_seconds`, `measured_seconds`,
`details` and `status` (`ok`, `unavailable: ...` or `error: ...`). The exit code is 1 if any figure errored.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import inspect
import io
import itertools
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import transformers
from torch import nn
from transformers import BartConfig, BartForConditionalGeneration, GenerationConfig

from modeling_ofa import CACHE_NAME, OFAConfig, OFAForConditionalGeneration
from modeling_ofa import modeling_ofa as modeling
from modeling_ofa.convert import PORT_CONFIG_FIELDS, convert_state_dict

__all__ = [
    "BENCHMARKS",
    "SIZES",
    "TARGETS",
    "WORKLOADS",
    "Bench",
    "Unavailable",
    "Workload",
    "machine_info",
    "main",
    "run_benchmarks",
]


# ----------------------------------------------------------------------------------------------------------------
# Settings as data
# ----------------------------------------------------------------------------------------------------------------

# (comparison, threshold) per figure; None where the issue sets no target (informational figures).
TARGETS: dict[str, tuple[str, float] | None] = {
    "train_step_vs_bart": ("<=", 0.95),
    "decode_flatness": ("<=", 1.2),
    "generate_vs_bart": (">=", 1.05),
    # The head in vocabulary blocks (`vocabulary_logits`) must not make generation slower than the plain head.
    "blocked_head_vs_plain": ("<=", 1.0),
    "image_stem_share": None,
    "preprocess_vs_train": (">=", 5.0),
    "moe_modality_vs_dense": ("<=", 1.15),
    "moe_topk_vs_dense": ("<=", 1.3),
    "mfu": (">=", 0.4),
    "checkpointing_memory": ("<=", 0.6),
    "multitask_vs_trainer": (">=", 0.95),
    "onnx_vs_torch": None,
    "int8_vs_fp32": None,
    # Per-token time of image-code generation / of text generation: code positions must not make a step costlier.
    "image_generation": ("<=", 1.2),
    # Against the original port (--reference-port): CPU-time ratios are the figures the targets are about.
    "port_logits_parity": ("<=", 1e-4),
    "train_step_vs_port": ("<=", 0.77),
    "generate_vs_port": ("<=", 0.77),
    "caption_throughput_vs_port": (">=", 1.5),
    "train_memory_vs_port": None,
    "compiled_vs_eager": None,
}

# Model sizes: OFA presets (`OFAConfig.from_preset`). The preprocessing and trainer figures always use `tiny`.
SIZES: tuple[str, ...] = ("tiny", "base")

# The image+text caption instruction of the preprocessing and trainer figures (OFASys grammar).
CAPTION_INSTRUCTION = "[IMAGE:image] what does the image describe? -> [TEXT:caption]"


@dataclass(frozen=True)
class Workload:
    """Shapes and round counts of one benchmark run.

    Args:
        batch (`int`): Rows of the text-only train step.
        source_length (`int`): Encoder tokens of text-only inputs (train, decode, generate).
        target_length (`int`): Decoder tokens of the text-only train step.
        image_batch (`int`): Rows of the timed image+text steps (stem share, MoE, MFU).
        image_size (`int`): Side in pixels of the images (16 pixels per patch).
        image_text_length (`int`): Encoder text tokens next to the image.
        image_target_length (`int`): Decoder tokens of image+text steps.
        decode_batch (`int`): Rows decoded in parallel for `decode_flatness`.
        decode_steps (`tuple[int, int]`): The early and the late step compared by `decode_flatness`.
        generate_batch (`int`): Rows of `generate()` (greedy and beam search).
        generate_tokens (`int`): New tokens per row (forced: `min_new_tokens == max_new_tokens`).
        matmul_size (`int`): Side of the square fp32 matmul that measures the machine's peak.
        raw_image_size (`tuple[int, int]`): (width, height) of the JPEG images the processor decodes.
        trainer_steps (`int`): Optimizer steps per trainer run (`multitask_vs_trainer`).
        memory_image_batch (`int`): Rows of the image+text step of `checkpointing_memory`.
        memory_image_size (`int`): Image side of that step. Checkpointing matters when activations outweigh the
            weights and gradients, so this step is a realistic fine-tuning one rather than the small timing batch.
        port_batch (`int`): Rows of the image+text train step against the original port.
        port_image_size (`int`): Image side of the port figures' train step and captioning.
        port_text_length (`int`): Encoder text tokens of those steps.
        port_target_length (`int`): Decoder tokens of the port train step.
        caption_batch (`int`): Images captioned per call in `caption_throughput_vs_port` (beam 5).
        caption_tokens (`int`): New tokens per caption there (forced).
        caption_repeats (`int`): Timed rounds of that figure (one round captions the batch with both models).
        compile_steps (`int`): Timed calls per contender of `compiled_vs_eager` (after the compiling call).
        image_code_grid (`int`): Side of the code grid of `image_generation` (16: OFA's 256 codes, code_image_size
            128).
        image_repeats (`int`): Timed rounds of `image_generation` (one round generates one image and one text of as
            many tokens, per size).
        repeats (`int`): Timed rounds per figure.
        warmup (`int`): Untimed rounds before them.
    """

    batch: int
    source_length: int
    target_length: int
    image_batch: int
    image_size: int
    image_text_length: int
    image_target_length: int
    decode_batch: int
    decode_steps: tuple[int, int]
    generate_batch: int
    generate_tokens: int
    matmul_size: int
    raw_image_size: tuple[int, int]
    trainer_steps: int
    memory_image_batch: int
    memory_image_size: int
    port_batch: int
    port_image_size: int
    port_text_length: int
    port_target_length: int
    caption_batch: int
    caption_tokens: int
    caption_repeats: int
    compile_steps: int
    image_code_grid: int
    image_repeats: int
    repeats: int
    warmup: int


WORKLOADS: dict[str, Workload] = {
    "full": Workload(
        batch=8,
        source_length=64,
        target_length=32,
        image_batch=2,
        image_size=256,
        image_text_length=24,
        image_target_length=16,
        decode_batch=4,
        decode_steps=(8, 64),
        generate_batch=2,
        generate_tokens=32,
        matmul_size=2048,
        raw_image_size=(640, 480),
        trainer_steps=6,
        memory_image_batch=8,
        memory_image_size=384,
        port_batch=4,
        port_image_size=384,
        port_text_length=30,
        port_target_length=20,
        caption_batch=16,
        caption_tokens=16,
        caption_repeats=2,
        compile_steps=5,
        image_code_grid=16,
        image_repeats=3,
        repeats=7,
        warmup=1,
    ),
    "quick": Workload(
        batch=2,
        source_length=16,
        target_length=8,
        image_batch=2,
        image_size=64,
        image_text_length=8,
        image_target_length=6,
        decode_batch=2,
        decode_steps=(8, 64),
        generate_batch=1,
        generate_tokens=6,
        matmul_size=512,
        raw_image_size=(96, 80),
        trainer_steps=3,
        memory_image_batch=2,
        memory_image_size=64,
        port_batch=2,
        port_image_size=64,
        port_text_length=8,
        port_target_length=6,
        caption_batch=2,
        caption_tokens=4,
        caption_repeats=1,
        compile_steps=2,
        image_code_grid=4,
        image_repeats=1,
        repeats=1,
        warmup=1,
    ),
}

# Half-window (in steps) around each compared decode step: the per-step time is the median over the window.
DECODE_WINDOW = 2


class Unavailable(Exception):
    """A figure cannot be measured here (an optional dependency or the reference port is missing)."""


# ----------------------------------------------------------------------------------------------------------------
# Timing and bookkeeping
# ----------------------------------------------------------------------------------------------------------------


def interleaved_times(
    runs: dict[str, Callable[[], Any]],
    repeats: int,
    warmup: int,
    cpu_seconds: dict[str, list[float]] | None = None,
) -> dict[str, list[float]]:
    """Time every callable of `runs` once per round, alternating the order between rounds.

    Args:
        runs (`dict[str, Callable]`): Contenders by name; each call is one measured unit of work.
        repeats (`int`): Timed rounds.
        warmup (`int`): Untimed rounds first (lazy initialisation, allocator and cache warm-up).
        cpu_seconds (`dict`, *optional*): Filled with the process CPU time (`time.process_time`) of every timed
            call, by contender. Other jobs on the machine stretch wall time but not CPU time, so with one thread
            this ratio shows what contention did to the wall-clock one.

    Returns:
        `dict[str, list[float]]`: wall-clock seconds (`time.perf_counter`) of every timed call, by contender.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    names = list(runs)
    for _ in range(warmup):
        for name in names:
            runs[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    cpu = cpu_seconds if cpu_seconds is not None else {}
    cpu.update({name: [] for name in names})
    for round_index in range(repeats):
        # Reversing every other round turns A B A B into A B B A: no contender always runs first.
        for name in names if round_index % 2 == 0 else names[::-1]:
            gc.collect()  # outside the timed region, so a collection never lands inside one contender only
            start, cpu_start = time.perf_counter(), time.process_time()
            runs[name]()
            times[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - cpu_start)
    return times


def median(values: list[float]) -> float:
    """Median of a list of seconds, as a plain float."""
    return float(statistics.median(values))


def _summary(times: list[float]) -> dict[str, float]:
    """Median, min and max of a list of seconds, rounded for the report."""
    return {"median": round(median(times), 6), "min": round(min(times), 6), "max": round(max(times), 6)}


def _target_record(name: str) -> dict[str, Any] | None:
    target = TARGETS[name]
    return None if target is None else {"op": target[0], "value": target[1]}


def _meets(name: str, value: float) -> bool | None:
    target = TARGETS[name]
    if target is None:
        return None
    op, threshold = target
    return value <= threshold if op == "<=" else value >= threshold


def figure(
    name: str,
    value: float,
    reference_seconds: float | None,
    measured_seconds: float | None,
    details: dict[str, Any],
) -> dict[str, Any]:
    """The record of one measured figure."""
    value = float(value)
    return {
        "value": round(value, 4),
        "target": _target_record(name),
        "meets_target": _meets(name, value),
        "reference_seconds": None if reference_seconds is None else round(reference_seconds, 6),
        "measured_seconds": None if measured_seconds is None else round(measured_seconds, 6),
        "details": details,
        "status": "ok",
    }


def _worst_mode_figure(
    name: str, modes: dict[str, dict[str, Any]], details: dict[str, Any], reference_key: str, measured_key: str
) -> dict[str, Any]:
    """The record of a figure measured in several modes (searches, model sizes): the worst mode in the direction of
    the figure's target gives the value.

    Args:
        name (`str`): The figure; its target says which way is worse (`<=`: the largest ratio).
        modes (`dict`): By mode, its `ratio`, `cpu_time_ratio` and `_summary` seconds under `reference_key` and
            `measured_key`; each mode goes into the details under its name.
        details (`dict`): The figure's settings, first in the details.
        reference_key (`str`), measured_key (`str`): The seconds of the worst mode reported as the figure's
            `reference_seconds` and `measured_seconds` (their medians).

    Returns:
        The `figure` record; `details` also holds `worst_mode` and `cpu_time_value`, the worst `cpu_time_ratio` of
        all modes (the worst mode by CPU time may be another one).
    """
    target = TARGETS[name]
    if target is None:
        raise ValueError(f"{name} has no target, so no mode is worse than another")
    worse = max if target[0] == "<=" else min
    worst = worse(modes, key=lambda mode: modes[mode]["ratio"])
    cpu_value = worse(mode["cpu_time_ratio"] for mode in modes.values())
    details = {**details, "worst_mode": worst, "cpu_time_value": cpu_value, **modes}
    reference, measured = modes[worst][reference_key]["median"], modes[worst][measured_key]["median"]
    return figure(name, modes[worst]["ratio"], reference, measured, details)


def not_measured(name: str, status: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    """The record of a figure that could not be measured (`status` says why)."""
    return {
        "value": None,
        "target": _target_record(name),
        "meets_target": None,
        "reference_seconds": None,
        "measured_seconds": None,
        "details": details or {},
        "status": status,
    }


@contextmanager
def num_threads(count: int) -> Iterator[None]:
    """Run a block with `torch.set_num_threads(count)`, then restore the previous setting."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def machine_info(threads: int) -> dict[str, Any]:
    """CPU model, core counts and library versions, for the JSON report."""
    cpu_model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu_model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass  # not Linux: keep the platform module's answer
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu_model": cpu_model,
        "logical_cores": os.cpu_count(),
        "available_cores": available,
        "torch_threads": threads,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cuda_available": torch.cuda.is_available(),
    }


# ----------------------------------------------------------------------------------------------------------------
# Models and inputs
# ----------------------------------------------------------------------------------------------------------------


def ofa_config(size: str, **overrides: Any) -> OFAConfig:
    """An OFA preset with SDPA attention."""
    return OFAConfig.from_preset(size, attn_implementation="sdpa", **overrides)


def bart_like(config: OFAConfig) -> BartForConditionalGeneration:
    """transformers' BART with OFA's dimensions, vocabulary, dropouts and special ids, with SDPA attention."""
    bart_config = BartConfig(
        vocab_size=config.vocab_size,
        d_model=config.d_model,
        encoder_layers=config.encoder_layers,
        decoder_layers=config.decoder_layers,
        encoder_attention_heads=config.encoder_attention_heads,
        decoder_attention_heads=config.decoder_attention_heads,
        encoder_ffn_dim=config.encoder_ffn_dim,
        decoder_ffn_dim=config.decoder_ffn_dim,
        max_position_embeddings=config.max_position_embeddings,
        activation_function=config.activation_function,
        dropout=config.dropout,
        attention_dropout=config.attention_dropout,
        activation_dropout=config.activation_dropout,
        scale_embedding=config.scale_embedding,
        pad_token_id=config.pad_token_id,
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        decoder_start_token_id=config.decoder_start_token_id,
        forced_eos_token_id=None,
        attn_implementation="sdpa",
    )
    torch.manual_seed(0)
    return BartForConditionalGeneration(bart_config)


def build_ofa(config: OFAConfig) -> OFAForConditionalGeneration:
    torch.manual_seed(0)
    return OFAForConditionalGeneration(config)


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _token_ids(generator: torch.Generator, shape: tuple[int, int], vocab_size: int) -> torch.Tensor:
    # Ids above the four specials; the values do not change the work, only the shapes do.
    return torch.randint(4, vocab_size, shape, generator=generator)


def text_batch(config: OFAConfig, batch: int, source_length: int, target_length: int) -> dict[str, torch.Tensor]:
    """A seq2seq training batch both models accept: the last row is padded by a quarter (encoder and labels)."""
    generator = torch.Generator().manual_seed(0)
    input_ids = _token_ids(generator, (batch, source_length), config.vocab_size)
    input_ids[:, 0] = config.bos_token_id
    input_ids[:, -1] = config.eos_token_id
    attention_mask = torch.ones_like(input_ids)
    labels = _token_ids(generator, (batch, target_length), config.vocab_size)
    labels[:, -1] = config.eos_token_id
    if batch > 1:
        # Real batches are padded; a padded row makes BART use a mask too, as OFA always does.
        cut_source, cut_target = source_length - source_length // 4, target_length - target_length // 4
        input_ids[-1, cut_source - 1] = config.eos_token_id
        input_ids[-1, cut_source:] = config.pad_token_id
        attention_mask[-1, cut_source:] = 0
        labels[-1, cut_target - 1] = config.eos_token_id
        labels[-1, cut_target:] = -100
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def image_text_batch(config: OFAConfig, workload: Workload) -> dict[str, torch.Tensor]:
    """An image+text training batch: random pixels in [-1, 1], a text prompt and a text target."""
    batch = text_batch(config, workload.image_batch, workload.image_text_length, workload.image_target_length)
    generator = torch.Generator().manual_seed(1)
    shape = (workload.image_batch, 3, workload.image_size, workload.image_size)
    batch["pixel_values"] = torch.rand(shape, generator=generator) * 2 - 1
    return batch


def train_step(model: nn.Module, batch: dict[str, torch.Tensor]) -> None:
    """Forward with labels and backward; gradients are dropped so every step allocates them alike."""
    model(**batch).loss.backward()
    model.zero_grad(set_to_none=True)


class Bench:
    """State shared by the figures of one run: settings and the models already built.

    Args:
        size (`str`): OFA preset of the compared models, one of `SIZES`.
        workload (`Workload`): Shapes and round counts.
        threads (`int`): `torch.set_num_threads` value of the run (memory subprocesses use it too).
        reference_port (`Path`, *optional*): A local copy of the original OFA port for transformers (see
            `load_reference_port`); without it the figures against the port are unavailable.
        compile (`bool`): Measure `compiled_vs_eager` (it compiles the model, which takes minutes).
    """

    def __init__(
        self,
        size: str,
        workload: Workload,
        threads: int,
        reference_port: Path | None = None,
        compile: bool = False,
    ) -> None:
        if size not in SIZES:
            raise ValueError(f"size {size!r} is not one of {list(SIZES)}")
        self.size = size
        self.workload = workload
        self.threads = threads
        self.reference_port = reference_port
        self.compile = compile
        self._models: dict[str, nn.Module] = {}
        self.last_cpu: dict[str, list[float]] = {}
        self.shared: dict[str, Any] = {}  # results one timing run produces for several figures

    def config(self, **overrides: Any) -> OFAConfig:
        return ofa_config(self.size, **overrides)

    def ofa(self) -> OFAForConditionalGeneration:
        """The dense OFA model of this size (built once, shared by the figures)."""
        if "ofa" not in self._models:
            self._models["ofa"] = build_ofa(self.config())
        return self._models["ofa"]

    def bart(self) -> BartForConditionalGeneration:
        """BART with the dimensions of `ofa()` (built once)."""
        if "bart" not in self._models:
            self._models["bart"] = bart_like(self.ofa().config)
        return self._models["bart"]

    def times(self, runs: dict[str, Callable[[], Any]]) -> dict[str, list[float]]:
        """Interleaved wall-clock seconds by contender; the CPU seconds of the same calls go to `last_cpu`."""
        self.last_cpu = {}
        return interleaved_times(runs, self.workload.repeats, self.workload.warmup, self.last_cpu)

    def cpu_ratio(self, numerator: str, denominator: str) -> float:
        """Ratio of the median CPU seconds of two contenders of the last `times` call."""
        return round(median(self.last_cpu[numerator]) / median(self.last_cpu[denominator]), 4)

    def release(self) -> None:
        """Drop the shared models (before memory-hungry figures)."""
        self._models.clear()
        gc.collect()


# ----------------------------------------------------------------------------------------------------------------
# Figures: OFA against BART
# ----------------------------------------------------------------------------------------------------------------


def bench_train_step_vs_bart(bench: Bench) -> dict[str, Any]:
    """Forward+backward on text-only inputs: OFA time / BART time, same dims, lengths and batch."""
    w = bench.workload
    ofa, bart = bench.ofa().train(), bench.bart().train()
    batch = text_batch(ofa.config, w.batch, w.source_length, w.target_length)
    times = bench.times({"ofa": lambda: train_step(ofa, batch), "bart": lambda: train_step(bart, batch)})
    measured, reference = median(times["ofa"]), median(times["bart"])
    details = {
        "batch": w.batch,
        "source_length": w.source_length,
        "target_length": w.target_length,
        "ofa_seconds": _summary(times["ofa"]),
        "bart_seconds": _summary(times["bart"]),
        "ofa_parameters": num_parameters(ofa),
        "bart_parameters": num_parameters(bart),
        "note": "OFA's parameter count includes the ResNet stem and position tables, idle on text-only inputs",
        "cpu_time_value": bench.cpu_ratio("ofa", "bart"),
    }
    return figure("train_step_vs_bart", measured / reference, reference, measured, details)


def decode_step_times(
    model: nn.Module, batch: dict[str, torch.Tensor], steps: int, cpu_seconds: list[float] | None = None
) -> list[float]:
    """Seconds of each cached greedy decoding step; entry s decodes position s (the cache then holds s steps).

    Args:
        model (`nn.Module`): An encoder-decoder with `get_encoder()` and a key/value cache.
        batch (`dict`): `input_ids` and `attention_mask` of the source.
        steps (`int`): Decoding steps to run.
        cpu_seconds (`list[float]`, *optional*): Filled with the process CPU time of every step.
    """
    config = model.config
    input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
    times = []
    with torch.no_grad():
        encoder_outputs = model.get_encoder()(input_ids=input_ids, attention_mask=attention_mask)
        tokens = torch.full((input_ids.shape[0], 1), config.decoder_start_token_id, dtype=torch.long)
        cache = None
        for _ in range(steps):
            start, cpu_start = time.perf_counter(), time.process_time()
            out = model(
                encoder_outputs=encoder_outputs,
                attention_mask=attention_mask,
                decoder_input_ids=tokens,
                cache=cache,
                use_cache=True,
            )
            tokens = out.logits[:, -1:].argmax(dim=-1)  # greedy choice, part of a real step
            times.append(time.perf_counter() - start)
            if cpu_seconds is not None:
                cpu_seconds.append(time.process_time() - cpu_start)
            cache = getattr(out, CACHE_NAME)
    return times


def _window(times: list[float], step: int) -> float:
    return median(times[step - DECODE_WINDOW : step + DECODE_WINDOW + 1])


def bench_decode_flatness(bench: Bench) -> dict[str, Any]:
    """Per-token cached decode time at the late step / at the early step (OFA); BART's ratio alongside."""
    w = bench.workload
    early, late = w.decode_steps
    ofa, bart = bench.ofa().eval(), bench.bart().eval()
    batch = text_batch(ofa.config, w.decode_batch, w.source_length, 2)
    steps = late + DECODE_WINDOW + 1
    # Per contender, one list of per-step seconds per round (wall and CPU).
    wall: dict[str, list[list[float]]] = {"ofa": [], "bart": []}
    cpu: dict[str, list[list[float]]] = {"ofa": [], "bart": []}

    def run(name: str, model: nn.Module) -> None:
        cpu[name].append([])
        wall[name].append(decode_step_times(model, batch, steps, cpu[name][-1]))

    bench.times({"ofa": lambda: run("ofa", ofa), "bart": lambda: run("bart", bart)})

    def at(rounds: list[list[float]]) -> dict[int, float]:
        # Drop the warm-up rounds, then take the windowed step time of every round and its median over rounds.
        return {s: median([_window(t, s) for t in rounds[w.warmup :]]) for s in (early, late)}

    ofa_at, bart_at = at(wall["ofa"]), at(wall["bart"])
    ofa_cpu, bart_cpu = at(cpu["ofa"]), at(cpu["bart"])
    details = {
        "batch": w.decode_batch,
        "source_length": w.source_length,
        "steps": [early, late],
        "window": f"median over steps s-{DECODE_WINDOW}..s+{DECODE_WINDOW}, then over rounds",
        "ofa_step_seconds": {str(s): round(v, 6) for s, v in ofa_at.items()},
        "bart_step_seconds": {str(s): round(v, 6) for s, v in bart_at.items()},
        "bart_flatness": round(bart_at[late] / bart_at[early], 4),
        "ofa_vs_bart_per_token": {str(s): round(ofa_at[s] / bart_at[s], 4) for s in (early, late)},
        "cpu_time_value": round(ofa_cpu[late] / ofa_cpu[early], 4),
        "bart_cpu_time_flatness": round(bart_cpu[late] / bart_cpu[early], 4),
        "ofa_vs_bart_per_token_cpu_time": {str(s): round(ofa_cpu[s] / bart_cpu[s], 4) for s in (early, late)},
    }
    return figure("decode_flatness", ofa_at[late] / ofa_at[early], ofa_at[early], ofa_at[late], details)


def _generation_config(model: nn.Module, num_beams: int, tokens: int) -> GenerationConfig:
    """Identical decoding settings for both models: exactly `tokens` new tokens, no length heuristics."""
    config = model.config
    return GenerationConfig(
        max_new_tokens=tokens,
        min_new_tokens=tokens,
        num_beams=num_beams,
        do_sample=False,
        use_cache=True,
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
        decoder_start_token_id=config.decoder_start_token_id,
    )


def bench_generate_vs_bart(bench: Bench) -> dict[str, Any]:
    """`generate()` tokens/s: OFA / BART, greedy and beam 4; the value is the worse of the two modes."""
    w = bench.workload
    ofa, bart = bench.ofa().eval(), bench.bart().eval()
    batch = text_batch(ofa.config, w.generate_batch, w.source_length, 2)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    tokens = w.generate_tokens
    modes: dict[str, dict[str, Any]] = {}
    lengths: dict[str, int] = {}

    def run(name: str, model: nn.Module, config: GenerationConfig) -> None:
        with torch.no_grad():
            lengths[name] = model.generate(**inputs, generation_config=config).shape[1]

    for mode, beams in (("greedy", 1), ("beam4", 4)):
        configs = {name: _generation_config(model, beams, tokens) for name, model in (("ofa", ofa), ("bart", bart))}
        runs = {
            "ofa": lambda c=configs["ofa"]: run("ofa", ofa, c),
            "bart": lambda c=configs["bart"]: run("bart", bart, c),
        }
        times = bench.times(runs)
        if lengths["ofa"] != lengths["bart"]:
            raise RuntimeError(f"{mode}: OFA generated {lengths['ofa']} positions but BART {lengths['bart']}")
        ofa_s, bart_s = median(times["ofa"]), median(times["bart"])
        produced = w.generate_batch * tokens
        modes[mode] = {
            "ratio": round(bart_s / ofa_s, 4),
            "ofa_tokens_per_second": round(produced / ofa_s, 2),
            "bart_tokens_per_second": round(produced / bart_s, 2),
            "ofa_seconds": _summary(times["ofa"]),
            "bart_seconds": _summary(times["bart"]),
            "cpu_time_ratio": bench.cpu_ratio("bart", "ofa"),
        }
    details = {"batch": w.generate_batch, "new_tokens": tokens, "source_length": w.source_length}
    return _worst_mode_figure("generate_vs_bart", modes, details, "bart_seconds", "ofa_seconds")


def bench_blocked_head_vs_plain(bench: Bench) -> dict[str, Any]:
    """`generate()` time with the language-model head in blocks of vocabulary rows (`vocabulary_logits`, the
    default) / with it off (`LM_HEAD_BLOCK_BYTES = 0`): greedy and beam 5, image+text input, forced length; the
    value is the worse mode. The sequences must be the same."""
    w = bench.workload
    ofa = bench.ofa().eval()
    data = port_batch(ofa.config, w.generate_batch, w.image_size, w.image_text_length, 2)
    inputs = {k: v for k, v in data["ours"].items() if k != "labels"}
    default = modeling.LM_HEAD_BLOCK_BYTES
    produced: dict[str, torch.Tensor] = {}
    modes: dict[str, dict[str, Any]] = {}

    def run(name: str, block_bytes: int, config: GenerationConfig) -> None:
        modeling.LM_HEAD_BLOCK_BYTES = block_bytes
        try:
            with torch.no_grad():
                produced[name] = ofa.generate(**inputs, generation_config=config)
        finally:
            modeling.LM_HEAD_BLOCK_BYTES = default

    for mode, beams in (("greedy", 1), ("beam5", 5)):
        config = _generation_config(ofa, beams, w.generate_tokens)
        times = bench.times(
            {"blocked": lambda c=config: run("blocked", default, c), "plain": lambda c=config: run("plain", 0, c)}
        )
        if not torch.equal(produced["blocked"], produced["plain"]):
            raise RuntimeError(f"{mode}: the blocked head generated other sequences than the plain head")
        modes[mode] = {
            "ratio": round(median(times["blocked"]) / median(times["plain"]), 4),
            "cpu_time_ratio": bench.cpu_ratio("blocked", "plain"),
            "blocked_seconds": _summary(times["blocked"]),
            "plain_seconds": _summary(times["plain"]),
        }
    details = {
        "batch": w.generate_batch,
        "image_size": w.image_size,
        "new_tokens": w.generate_tokens,
        "block_bytes": default,
        "same_sequences": True,
    }
    return _worst_mode_figure("blocked_head_vs_plain", modes, details, "plain_seconds", "blocked_seconds")


# ----------------------------------------------------------------------------------------------------------------
# Figures: image stem, MoE, MFU, memory
# ----------------------------------------------------------------------------------------------------------------


def bench_image_stem_share(bench: Bench) -> dict[str, Any]:
    """Share of an image+text train step spent in the ResNet stem (its forward+backward timed alone)."""
    w = bench.workload
    ofa = bench.ofa().train()
    batch = image_text_batch(ofa.config, w)
    stem = ofa.get_encoder().embed_images

    def stem_step() -> None:
        stem(batch["pixel_values"]).sum().backward()
        stem.zero_grad(set_to_none=True)

    times = bench.times({"step": lambda: train_step(ofa, batch), "stem": stem_step})
    measured, reference = median(times["stem"]), median(times["step"])
    details = {
        "image_batch": w.image_batch,
        "image_size": w.image_size,
        "patches": (w.image_size // 16) ** 2,
        "text_length": w.image_text_length,
        "target_length": w.image_target_length,
        "resnet_type": ofa.config.resnet_type,
        "step_seconds": _summary(times["step"]),
        "stem_seconds": _summary(times["stem"]),
        "cpu_time_value": bench.cpu_ratio("stem", "step"),
    }
    return figure("image_stem_share", measured / reference, reference, measured, details)


def _moe_models(bench: Bench) -> dict[str, nn.Module]:
    """Dense OFA and its two upcycled MoE variants with equal active parameters (top-1 routing)."""
    dense = build_ofa(bench.config())
    return {
        "dense": dense,
        "modality": OFAForConditionalGeneration.from_dense(dense, moe_type="modality"),
        "topk": OFAForConditionalGeneration.from_dense(dense, moe_type="topk", moe_num_experts=4, moe_top_k=1),
    }


def bench_moe(bench: Bench, kind: str) -> dict[str, Any]:
    """Train-step time of an MoE model / the dense model, on a mixed image+text batch."""
    w = bench.workload
    key = ("moe_modality_vs_dense", "moe_topk_vs_dense")[("modality", "topk").index(kind)]
    # Both MoE figures share one timing run (three contenders interleaved); the second figure reuses it.
    cached = bench.shared.get("moe")
    if cached is None:
        bench.release()
        models = _moe_models(bench)
        for model in models.values():
            model.train()
        batch = image_text_batch(models["dense"].config, w)
        times = bench.times({name: (lambda m=model: train_step(m, batch)) for name, model in models.items()})
        params = {name: num_parameters(model) for name, model in models.items()}
        cached = {
            "times": times,
            "cpu_ratio": {kind: bench.cpu_ratio(kind, "dense") for kind in ("modality", "topk")},
            "params": params,
            "experts": {n: m.config.num_experts for n, m in models.items()},
        }
        bench.shared["moe"] = cached
        del models
        gc.collect()
    times = cached["times"]
    measured, reference = median(times[kind]), median(times["dense"])
    details = {
        "image_batch": w.image_batch,
        "image_size": w.image_size,
        "text_length": w.image_text_length,
        "target_length": w.image_target_length,
        "experts": cached["experts"][kind],
        "routing": "modality id (IMAGE and TEXT experts active)" if kind == "modality" else "top-1 learned router",
        "dense_seconds": _summary(times["dense"]),
        f"{kind}_seconds": _summary(times[kind]),
        "total_parameters": {"dense": cached["params"]["dense"], kind: cached["params"][kind]},
        "cpu_time_value": cached["cpu_ratio"][kind],
    }
    return figure(key, measured / reference, reference, measured, details)


def _sdpa_cpu_flop_mapping() -> dict[Any, Callable[..., int]]:
    """FLOP formulas for the CPU flash-attention kernels, which `FlopCounterMode` does not register itself."""
    from torch.utils import flop_counter

    aten = torch.ops.aten
    return {
        aten._scaled_dot_product_flash_attention_for_cpu: flop_counter.sdpa_flop,
        aten._scaled_dot_product_flash_attention_for_cpu_backward: flop_counter.sdpa_backward_flop,
    }


def count_flops(step: Callable[[], Any]) -> int:
    """Exact matmul/conv/attention FLOPs of one call of `step` (forward and backward if it does both)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False, custom_mapping=_sdpa_cpu_flop_mapping())
    with counter:
        step()
    return int(counter.get_total_flops())


def bench_mfu(bench: Bench) -> dict[str, Any]:
    """Achieved FLOP/s of an image+text train step / FLOP/s of a large fp32 matmul, both timed in this run."""
    w = bench.workload
    ofa = bench.ofa().train()
    batches = {
        "image_text": image_text_batch(ofa.config, w),
        "text": text_batch(ofa.config, w.batch, w.source_length, w.target_length),
    }
    flops = {name: count_flops(lambda b=batch: train_step(ofa, b)) for name, batch in batches.items()}
    n = w.matmul_size
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=generator), torch.randn(n, n, generator=generator)
    times = bench.times(
        {
            "image_text": lambda: train_step(ofa, batches["image_text"]),
            "text": lambda: train_step(ofa, batches["text"]),
            "matmul": lambda: torch.mm(a, b),
        }
    )
    peak = 2 * n**3 / median(times["matmul"])
    achieved = {name: flops[name] / median(times[name]) for name in batches}
    details = {
        "workload": "image+text train step (forward+backward); text-only alongside",
        "image_batch": w.image_batch,
        "image_size": w.image_size,
        "matmul_size": n,
        "peak_flops_per_second": round(peak),
        "image_text_flops": flops["image_text"],
        "image_text_flops_per_second": round(achieved["image_text"]),
        "text_flops": flops["text"],
        "text_flops_per_second": round(achieved["text"]),
        "text_mfu": round(achieved["text"] / peak, 4),
        # FLOPs per CPU second over the matmul's: the MFU that other jobs' preemption does not dilute.
        "cpu_time_value": round(
            flops["image_text"] / median(bench.last_cpu["image_text"]) / (2 * n**3 / median(bench.last_cpu["matmul"])),
            4,
        ),
        "flop_counter": "torch.utils.flop_counter.FlopCounterMode (+ CPU flash-attention formulas)",
    }
    return figure("mfu", achieved["image_text"] / peak, median(times["matmul"]), median(times["image_text"]), details)


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark of this process (Linux `clear_refs`); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def _rss_bytes() -> tuple[int, int]:
    """(current, peak) resident set size of this process in bytes; both `ru_maxrss` where /proc is missing."""
    values = {}
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    key, amount = line.split(":", 1)
                    values[key] = int(amount.split()[0]) * 1024  # reported in kB
    except OSError:
        pass
    if len(values) < 2:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
        return peak, peak
    return values["VmRSS"], values["VmHWM"]


def memory_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Run in a fresh process: build one configuration, train one step, report resident memory (bytes).

    The peak mark is reset after the imports (their transient peak is not the model's), and again before the
    step, so both the whole run's peak and the step's own peak are known.

    Args:
        spec (`dict`): `size`, `workload` (a `Workload` as a dict), `inputs` (`"image_text"` or `"text"`),
            `checkpointing` (`bool`), `threads`; with `reference_port` (a path), the port's model is measured
            instead of ours (image+text only).
    """
    torch.set_num_threads(spec["threads"])
    workload = Workload(**{**spec["workload"], "decode_steps": tuple(spec["workload"]["decode_steps"])})
    port_module = None if spec.get("reference_port") is None else load_reference_port(Path(spec["reference_port"]))
    resettable = _reset_peak_rss()
    after_imports, _ = _rss_bytes()
    if port_module is not None:
        return _port_memory_step(port_module, spec, workload, resettable, after_imports)
    model = build_ofa(ofa_config(spec["size"])).train()
    if spec["checkpointing"]:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    if spec["inputs"] == "image_text":
        sizes = replace(workload, image_batch=workload.memory_image_batch, image_size=workload.memory_image_size)
        batch = image_text_batch(model.config, sizes)
    else:
        batch = text_batch(model.config, workload.batch, workload.source_length, workload.target_length)
    before_step, build_peak = _rss_bytes()
    _reset_peak_rss()
    # Gradients are dropped after the step, so every step has the same peak; one suffices.
    start = time.perf_counter()
    train_step(model, batch)
    seconds = time.perf_counter() - start
    _, step_peak = _rss_bytes()
    return {
        "peak_method": "VmHWM after clear_refs" if resettable else "ru_maxrss (peak not resettable)",
        "after_imports_bytes": after_imports,
        "before_step_bytes": before_step,
        "peak_bytes": max(build_peak, step_peak),
        "step_peak_bytes": step_peak,
        "step_seconds": seconds,
    }


def _port_memory_step(
    port_module: Any, spec: dict[str, Any], workload: Workload, resettable: bool, after_imports: int
) -> dict[str, Any]:
    """`memory_worker`'s measurement for the port's model: one image+text train step (no checkpointing)."""
    config = ofa_config(spec["size"])
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        port = port_module.OFAModel(port_config(port_module, config)).train()
    data = port_batch(
        config,
        workload.memory_image_batch,
        workload.memory_image_size,
        workload.image_text_length,
        workload.image_target_length,
    )
    before_step, build_peak = _rss_bytes()
    _reset_peak_rss()
    start = time.perf_counter()
    port_train_step(port, data["port"], data["labels"])
    seconds = time.perf_counter() - start
    _, step_peak = _rss_bytes()
    return {
        "peak_method": "VmHWM after clear_refs" if resettable else "ru_maxrss (peak not resettable)",
        "after_imports_bytes": after_imports,
        "before_step_bytes": before_step,
        "peak_bytes": max(build_peak, step_peak),
        "step_peak_bytes": step_peak,
        "step_seconds": seconds,
    }


def _run_memory_worker(
    bench: Bench, inputs: str, checkpointing: bool, reference_port: Path | None = None
) -> dict[str, Any]:
    spec = {
        "size": bench.size,
        "workload": asdict(bench.workload),
        "inputs": inputs,
        "checkpointing": checkpointing,
        "threads": bench.threads,
        "reference_port": None if reference_port is None else str(reference_port),
    }
    command = [sys.executable, str(Path(__file__).resolve()), "--memory-worker", json.dumps(spec)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"memory worker {spec} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench_checkpointing_memory(bench: Bench) -> dict[str, Any]:
    """Peak memory of a train step with gradient checkpointing / without (one fresh process each)."""
    mib = 2**20
    # The quick run measures the image+text workload only: every subprocess pays the imports again.
    workloads = ("image_text",) if bench.workload == WORKLOADS["quick"] else ("image_text", "text")
    results: dict[str, dict[str, Any]] = {}
    for inputs in workloads:
        runs = {flag: _run_memory_worker(bench, inputs, flag) for flag in (False, True)}
        total = {flag: r["peak_bytes"] - r["after_imports_bytes"] for flag, r in runs.items()}
        step = {flag: r["step_peak_bytes"] - r["before_step_bytes"] for flag, r in runs.items()}
        if min(total.values()) <= 0 or min(step.values()) <= 0:
            raise RuntimeError(f"no memory growth measured for {inputs}: {runs}")
        results[inputs] = {
            "ratio": round(total[True] / total[False], 4),
            "peak_mib_without": round(total[False] / mib, 1),
            "peak_mib_with": round(total[True] / mib, 1),
            "step_only_ratio": round(step[True] / step[False], 4),
            "step_peak_mib_without": round(step[False] / mib, 1),
            "step_peak_mib_with": round(step[True] / mib, 1),
            "model_and_batch_mib": round(
                (runs[False]["before_step_bytes"] - runs[False]["after_imports_bytes"]) / mib, 1
            ),
            "step_seconds_without": round(runs[False]["step_seconds"], 4),
            "step_seconds_with": round(runs[True]["step_seconds"], 4),
            "peak_method": runs[False]["peak_method"],
        }
    main_result = results["image_text"]
    details = {
        "method": (
            "resident memory in a fresh process per configuration: peak from after the imports to the end of one "
            "train step, minus the resident size after the imports (step_only: peak of the step minus the size "
            "before it, i.e. gradients and activations)"
        ),
        "image_batch": bench.workload.memory_image_batch,
        "image_size": bench.workload.memory_image_size,
        "text_batch": bench.workload.batch,
        "checkpointing": "model.activation_checkpointing_enable(use_reentrant=False)",
    }
    details.update(results)
    return figure(
        "checkpointing_memory",
        main_result["ratio"],
        main_result["step_seconds_without"],
        main_result["step_seconds_with"],
        details,
    )


# ----------------------------------------------------------------------------------------------------------------
# Figures: OFA against the original OFA port for transformers (--reference-port)
# ----------------------------------------------------------------------------------------------------------------

# The port's files the benchmark loads, from `transformers/src/transformers/models/ofa/` of OFA-Sys/OFA (branch
# `feature/add_transformers`).
PORT_FILES: tuple[str, ...] = ("configuration_ofa.py", "resnet.py", "modeling_ofa.py")

# Source patches that make the port import and build on transformers 5, applied to a temporary copy (the user's
# folder is left as it is): (file, old text, new text, why). A patch whose old text is absent is skipped, so a copy
# the user has already patched loads as well.
PORT_PATCHES: tuple[tuple[str, str, str, str], ...] = (
    (
        "configuration_ofa.py",
        'if self.forced_bos_token_id is None and kwargs.get("force_bos_token_to_be_generated", False):',
        'if kwargs.get("force_bos_token_to_be_generated", False) and getattr(self, "forced_bos_token_id", None) '
        "is None:",
        "transformers 5 configs no longer define forced_bos_token_id unless it is passed",
    ),
)


def _port_source_dir(path: Path) -> Path:
    """The folder with the port's files: `path` itself or `transformers/src/transformers/models/ofa` under it."""
    for candidate in (path, path / "transformers" / "src" / "transformers" / "models" / "ofa"):
        if all((candidate / name).is_file() for name in PORT_FILES):
            return candidate
    raise FileNotFoundError(
        f"--reference-port {path}: no {', '.join(PORT_FILES)} there or under transformers/src/transformers/models/ofa "
        "(a checkout of OFA-Sys/OFA, branch feature/add_transformers)"
    )


def load_reference_port(path: Path) -> Any:
    """Import the original port from a local copy as the module `ofa_reference_port` (with `OFAConfig`, `OFAModel`).

    Its relative imports of transformers (`from ...modeling_utils import ...`) become absolute and `PORT_PATCHES` are
    applied, in a temporary copy: nothing in `path` changes.
    """
    import importlib.util
    import re

    if "ofa_reference_port" in sys.modules:
        return sys.modules["ofa_reference_port"]
    source = _port_source_dir(path)
    package = Path(tempfile.mkdtemp(prefix="ofa_reference_port_")) / "ofa_reference_port"
    package.mkdir()
    for name in PORT_FILES:
        text = (source / name).read_text()
        text = re.sub(r"^from \.\.\.([\w.]*) import", r"from transformers.\1 import", text, flags=re.MULTILINE)
        for file, old, new, _ in PORT_PATCHES:
            if file == name:
                text = text.replace(old, new)
        (package / name).write_text(text)
    (package / "__init__.py").write_text(
        "from .configuration_ofa import OFAConfig\nfrom .modeling_ofa import OFAModel\n"
    )
    spec = importlib.util.spec_from_file_location(
        "ofa_reference_port", package / "__init__.py", submodule_search_locations=[str(package)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["ofa_reference_port"] = module
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its deprecation notices (meshgrid, GenerationMixin) are not ours to fix
        spec.loader.exec_module(module)
    return module


def port_config(port_module: Any, config: OFAConfig) -> Any:
    """The port's `OFAConfig` of the same model as `config`: the `PORT_CONFIG_FIELDS` (the fields both configs share,
    which the converter reads back) that the port's constructor names. Versions of the port differ in what it names,
    and one that sets a field itself (the decoder start id) would reject it as a duplicate through `**kwargs`."""
    accepted = inspect.signature(port_module.OFAConfig.__init__).parameters
    return port_module.OFAConfig(**{name: getattr(config, name) for name in PORT_CONFIG_FIELDS if name in accepted})


def port_pair(bench: Bench) -> tuple[nn.Module, OFAForConditionalGeneration]:
    """The port's `OFAModel` and ours with the same weights (built once per run).

    The port is initialized by its own code, its relative position tables are then drawn at random (they start at
    zero, which would hide a relative-bias mismatch), and its state dict is converted to ours with
    `convert_state_dict(..., "hf_port")` and loaded strictly.
    """
    if "port_pair" in bench.shared:
        return bench.shared["port_pair"]
    if bench.reference_port is None:
        raise Unavailable("pass --reference-port DIR (a local copy of OFA-Sys/OFA's transformers port)")
    port_module = load_reference_port(bench.reference_port)
    config = bench.config()
    port_settings = port_config(port_module, config)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        port = port_module.OFAModel(port_settings)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in port.named_parameters():
            if "rel_pos_table" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    ours = OFAForConditionalGeneration(config)
    ours.load_state_dict(convert_state_dict(port.state_dict(), "hf_port"), strict=True)
    bench.shared["port_pair"] = (port, ours)
    return port, ours


def port_batch(config: OFAConfig, batch: int, image_size: int, text_length: int, target_length: int) -> dict:
    """An image+text batch in both vocabularies of arguments: ours (`pixel_values`, `labels`) and the port's."""
    sizes = replace(
        WORKLOADS["full"],
        image_batch=batch,
        image_size=image_size,
        image_text_length=text_length,
        image_target_length=target_length,
    )
    ours = image_text_batch(config, sizes)
    # The port takes no encoder attention mask (padding is `input_ids == pad`), so every row is full here.
    ours["attention_mask"] = torch.ones_like(ours["attention_mask"])
    ours["input_ids"][ours["input_ids"] == config.pad_token_id] = config.eos_token_id + 1
    ours["input_ids"][:, -1] = config.eos_token_id
    ours["labels"][ours["labels"] == -100] = config.pad_token_id
    decoder_input_ids = torch.cat(
        [torch.full((batch, 1), config.decoder_start_token_id, dtype=torch.long), ours["labels"][:, :-1]], dim=1
    )
    port = {
        "input_ids": ours["input_ids"],
        "patch_images": ours["pixel_values"],
        "patch_masks": torch.ones(batch, dtype=torch.bool),
        "decoder_input_ids": decoder_input_ids,
    }
    return {"ours": ours, "port": port, "labels": ours["labels"]}


def port_train_step(port: nn.Module, inputs: dict[str, torch.Tensor], labels: torch.Tensor) -> None:
    """The port's forward (it returns the logits as `logits`), token cross-entropy, backward."""
    logits = port(**inputs).logits
    F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)).backward()
    port.zero_grad(set_to_none=True)


def bench_port_logits_parity(bench: Bench) -> dict[str, Any]:
    """Max abs difference of the logits of the port and ours (same weights, same image+text input, eval mode)."""
    w = bench.workload
    port, ours = port_pair(bench)
    port.eval(), ours.eval()
    data = port_batch(ours.config, 2, w.image_size, w.image_text_length, w.image_target_length)
    inputs = {k: v for k, v in data["ours"].items() if k != "labels"}
    with torch.no_grad():
        reference = port(**data["port"]).logits
        measured = ours(**inputs, decoder_input_ids=data["port"]["decoder_input_ids"]).logits
    diff = (reference - measured).abs().max().item()
    details = {"logits_shape": list(measured.shape), "max_abs_logit": round(reference.abs().max().item(), 4)}
    return figure("port_logits_parity", diff, None, None, details)


def bench_train_step_vs_port(bench: Bench) -> dict[str, Any]:
    """Forward+backward on image+text inputs: our time / the port's, same weights and batch."""
    w = bench.workload
    port, ours = port_pair(bench)
    port.train(), ours.train()
    data = port_batch(ours.config, w.port_batch, w.port_image_size, w.port_text_length, w.port_target_length)
    times = bench.times(
        {
            "ours": lambda: train_step(ours, data["ours"]),
            "port": lambda: port_train_step(port, data["port"], data["labels"]),
        }
    )
    measured, reference = median(times["ours"]), median(times["port"])
    details = {
        "batch": w.port_batch,
        "image_size": w.port_image_size,
        "text_length": w.port_text_length,
        "target_length": w.port_target_length,
        "ours_seconds": _summary(times["ours"]),
        "port_seconds": _summary(times["port"]),
        "cpu_time_value": bench.cpu_ratio("ours", "port"),
    }
    return figure("train_step_vs_port", measured / reference, reference, measured, details)


def port_generate(port: nn.Module, inputs: dict[str, torch.Tensor], num_beams: int, tokens: int) -> torch.Tensor:
    """Cached greedy or beam search with the port's own forward (its `generate` predates transformers 5's).

    Exactly `tokens` new tokens (`</s>` is kept out, as `min_new_tokens` does), beams expanded after the encoder as
    `generate` does, the cache reordered with the port's `_reorder_cache`; returns the best sequence of each row.
    """
    config = port.config
    encoder_inputs = {k: v for k, v in inputs.items() if k != "decoder_input_ids"}
    with torch.no_grad():
        encoder_outputs = port.encoder(**encoder_inputs)
        bsz = inputs["input_ids"].shape[0]
        if num_beams > 1:
            for key in ("last_hidden_state", "padding_mask", "position_embedding"):
                setattr(encoder_outputs, key, getattr(encoder_outputs, key).repeat_interleave(num_beams, dim=0))
        rows = bsz * num_beams
        tokens_so_far = torch.full((rows, 1), config.decoder_start_token_id, dtype=torch.long)
        scores = torch.zeros(bsz, num_beams)
        scores[:, 1:] = -float("inf")  # every beam starts as the same sequence: only the first may expand
        scores = scores.view(-1)
        past = None
        for _ in range(tokens):
            out = port(
                decoder_input_ids=tokens_so_far, encoder_outputs=encoder_outputs, past_key_values=past, use_cache=True
            )
            logits = out.logits[:, -1].float()
            logits[:, config.eos_token_id] = -float("inf")
            past = out.past_key_values
            if num_beams == 1:
                tokens_so_far = torch.cat([tokens_so_far, logits.argmax(-1, keepdim=True)], dim=1)
                continue
            vocab = logits.shape[-1]
            candidates = (scores[:, None] + logits.log_softmax(-1)).view(bsz, num_beams * vocab)
            scores, flat = candidates.topk(num_beams, dim=1)  # (B, K)
            beam_idx = (flat // vocab + torch.arange(bsz)[:, None] * num_beams).view(-1)
            scores = scores.view(-1)
            tokens_so_far = torch.cat([tokens_so_far[beam_idx], (flat % vocab).view(-1, 1)], dim=1)
            past = port._reorder_cache(past, beam_idx)
    return tokens_so_far.view(bsz, num_beams, -1)[:, 0]


def _port_generate_times(
    bench: Bench, data: dict, num_beams: int, tokens: int
) -> tuple[dict[str, list[float]], dict[str, float], bool]:
    """Interleaved `generate()` (ours) / `port_generate` rounds: wall seconds, median CPU seconds, and whether the
    best sequences agree."""
    port, ours = port_pair(bench)
    port.eval(), ours.eval()
    config = _generation_config(ours, num_beams, tokens)
    inputs = {k: v for k, v in data["ours"].items() if k != "labels"}
    produced: dict[str, torch.Tensor] = {}

    def run_ours() -> None:
        with torch.no_grad():
            produced["ours"] = ours.generate(**inputs, generation_config=config)

    def run_port() -> None:
        produced["port"] = port_generate(port, data["port"], num_beams, tokens)

    times = bench.times({"ours": run_ours, "port": run_port})
    cpu = {name: median(values) for name, values in bench.last_cpu.items()}
    return times, cpu, torch.equal(produced["ours"], produced["port"])


def bench_generate_vs_port(bench: Bench) -> dict[str, Any]:
    """`generate()` time, ours / the port's cached search: greedy and beam 5, image+text input, forced length; the
    value is the worse of the two modes."""
    w = bench.workload
    _, ours = port_pair(bench)
    data = port_batch(ours.config, w.generate_batch, w.image_size, w.image_text_length, 2)
    modes: dict[str, dict[str, Any]] = {}
    for mode, beams in (("greedy", 1), ("beam5", 5)):
        times, cpu, same = _port_generate_times(bench, data, beams, w.generate_tokens)
        modes[mode] = {
            "ratio": round(median(times["ours"]) / median(times["port"]), 4),
            "cpu_time_ratio": round(cpu["ours"] / cpu["port"], 4),
            "ours_seconds": _summary(times["ours"]),
            "port_seconds": _summary(times["port"]),
            "same_sequences": same,
        }
    details = {
        "batch": w.generate_batch,
        "image_size": w.image_size,
        "text_length": w.image_text_length,
        "new_tokens": w.generate_tokens,
        "port_search": "port_generate: the port's forward in a cached greedy / beam loop (no transformers generate)",
    }
    return _worst_mode_figure("generate_vs_port", modes, details, "port_seconds", "ours_seconds")


def bench_caption_throughput_vs_port(bench: Bench) -> dict[str, Any]:
    """Captioning throughput (images/s, beam 5, batch `caption_batch` at `port_image_size`): ours / the port's."""
    w = bench.workload
    _, ours = port_pair(bench)
    data = port_batch(ours.config, w.caption_batch, w.port_image_size, w.port_text_length, 2)
    few = replace(w, repeats=w.caption_repeats, warmup=min(w.warmup, 1))
    saved, bench.workload = bench.workload, few
    try:
        times, cpu, same = _port_generate_times(bench, data, 5, w.caption_tokens)
    finally:
        bench.workload = saved
    ours_s, port_s = median(times["ours"]), median(times["port"])
    details = {
        "batch": w.caption_batch,
        "image_size": w.port_image_size,
        "num_beams": 5,
        "new_tokens": w.caption_tokens,
        "rounds": w.caption_repeats,
        "ours_images_per_second": round(w.caption_batch / ours_s, 3),
        "port_images_per_second": round(w.caption_batch / port_s, 3),
        "ours_seconds": _summary(times["ours"]),
        "port_seconds": _summary(times["port"]),
        "same_sequences": same,
        "cpu_time_value": round(cpu["port"] / cpu["ours"], 4),
    }
    return figure("caption_throughput_vs_port", port_s / ours_s, port_s, ours_s, details)


def bench_train_memory_vs_port(bench: Bench) -> dict[str, Any]:
    """Peak resident memory of one image+text train step (`memory_image_batch` at `memory_image_size`): ours (with
    and without checkpointing) / the port's, each in a fresh process."""
    if bench.reference_port is None:
        raise Unavailable("pass --reference-port DIR (a local copy of OFA-Sys/OFA's transformers port)")
    mib = 2**20
    runs = {
        "ours": _run_memory_worker(bench, "image_text", False),
        "ours_checkpointed": _run_memory_worker(bench, "image_text", True),
        "port": _run_memory_worker(bench, "image_text", False, bench.reference_port),
    }
    step = {name: r["step_peak_bytes"] - r["before_step_bytes"] for name, r in runs.items()}
    total = {name: r["peak_bytes"] - r["after_imports_bytes"] for name, r in runs.items()}
    details = {
        "image_batch": bench.workload.memory_image_batch,
        "image_size": bench.workload.memory_image_size,
        "value_is": "step peak (gradients and activations) of ours / of the port",
        "step_peak_mib": {name: round(v / mib, 1) for name, v in step.items()},
        "peak_mib": {name: round(v / mib, 1) for name, v in total.items()},
        "step_seconds": {name: round(r["step_seconds"], 3) for name, r in runs.items()},
        "checkpointed_vs_port": round(step["ours_checkpointed"] / step["port"], 4),
    }
    return figure(
        "train_memory_vs_port",
        step["ours"] / step["port"],
        runs["port"]["step_seconds"],
        runs["ours"]["step_seconds"],
        details,
    )


def _decode_loop(model: nn.Module, encoder_outputs: Any, attention_mask: torch.Tensor, steps: int) -> None:
    """`steps` cached greedy decoding steps from the start token (the work of one generated sequence)."""
    tokens = torch.full((attention_mask.shape[0], 1), model.config.decoder_start_token_id, dtype=torch.long)
    cache = None
    for _ in range(steps):
        out = model(
            encoder_outputs=encoder_outputs,
            attention_mask=attention_mask,
            decoder_input_ids=tokens,
            cache=cache,
            use_cache=True,
        )
        tokens = out.logits[:, -1:].argmax(dim=-1)
        cache = getattr(out, CACHE_NAME)


def bench_compiled_vs_eager(bench: Bench) -> dict[str, Any]:
    """`torch.compile(model)` / eager: a text train step and a cached decoding loop (`decode_steps[0]` steps); the
    value is the train step's ratio. Compiling (the first call) is timed separately and left out of the ratios."""
    if not bench.compile:
        raise Unavailable("pass --compile (compiling the model takes minutes)")
    w = bench.workload
    model = bench.ofa()
    compiled = torch.compile(model, dynamic=True)
    train_batch = text_batch(model.config, w.batch, w.source_length, w.target_length)
    source = text_batch(model.config, w.decode_batch, w.source_length, 2)
    steps = w.decode_steps[0]
    results: dict[str, dict[str, Any]] = {}

    def compare(kind: str, eager_run: Callable[[], Any], compiled_run: Callable[[], Any]) -> None:
        start, cpu_start = time.perf_counter(), time.process_time()
        compiled_run()  # compiles
        compile_seconds, compile_cpu = time.perf_counter() - start, time.process_time() - cpu_start
        cpu: dict[str, list[float]] = {}
        times = interleaved_times({"compiled": compiled_run, "eager": eager_run}, w.compile_steps, 1, cpu)
        results[kind] = {
            "ratio": round(median(times["compiled"]) / median(times["eager"]), 4),
            "cpu_time_ratio": round(median(cpu["compiled"]) / median(cpu["eager"]), 4),
            "compiled_seconds": _summary(times["compiled"]),
            "eager_seconds": _summary(times["eager"]),
            "first_call_seconds": round(compile_seconds, 3),
            "first_call_cpu_seconds": round(compile_cpu, 3),
        }

    model.train()
    compare("train_step", lambda: train_step(model, train_batch), lambda: train_step(compiled, train_batch))
    model.eval()
    with torch.no_grad():
        encoder_outputs = model.get_encoder()(input_ids=source["input_ids"], attention_mask=source["attention_mask"])
        mask = source["attention_mask"]
        compare(
            "decode",
            lambda: _decode_loop(model, encoder_outputs, mask, steps),
            lambda: _decode_loop(compiled, encoder_outputs, mask, steps),
        )
    details = {
        "compile": "torch.compile(model, dynamic=True), default inductor backend",
        "train_batch": w.batch,
        "decode_batch": w.decode_batch,
        "decode_steps": steps,
        "cpu_time_value": results["train_step"]["cpu_time_ratio"],
    }
    details.update(results)
    return figure(
        "compiled_vs_eager",
        results["train_step"]["ratio"],
        results["train_step"]["eager_seconds"]["median"],
        results["train_step"]["compiled_seconds"]["median"],
        details,
    )


# ----------------------------------------------------------------------------------------------------------------
# Figures of the processor, the trainers, ONNX and int8
# ----------------------------------------------------------------------------------------------------------------


def _caption_texts() -> list[str]:
    subjects = ["a dog", "two cats", "a red car", "a man", "a small boat", "three birds", "a child", "an old bus"]
    actions = ["runs on", "sits near", "waits by", "looks at", "stands on", "drives past", "plays in", "rests under"]
    places = ["the beach", "a green field", "the city street", "a wooden table", "the river", "a snowy hill"]
    return [f"{s} {a} {p}" for s in subjects for a in actions for p in places]


def make_processor(image_size: int) -> Any:
    """An `OFAProcessor` over a demo tokenizer and `OFAImageProcessor(size=image_size)`."""
    from processing import OFAProcessor
    from processing.image import OFAImageProcessor
    from processing.text import train_demo_tokenizer

    tokenizer = train_demo_tokenizer(_caption_texts(), vocab_size=600)
    image_processor = OFAImageProcessor(size={"height": image_size, "width": image_size})
    return OFAProcessor(image_processor=image_processor, tokenizer=tokenizer)


def caption_rows(count: int, raw_size: tuple[int, int]) -> list[dict[str, Any]]:
    """Dataset-like rows: an encoded JPEG (as `datasets` stores images) and a caption."""
    import numpy as np
    import PIL.Image

    rng = np.random.default_rng(0)
    texts = _caption_texts()
    rows = []
    for i in range(count):
        # Smooth random content compresses like a photo; pure noise would make JPEG decoding unusually slow.
        small = rng.integers(0, 256, size=(raw_size[1] // 8, raw_size[0] // 8, 3), dtype=np.uint8)
        image = PIL.Image.fromarray(small).resize(raw_size, PIL.Image.BILINEAR)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=90)
        rows.append({"image": {"bytes": buffer.getvalue(), "path": None}, "caption": texts[i % len(texts)]})
    return rows


def _model_inputs(model: nn.Module, features: Any) -> dict[str, torch.Tensor]:
    """The processor's outputs that `model.forward` takes (labels among them)."""
    accepted = set(inspect.signature(model.forward).parameters)
    inputs = {k: v for k, v in dict(features).items() if k in accepted and isinstance(v, torch.Tensor)}
    if "labels" not in inputs:
        raise RuntimeError(f"OFAProcessor output has no labels (keys: {sorted(dict(features))})")
    return inputs


def bench_preprocess_vs_train(bench: Bench) -> dict[str, Any]:
    """Examples/s one processor worker (1 thread) prepares / examples/s the tiny model trains (AdamW steps)."""
    w = bench.workload
    processor = make_processor(w.image_size)
    rows = caption_rows(w.image_batch * 4, w.raw_image_size)
    batches = [rows[i : i + w.image_batch] for i in range(0, len(rows), w.image_batch)]
    first = processor(CAPTION_INSTRUCTION, batches[0], split="train")
    model = build_ofa(ofa_config("tiny", vocab_size=len(processor.tokenizer))).train()
    inputs = _model_inputs(model, first)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    cycle = itertools.cycle(batches)  # different rows each call, as a worker walking a dataset

    def prepare() -> None:
        # A DataLoader worker runs torch with one thread; so does this one.
        with num_threads(1):
            processor(CAPTION_INSTRUCTION, next(cycle), split="train")

    def train() -> None:
        model(**inputs).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    times = bench.times({"prepare": prepare, "train": train})
    prepare_s, train_s = median(times["prepare"]), median(times["train"])
    details = {
        "instruction": CAPTION_INSTRUCTION,
        "batch": w.image_batch,
        "raw_image_size": list(w.raw_image_size),
        "image_size": w.image_size,
        "preprocess_examples_per_second": round(w.image_batch / prepare_s, 2),
        "train_examples_per_second": round(w.image_batch / train_s, 2),
        "model": "tiny preset, AdamW step included",
        "cpu_time_value": bench.cpu_ratio("train", "prepare"),
    }
    return figure("preprocess_vs_train", train_s / prepare_s, train_s, prepare_s, details)


def bench_multitask_vs_trainer(bench: Bench) -> dict[str, Any]:
    """Steps/s of `MultiTaskTrainer` on one task / steps/s of a plain `Seq2SeqTrainer` on the same data."""
    from trainers import MultiTaskTrainer, Task

    try:
        import datasets
    except ImportError as err:
        raise Unavailable("the [train] extra (datasets) is not installed") from err
    from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments, TrainerCallback

    class StepClock(TrainerCallback):
        """Wall time between consecutive optimizer-step ends: data loading, forward, backward, update."""

        def __init__(self) -> None:
            self.seconds: list[float] = []
            self._last: float | None = None

        def on_train_begin(self, args, state, control, **kwargs):
            self._last = None  # the first step of a run includes set-up; it is not timed

        def on_step_end(self, args, state, control, **kwargs):
            now = time.perf_counter()
            if self._last is not None:
                self.seconds.append(now - self._last)
            self._last = now

    w = bench.workload
    processor = make_processor(w.image_size)
    rows = caption_rows(w.image_batch * (w.trainer_steps + 1), w.raw_image_size)
    dataset = datasets.Dataset.from_list(rows)
    base = build_ofa(ofa_config("tiny", vocab_size=len(processor.tokenizer)))
    with tempfile.TemporaryDirectory() as out_dir:
        args = Seq2SeqTrainingArguments(
            output_dir=out_dir,
            per_device_train_batch_size=w.image_batch,
            max_steps=w.trainer_steps,
            learning_rate=1e-4,
            report_to=[],
            save_strategy="no",
            logging_strategy="no",
            use_cpu=True,
            dataloader_num_workers=0,
            remove_unused_columns=False,
            disable_tqdm=True,
            seed=0,
        )
        clocks = {"plain": StepClock(), "multitask": StepClock()}
        plain = Seq2SeqTrainer(
            model=copy.deepcopy(base),
            args=args,
            train_dataset=dataset,
            data_collator=lambda batch: processor(CAPTION_INSTRUCTION, batch, split="train"),
            callbacks=[clocks["plain"]],
        )
        task = Task("caption", CAPTION_INSTRUCTION, train_dataset=dataset)
        multitask = MultiTaskTrainer(
            model=copy.deepcopy(base), processor=processor, tasks=[task], args=args, callbacks=[clocks["multitask"]]
        )
        # Whole runs alternate (A B B A ...); the per-step clock drops each run's first step.
        interleaved_times({"plain": plain.train, "multitask": multitask.train}, bench.workload.repeats, 0)
    plain_s, multitask_s = median(clocks["plain"].seconds), median(clocks["multitask"].seconds)
    details = {
        "instruction": CAPTION_INSTRUCTION,
        "batch": w.image_batch,
        "steps_per_run": w.trainer_steps,
        "plain_steps_per_second": round(1 / plain_s, 3),
        "multitask_steps_per_second": round(1 / multitask_s, 3),
        "plain_collator": "processor(instruction, rows) on the fly, as the multi-task path does",
    }
    return figure("multitask_vs_trainer", plain_s / multitask_s, plain_s, multitask_s, details)


def _min_new_tokens_processor(tokens: int, eos_token_id: int) -> Any:
    """Keeps `</s>` out of the first `tokens` generated tokens (after the start token), as `min_new_tokens` does."""
    from transformers import MinNewTokensLengthLogitsProcessor

    return MinNewTokensLengthLogitsProcessor(prompt_length_to_skip=1, min_new_tokens=tokens, eos_token_id=eos_token_id)


def bench_onnx_vs_torch(bench: Bench) -> dict[str, Any]:
    """CPU latency of greedy generation (batch 1): `modeling_ofa.onnx.OnnxOFA` on onnxruntime / torch fp32."""
    try:
        import onnxruntime
    except ImportError as err:
        raise Unavailable("onnxruntime is not installed") from err
    from modeling_ofa.onnx import OnnxOFA, export_onnx

    w = bench.workload
    model = bench.ofa().eval()
    config = model.config
    batch = text_batch(config, 1, w.source_length, 2)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    tokens = w.generate_tokens
    generation_config = _generation_config(model, 1, tokens)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = bench.threads
    outputs: dict[str, Any] = {}

    def run_torch() -> None:
        with torch.no_grad():
            outputs["torch"] = model.generate(**inputs, generation_config=generation_config)

    with tempfile.TemporaryDirectory() as out_dir:
        export_start = time.perf_counter()
        export_onnx(model, out_dir, encoders=("text",), with_code_masks=False)
        export_seconds = time.perf_counter() - export_start
        runner = OnnxOFA(out_dir, session_options=options)
        processor = _min_new_tokens_processor(tokens, config.eos_token_id)

        def run_onnx() -> None:
            outputs["onnx"] = runner.generate(**inputs, max_new_tokens=tokens, logits_processor=processor)

        times = bench.times({"torch": run_torch, "onnx": run_onnx})
    onnx_ids = torch.from_numpy(outputs["onnx"])
    if onnx_ids.shape != outputs["torch"].shape:
        raise RuntimeError(f"ONNX generated shape {tuple(onnx_ids.shape)}, torch {tuple(outputs['torch'].shape)}")
    measured, reference = median(times["onnx"]), median(times["torch"])
    details = {
        "what": "latency ratio, lower is faster",
        "export": "export_onnx(model, dir, encoders=('text',), with_code_masks=False)",
        "export_seconds": round(export_seconds, 2),
        "new_tokens": tokens,
        "source_length": w.source_length,
        "greedy_token_agreement": round((onnx_ids == outputs["torch"]).float().mean().item(), 4),
        "onnxruntime": onnxruntime.__version__,
        "cpu_time_value": bench.cpu_ratio("onnx", "torch"),
    }
    return figure("onnx_vs_torch", measured / reference, reference, measured, details)


def _quantize_int8(model: OFAForConditionalGeneration) -> tuple[nn.Module, str]:
    """The package's `quantize_dynamic_int8` and its description."""
    from modeling_ofa.quantization import quantize_dynamic_int8

    return quantize_dynamic_int8(model), "modeling_ofa.quantization.quantize_dynamic_int8 (per-channel, lm_head too)"


def bench_int8_vs_fp32(bench: Bench) -> dict[str, Any]:
    """CPU latency of greedy `generate()` (batch 1): dynamic int8 Linear layers / fp32."""
    w = bench.workload
    fp32 = bench.ofa().eval()
    int8, method = _quantize_int8(fp32)
    batch = text_batch(fp32.config, 1, w.source_length, 2)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    config = _generation_config(fp32, 1, w.generate_tokens)
    outputs: dict[str, torch.Tensor] = {}

    def run(name: str, model: nn.Module) -> None:
        with torch.no_grad():
            outputs[name] = model.generate(**inputs, generation_config=config)

    times = bench.times({"fp32": lambda: run("fp32", fp32), "int8": lambda: run("int8", int8)})
    agreement = (outputs["fp32"] == outputs["int8"]).float().mean().item()
    measured, reference = median(times["int8"]), median(times["fp32"])
    details = {
        "what": "latency ratio, lower is faster",
        "quantization": method,
        "quantized_engine": torch.backends.quantized.engine,
        "new_tokens": w.generate_tokens,
        "source_length": w.source_length,
        "greedy_token_agreement": round(agreement, 4),
        "cpu_time_value": bench.cpu_ratio("int8", "fp32"),
        "note": "random weights: agreement only shows the quantized model still decodes",
    }
    return figure("int8_vs_fp32", measured / reference, reference, measured, details)


# ----------------------------------------------------------------------------------------------------------------
# Figures: image generation
# ----------------------------------------------------------------------------------------------------------------

# OFA's text-to-image prompt (its target is an image of VQ codes); the text side of `image_generation` decodes text
# after the same prompt.
IMAGE_PROMPT = "what is the complete image? caption: [TEXT:caption]"

# Sizes `image_generation` measures: the offline demo's model and the run's size.
IMAGE_GENERATION_SIZES: tuple[str, ...] = ("demo",)


def image_generation_model(size: str, grid: int, vocab_size: int) -> OFAForConditionalGeneration:
    """A random OFA of preset `size` whose decoder generates `grid` x `grid` codes (`code_image_size = 8 * grid`,
    its 2-D position table at least `grid` wide). The demo model keeps its tokenizer's vocabulary (`vocab_size`), as
    the demo builds it; the published sizes keep OFA's."""
    preset = ofa_config(size)
    overrides: dict[str, Any] = {"code_image_size": 8 * grid, "image_bucket_size": max(preset.image_bucket_size, grid)}
    if size == "demo":
        overrides["vocab_size"] = vocab_size
    return build_ofa(ofa_config(size, **overrides)).eval()


def image_generation_calls(processor: Any, count: int) -> dict[str, tuple[Any, dict[str, Any]]]:
    """`(inputs, generate kwargs)` of one image of `count` codes and of `count` text tokens after the same prompt,
    both from `AnswerGenerator.call_kwargs` (the code constraint, `code_masks` from the collator, OFA's top-k
    sampling) with exactly `count` new tokens."""
    from processing.answers import IMAGE_GENERATION_DEFAULTS, AnswerGenerator, generation_inputs

    row = {"caption": _caption_texts()[0]}
    settings = {**IMAGE_GENERATION_DEFAULTS, "num_return_sequences": 1, "min_new_tokens": count}
    calls = {}
    for name, target in (("code", f"[IMAGE_CODE:image,length={count}]"), ("text", "[TEXT:text]")):
        generator = AnswerGenerator(processor, f"{IMAGE_PROMPT} -> {target}")
        examples = [generation_inputs(example) for example in generator.encode([row])]
        (group,) = generator.groups(examples)
        kwargs = generator.call_kwargs(group, settings)
        # The code budget is the codes and their EOS; both sides stop after `count` tokens, so they run as many steps.
        kwargs["max_new_tokens"] = count
        calls[name] = (processor.collate(examples), kwargs)
    return calls


def bench_image_generation(bench: Bench) -> dict[str, Any]:
    """Images/s of generating one image of `image_code_grid`² codes (cached, top-k sampling as OFA does) and its
    per-token time / that of as many text tokens after the same prompt, at the demo size and the run's; the value is
    the worse size's ratio."""
    w = bench.workload
    grid = w.image_code_grid
    count = grid * grid
    processor = make_processor(w.image_size)
    calls = image_generation_calls(processor, count)
    modes: dict[str, dict[str, Any]] = {}
    few = replace(w, repeats=w.image_repeats, warmup=min(w.warmup, 1))
    for size in dict.fromkeys((*IMAGE_GENERATION_SIZES, bench.size)):
        model = image_generation_model(size, grid, len(processor.tokenizer))
        produced: dict[str, torch.Tensor] = {}

        def run(name: str, model: nn.Module = model, produced: dict[str, torch.Tensor] = produced) -> None:
            inputs, kwargs = calls[name]
            with torch.no_grad():
                produced[name] = model.generate(**inputs, **kwargs)

        saved, bench.workload = bench.workload, few
        try:
            times = bench.times({"code": lambda: run("code"), "text": lambda: run("text")})
        finally:
            bench.workload = saved
        for name, ids in produced.items():
            if ids.shape != (1, 1 + count):
                raise RuntimeError(f"{size}: {name} generation made {tuple(ids.shape)} ids, not (1, {1 + count})")
        if not bool(processor.vocab.is_code(produced["code"][:, 1:]).all()):
            raise RuntimeError(f"{size}: the image generation produced tokens that are not codes")
        code_s, text_s = median(times["code"]), median(times["text"])
        code_cpu = median(bench.last_cpu["code"])
        modes[size] = {
            "ratio": round(code_s / text_s, 4),
            "cpu_time_ratio": bench.cpu_ratio("code", "text"),
            "images_per_second": round(1 / code_s, 4),
            "images_per_cpu_second": round(1 / code_cpu, 4),
            "code_ms_per_token": round(1000 * code_s / count, 3),
            "text_ms_per_token": round(1000 * text_s / count, 3),
            "code_seconds": _summary(times["code"]),
            "text_seconds": _summary(times["text"]),
            "parameters": num_parameters(model),
            "vocab_size": model.config.vocab_size,
        }
        del model
        gc.collect()
    details = {
        "grid": [grid, grid],
        "new_tokens": count,
        "code_image_size": 8 * grid,
        "rounds": w.image_repeats,
        "prompt": IMAGE_PROMPT,
        "generation": "AnswerGenerator.call_kwargs of an IMAGE_CODE target (code constraint, code_masks) and of a "
        "TEXT target after the same prompt; top-k 256 sampling, one sequence, min_new_tokens = max_new_tokens",
        "weights": "random: the work of a step does not depend on the weights",
    }
    return _worst_mode_figure("image_generation", modes, details, "text_seconds", "code_seconds")


# ----------------------------------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------------------------------

BENCHMARKS: dict[str, Callable[[Bench], dict[str, Any]]] = {
    "train_step_vs_bart": bench_train_step_vs_bart,
    "decode_flatness": bench_decode_flatness,
    "generate_vs_bart": bench_generate_vs_bart,
    "blocked_head_vs_plain": bench_blocked_head_vs_plain,
    "image_stem_share": bench_image_stem_share,
    "preprocess_vs_train": bench_preprocess_vs_train,
    "moe_modality_vs_dense": lambda bench: bench_moe(bench, "modality"),
    "moe_topk_vs_dense": lambda bench: bench_moe(bench, "topk"),
    "mfu": bench_mfu,
    "checkpointing_memory": bench_checkpointing_memory,
    "multitask_vs_trainer": bench_multitask_vs_trainer,
    "onnx_vs_torch": bench_onnx_vs_torch,
    "int8_vs_fp32": bench_int8_vs_fp32,
    "image_generation": bench_image_generation,
    "port_logits_parity": bench_port_logits_parity,
    "train_step_vs_port": bench_train_step_vs_port,
    "generate_vs_port": bench_generate_vs_port,
    "caption_throughput_vs_port": bench_caption_throughput_vs_port,
    "train_memory_vs_port": bench_train_memory_vs_port,
    "compiled_vs_eager": bench_compiled_vs_eager,
}


def run_benchmarks(names: list[str], bench: Bench, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Measure the named figures in order; a figure that raises becomes an `error: ...` record."""
    unknown = [name for name in names if name not in BENCHMARKS]
    if unknown:
        raise ValueError(f"unknown benchmarks {unknown}; choose among {list(BENCHMARKS)}")
    figures: dict[str, Any] = {}
    for name in names:
        start = time.perf_counter()
        try:
            # Libraries print (Trainer's final metrics, exporters); stdout is reserved for the JSON object.
            with contextlib.redirect_stdout(sys.stderr):
                figures[name] = BENCHMARKS[name](bench)
        except Unavailable as reason:
            figures[name] = not_measured(name, f"unavailable: {reason}")
        except Exception as err:  # a broken figure must not hide the others; it is reported and fails the run
            details = {"traceback": traceback.format_exc(limit=6)}
            figures[name] = not_measured(name, f"error: {type(err).__name__}: {err}", details)
        if log is not None:
            log(f"{name}: {figures[name]['status']} ({time.perf_counter() - start:.1f} s)")
    return figures


def format_table(figures: dict[str, Any]) -> str:
    """A fixed-width table of the figures, for people."""
    header = ("figure", "value", "target", "ok", "measured s", "reference s", "status")
    lines = []
    for name, record in figures.items():
        target = record["target"]
        meets = record["meets_target"]
        lines.append(
            (
                name,
                "-" if record["value"] is None else f"{record['value']:.3f}",
                "-" if target is None else f"{target['op']} {target['value']}",
                "-" if meets is None else ("yes" if meets else "NO"),
                "-" if record["measured_seconds"] is None else f"{record['measured_seconds']:.4f}",
                "-" if record["reference_seconds"] is None else f"{record['reference_seconds']:.4f}",
                record["status"] if len(record["status"]) <= 70 else record["status"][:67] + "...",
            )
        )
    widths = [max(len(row[i]) for row in [header, *lines]) for i in range(len(header))]
    render = lambda row: "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()  # noqa: E731
    return "\n".join([render(header), render(tuple("-" * w for w in widths)), *map(render, lines)])


def _parse_only(value: str) -> list[str]:
    names = [name.strip() for name in value.split(",") if name.strip()]
    unknown = [name for name in names if name not in BENCHMARKS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown benchmarks {unknown}; choose among {', '.join(BENCHMARKS)}")
    return names


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, measure, print the JSON object (stdout) and the table (stderr).

    Args:
        argv: command-line arguments (defaults to `sys.argv[1:]`).

    Returns:
        The exit code: 0, or 1 if a figure errored.
    """
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", type=_parse_only, help=f"comma-separated figures (default all): {list(BENCHMARKS)}")
    parser.add_argument("--quick", action="store_true", help="small shapes and few rounds (a smoke run)")
    parser.add_argument("--size", choices=SIZES, default=None, help="OFA preset (default: base; tiny with --quick)")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds per figure (default per workload)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed rounds per figure (default per workload)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: available cores)")
    parser.add_argument("--json", type=Path, default=None, help="also write the JSON object to this file")
    parser.add_argument(
        "--reference-port",
        type=Path,
        default=None,
        metavar="DIR",
        help="a local copy of the original OFA port for transformers (OFA-Sys/OFA, branch feature/add_transformers: "
        "the repository or its transformers/src/transformers/models/ofa folder), for the *_vs_port figures",
    )
    parser.add_argument("--compile", action="store_true", help="also measure compiled_vs_eager (takes minutes)")
    parser.add_argument("--memory-worker", default=None, help=argparse.SUPPRESS)  # internal: one memory subprocess
    args = parser.parse_args(argv)

    if args.memory_worker is not None:
        print(json.dumps(memory_worker(json.loads(args.memory_worker))))
        return 0

    workload = WORKLOADS["quick" if args.quick else "full"]
    if args.repeats is not None:
        if args.repeats < 1:
            parser.error(f"--repeats must be >= 1, got {args.repeats}")
        workload = replace(workload, repeats=args.repeats)
    if args.warmup is not None:
        if args.warmup < 0:
            parser.error(f"--warmup must be >= 0, got {args.warmup}")
        workload = replace(workload, warmup=args.warmup)
    threads = args.threads or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
    if threads < 1:
        parser.error(f"--threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)
    size = args.size or ("tiny" if args.quick else "base")
    names = args.only or list(BENCHMARKS)

    if args.reference_port is not None:
        try:
            _port_source_dir(args.reference_port)
        except FileNotFoundError as err:
            parser.error(str(err))
    bench = Bench(size, workload, threads, args.reference_port, args.compile)
    started = time.perf_counter()
    figures = run_benchmarks(names, bench, log=lambda line: print(line, file=sys.stderr, flush=True))
    report = {
        "machine": machine_info(threads),
        "settings": {
            "size": size,
            "quick": args.quick,
            "workload": asdict(workload),
            "reference_port": None if args.reference_port is None else str(args.reference_port),
            "figures": names,
            "wall_seconds": round(time.perf_counter() - started, 1),
        },
        "figures": figures,
    }
    text = json.dumps(report, indent=2)
    if args.json is not None:
        args.json.write_text(text + "\n")
    print(text)
    print(format_table(figures), file=sys.stderr)
    return 1 if any(record["status"].startswith("error") for record in figures.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
