"""Samplers of language-model responses: transformers (``hf``), an in-process vLLM engine (``vllm``) and the
vLLM engine holding the policy and the reference for Nash-MD's mixture (``vllm_mixture``)."""
