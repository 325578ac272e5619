"""Samplers of language-model responses: transformers (``hf``) and an in-process vLLM engine (``vllm``)."""
