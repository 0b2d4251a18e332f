"""Benchmark OFA against references measured beside it, in one process and one run.

Example:
    python scripts/benchmark.py                       # every figure, base size
    python scripts/benchmark.py --quick --size tiny   # a short run on small shapes
    python scripts/benchmark.py --only train_step_vs_bart,decode_flatness --json out.json

Timings alone are meaningless on a shared machine, so every figure is a ratio against a reference timed in the same
run: transformers' `BartForConditionalGeneration` of the same dimensions, the dense model for mixture-of-experts,
a large fp32 matmul for the machine's peak, OFA's own early decoding steps for decode flatness.

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
    * Figures whose prerequisites are missing (a module not written yet, an optional dependency) report
      `{"value": null, "status": "unavailable: <reason>"}` instead of failing.

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
from torch import nn

# Run from a checkout without installing: the packages sit at the repository root, one level above this file.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import transformers  # noqa: E402
from transformers import BartConfig, BartForConditionalGeneration, GenerationConfig  # noqa: E402

from modeling_ofa import CACHE_NAME, OFAConfig, OFAForConditionalGeneration  # noqa: E402

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
    "train_step_vs_bart": ("<=", 1.10),
    "decode_flatness": ("<=", 1.3),
    "generate_vs_bart": (">=", 0.9),
    "image_stem_share": None,
    "preprocess_vs_train": (">=", 5.0),
    "moe_modality_vs_dense": ("<=", 1.15),
    "moe_topk_vs_dense": ("<=", 1.3),
    "mfu": (">=", 0.4),
    "checkpointing_memory": ("<=", 0.6),
    "multitask_vs_trainer": (">=", 0.95),
    "onnx_vs_torch": None,
    "int8_vs_fp32": None,
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
        repeats=1,
        warmup=1,
    ),
}

# Half-window (in steps) around each compared decode step: the per-step time is the median over the window.
DECODE_WINDOW = 2


class Unavailable(Exception):
    """A figure cannot be measured yet (a module not written, an optional dependency missing)."""


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
    """

    def __init__(self, size: str, workload: Workload, threads: int) -> None:
        if size not in SIZES:
            raise ValueError(f"size {size!r} is not one of {list(SIZES)}")
        self.size = size
        self.workload = workload
        self.threads = threads
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
    worst = min(modes, key=lambda mode: modes[mode]["ratio"])
    details = {
        "batch": w.generate_batch,
        "new_tokens": tokens,
        "source_length": w.source_length,
        "worst_mode": worst,
        "cpu_time_value": min(mode["cpu_time_ratio"] for mode in modes.values()),
    }
    details.update(modes)
    return figure(
        "generate_vs_bart",
        modes[worst]["ratio"],
        modes[worst]["bart_seconds"]["median"],
        modes[worst]["ofa_seconds"]["median"],
        details,
    )


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
            `checkpointing` (`bool`), `threads`.
    """
    torch.set_num_threads(spec["threads"])
    workload = Workload(**{**spec["workload"], "decode_steps": tuple(spec["workload"]["decode_steps"])})
    resettable = _reset_peak_rss()
    after_imports, _ = _rss_bytes()
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


def _run_memory_worker(bench: Bench, inputs: str, checkpointing: bool) -> dict[str, Any]:
    spec = {
        "size": bench.size,
        "workload": asdict(bench.workload),
        "inputs": inputs,
        "checkpointing": checkpointing,
        "threads": bench.threads,
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
# Figures that need pieces still being written (guarded)
# ----------------------------------------------------------------------------------------------------------------


def _import_processor() -> type:
    try:
        from processing import OFAProcessor
    except ImportError:
        try:
            from processing.processing_ofa import OFAProcessor
        except ImportError as err:
            raise Unavailable(f"processing.OFAProcessor is not importable ({err})") from err
    parameters = [
        p
        for p in inspect.signature(OFAProcessor.__call__).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    if len(parameters) < 3:  # self, instruction, rows
        raise Unavailable("OFAProcessor.__call__ does not take (instruction, rows) yet")
    return OFAProcessor


def _caption_texts() -> list[str]:
    subjects = ["a dog", "two cats", "a red car", "a man", "a small boat", "three birds", "a child", "an old bus"]
    actions = ["runs on", "sits near", "waits by", "looks at", "stands on", "drives past", "plays in", "rests under"]
    places = ["the beach", "a green field", "the city street", "a wooden table", "the river", "a snowy hill"]
    return [f"{s} {a} {p}" for s in subjects for a in actions for p in places]


def make_processor(image_size: int) -> Any:
    """An `OFAProcessor` over a demo tokenizer and `OFAImageProcessor(size=image_size)`; `Unavailable` if absent."""
    processor_class = _import_processor()
    from processing.image import OFAImageProcessor
    from processing.text import train_demo_tokenizer

    tokenizer = train_demo_tokenizer(_caption_texts(), vocab_size=600)
    image_processor = OFAImageProcessor(size={"height": image_size, "width": image_size})
    try:
        return processor_class(image_processor=image_processor, tokenizer=tokenizer)
    except TypeError as err:
        raise Unavailable(f"OFAProcessor(image_processor=..., tokenizer=...) is not supported yet ({err})") from err


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
    """The processor's outputs that `model.forward` takes; `Unavailable` if no labels come out."""
    accepted = set(inspect.signature(model.forward).parameters)
    inputs = {k: v for k, v in dict(features).items() if k in accepted and isinstance(v, torch.Tensor)}
    if "labels" not in inputs:
        raise Unavailable(f"OFAProcessor output has no labels (keys: {sorted(dict(features))})")
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
    try:
        from trainers import MultiTaskTrainer, Task
    except ImportError as err:
        raise Unavailable(f"trainers.MultiTaskTrainer / trainers.Task are not importable ({err})") from err
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
    try:
        from modeling_ofa.onnx import OnnxOFA, export_onnx
    except ImportError as err:
        raise Unavailable(f"modeling_ofa.onnx (export_onnx, OnnxOFA) is not importable ({err})") from err
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
    """The package's `quantize_dynamic_int8` where it exists, else torch's dynamic quantization of `nn.Linear`."""
    try:
        from modeling_ofa.quantization import quantize_dynamic_int8
    except ImportError:
        with warnings.catch_warnings():
            # torch marks eager quantization deprecated in favour of torchao; it still works and needs nothing else.
            warnings.simplefilter("ignore", (DeprecationWarning, UserWarning))
            from torch.ao.quantization import quantize_dynamic

            quantized = quantize_dynamic(copy.deepcopy(model), {nn.Linear}, dtype=torch.qint8)
        return quantized, "torch.ao.quantization.quantize_dynamic({nn.Linear}, qint8)"
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
# Driver
# ----------------------------------------------------------------------------------------------------------------

BENCHMARKS: dict[str, Callable[[Bench], dict[str, Any]]] = {
    "train_step_vs_bart": bench_train_step_vs_bart,
    "decode_flatness": bench_decode_flatness,
    "generate_vs_bart": bench_generate_vs_bart,
    "image_stem_share": bench_image_stem_share,
    "preprocess_vs_train": bench_preprocess_vs_train,
    "moe_modality_vs_dense": lambda bench: bench_moe(bench, "modality"),
    "moe_topk_vs_dense": lambda bench: bench_moe(bench, "topk"),
    "mfu": bench_mfu,
    "checkpointing_memory": bench_checkpointing_memory,
    "multitask_vs_trainer": bench_multitask_vs_trainer,
    "onnx_vs_torch": bench_onnx_vs_torch,
    "int8_vs_fp32": bench_int8_vs_fp32,
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

    bench = Bench(size, workload, threads)
    started = time.perf_counter()
    figures = run_benchmarks(names, bench, log=lambda line: print(line, file=sys.stderr, flush=True))
    report = {
        "machine": machine_info(threads),
        "settings": {
            "size": size,
            "quick": args.quick,
            "workload": asdict(workload),
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
