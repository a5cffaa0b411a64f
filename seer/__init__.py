"""seer: a fast inference engine and server for vision-language models and LLMs."""

from ._malloc import limit_arenas as _limit_arenas

_limit_arenas()

from .config import (ChatTemplateConfig, EngineConfig, GenerationConfig, PytorchEngineConfig,
                     TurbomindEngineConfig, VisionConfig)
from .llm import LLM, GuidedDecodingParams, SamplingParams, StructuredOutputsParams
from .pipeline import Pipeline, Response, Session, pipeline

__version__ = "0.1.0"

__all__ = [
    "pipeline", "Pipeline", "Response", "Session", "GenerationConfig", "EngineConfig",
    "TurbomindEngineConfig", "PytorchEngineConfig", "VisionConfig", "ChatTemplateConfig", "LLM",
    "SamplingParams", "StructuredOutputsParams", "GuidedDecodingParams", "__version__",
]
