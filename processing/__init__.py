"""Instruction grammar, per-modality preprocessors and `OFAProcessor`.

Importing this package registers `OFAProcessor`, `OFAImageProcessor` and `OFAAudioFeatureExtractor` with the
transformers Auto classes for `model_type="ofa"`, and for `register_for_auto_class`: `save_pretrained` writes their
code and an `auto_map` into the folder, so `AutoProcessor.from_pretrained(folder, trust_remote_code=True)` works where
this package is not installed (without either, transformers refuses to load the folder instead of returning a bare
tokenizer).
"""

from transformers import AutoFeatureExtractor, AutoImageProcessor, AutoProcessor

from modeling_ofa import OFAConfig

from .audio import OFAAudioFeatureExtractor, decode_audio, resample_waveform, undecoded_audio
from .closed_set import CandidateTrie, ClosedSetLogitsProcessor, build_answer_trie, closed_set_prefix_allowed_tokens_fn
from .collator import collate_examples
from .image import OFAImageProcessor, load_image
from .instruction import (
    ATTRIBUTES,
    MODALITIES,
    AttributeSpec,
    InstructionError,
    RepeatGroup,
    Slot,
    TaskPlan,
    Template,
    parse_instruction,
)
from .location import (
    bins_to_box,
    bins_to_boxes,
    box_to_bins,
    box_to_tokens,
    boxes_to_bins,
    parse_bin_token,
    tokens_to_box,
)
from .motion import MotionPreprocessor
from .pipeline import OFAInstructionPipeline
from .processing_ofa import ExampleError, OFAProcessor
from .struct import StructPreprocessor
from .text import OFAVocab, TextPreprocessor, add_ofa_tokens, code_token, train_demo_tokenizer
from .video import VideoPreprocessor, sample_frame_indices

__all__ = [
    "ATTRIBUTES",
    "MODALITIES",
    "AttributeSpec",
    "CandidateTrie",
    "ClosedSetLogitsProcessor",
    "ExampleError",
    "InstructionError",
    "MotionPreprocessor",
    "OFAAudioFeatureExtractor",
    "OFAImageProcessor",
    "OFAInstructionPipeline",
    "OFAProcessor",
    "OFAVocab",
    "RepeatGroup",
    "Slot",
    "StructPreprocessor",
    "TaskPlan",
    "Template",
    "TextPreprocessor",
    "VideoPreprocessor",
    "add_ofa_tokens",
    "bins_to_box",
    "bins_to_boxes",
    "box_to_bins",
    "box_to_tokens",
    "boxes_to_bins",
    "build_answer_trie",
    "closed_set_prefix_allowed_tokens_fn",
    "code_token",
    "collate_examples",
    "decode_audio",
    "load_image",
    "parse_bin_token",
    "parse_instruction",
    "resample_waveform",
    "sample_frame_indices",
    "tokens_to_box",
    "train_demo_tokenizer",
    "undecoded_audio",
]

AutoImageProcessor.register(OFAConfig, image_processor_classes={"pil": OFAImageProcessor}, exist_ok=True)
AutoFeatureExtractor.register(OFAConfig, OFAAudioFeatureExtractor, exist_ok=True)
AutoProcessor.register(OFAConfig, OFAProcessor, exist_ok=True)
OFAProcessor.register_for_auto_class("AutoProcessor")
OFAImageProcessor.register_for_auto_class("AutoImageProcessor")
OFAAudioFeatureExtractor.register_for_auto_class("AutoFeatureExtractor")
