"""Shared fixtures: tiny OFA configs that run on a CPU in milliseconds."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import settings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Two threads on the two cores CI has; one per worker under pytest-xdist (`-n 2`), where the workers already fill
# the cores and a second thread each would only make them wait on each other.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)

# In CI the property tests draw the same examples every run, so a submission's result does not depend on luck;
# locally they explore new examples each run.
settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


def tiny_config_kwargs(**overrides) -> dict:
    """Arguments of a tiny OFAConfig (d_model 32, 2+2 layers, resnet18 stem, 120-token vocabulary)."""
    kwargs = dict(
        vocab_size=120,
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=64,
        resnet_type="resnet18",
        token_bucket_size=16,
        image_bucket_size=8,
        code_image_size=32,
        dropout=0.0,
    )
    kwargs.update(overrides)
    return kwargs


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module's tests: their models are tiny, so thread synchronisation costs more than it
    saves (5-30x more when other processes share the cores: two threads wait on each other at every small matmul).
    Use it with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def perturb_weights(model, seed: int | None = None):
    """Move a random model's weights away from their trivial initial values (relative tables at zero, unit head
    scales and LayerNorms, small linear maps), so that every path of the graph matters and greedy outputs vary:
    a freshly initialized OFA repeats one token forever, and a test on it cannot tell a broken cache from a working
    one. The ResNet stem keeps its calibrated scale. With `seed`, the noise is drawn from that seed; without, from
    the current random state."""
    import torch

    if seed is not None:
        torch.manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "embed_images" in name:
                continue
            if "rel_pos_table" in name or name.endswith("c_attn"):
                param.add_(torch.randn_like(param) * 0.5)
            elif param.dim() == 2 and "embed" not in name:
                param.normal_(0.0, 2.0 * param.shape[1] ** -0.5)  # a gain of 2 keeps greedy outputs from repeating
            elif param.dim() == 2:
                param.normal_(0.0, 0.1)
            else:
                param.add_(torch.randn_like(param) * 0.2)
    return model


def cached_step_logits(model, encoder_outputs, decoder_ids, **kwargs):
    """Logits of every decoder position from one cached call per position, as `generate` runs the decoder: (B, T, V).
    `kwargs` go to every call (e.g. `code_masks`). Call under `torch.no_grad()` where gradients are not wanted."""
    from modeling_ofa import CACHE_NAME

    cache, steps = None, []
    for t in range(decoder_ids.shape[1]):
        out = model(
            encoder_outputs=encoder_outputs,
            decoder_input_ids=decoder_ids[:, t : t + 1],
            cache=cache,
            use_cache=True,
            **kwargs,
        )
        cache = getattr(out, CACHE_NAME)
        steps.append(out.logits)
    return torch.cat(steps, dim=1)


def assert_checkpointed_stem_matches(plain, checkpointed) -> None:
    """Run a ResNet stem once plainly and once (a copy) with non-reentrant gradient checkpointing, in train mode
    under the same seed: outputs, gradients and buffers (BatchNorm statistics) must be bit-identical."""
    checkpointed.gradient_checkpointing = True
    checkpointed._gradient_checkpointing_func = lambda fn, *args: torch.utils.checkpoint.checkpoint(
        fn, *args, use_reentrant=False
    )
    pixels = torch.randn(2, 3, 32, 32)
    outputs = []
    for stem in (plain, checkpointed):
        torch.manual_seed(4)
        out = stem(pixels)
        out.square().mean().backward()
        outputs.append(out)
    assert torch.equal(outputs[0], outputs[1])
    for (name, p), q in zip(plain.named_parameters(), checkpointed.parameters()):
        assert torch.equal(p.grad, q.grad), name
    for (name, a), b in zip(plain.named_buffers(), checkpointed.buffers()):
        assert torch.equal(a, b), name


@pytest.fixture
def tiny_config():
    from modeling_ofa import OFAConfig

    return OFAConfig(**tiny_config_kwargs())


DEMO_SMOKE_OVERRIDES = [
    'data.demo.sizes={"train": 24, "validation": 4, "test": 4}',
    "tokenizer.demo.vocab_size=500",
    "training.max_steps=6",
    "training.eval_steps=6",
    "training.save_steps=6",
    "training.logging_steps=2",
    "training.per_device_train_batch_size=4",
    "training.disable_tqdm=true",
    'text_to_image={"train": 16, "test": 4, "vq_steps": 2, "num_candidates": 2, "grid": 4}',
]


@pytest.fixture(scope="session")
def demo_output(tmp_path_factory):
    """A shortened run of the demo config (every task, a few steps), shared by the tests that need a trained folder."""
    from trainers.recipe import load_config, run

    root = tmp_path_factory.mktemp("demo")
    config = load_config(None, [*DEMO_SMOKE_OVERRIDES, f"output_dir={root / 'outputs' / 'demo'}"])
    config["data"]["demo"]["root"] = str(root / "demo_data")
    results = run(config)
    return root / "outputs" / "demo", results
