"""Language models: the policy, its responses and samplers, loading, prompts, and ``nashpref train`` one concern per
module (config, build, trainer, evaluation, checkpoints) with the Backend seam in ``backend/``. Importing this
package imports neither transformers nor vLLM."""
