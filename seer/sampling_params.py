"""vLLM's ``vllm.sampling_params`` names, so that ``from vllm.sampling_params import X`` ports by
changing ``vllm`` to ``seer``."""

from .llm import GuidedDecodingParams, SamplingParams, StructuredOutputsParams

__all__ = ["SamplingParams", "StructuredOutputsParams", "GuidedDecodingParams"]
