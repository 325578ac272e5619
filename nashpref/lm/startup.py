"""Start-up of the language-model commands with the cyclic garbage collector out of the way.

Importing torch's, transformers' and vLLM's millions of objects triggers full collections over a heap that only
grows, and vLLM's engine runs a few more while it loads weights. During start-up nothing worth collecting is made:
the objects that exist are frozen (moved out of the collector's sight, as vLLM does with the whole heap once its
engine is up) and automatic collections are off until the block ends. Measured on the tiny model
(bench/startup): 0.75 s of CPU off the libraries' imports, about 2 s off vLLM's import and engine start.
"""

from __future__ import annotations

import contextlib
import gc


@contextlib.contextmanager
def paused_gc():
    enabled = gc.isenabled()
    gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def import_libraries() -> None:
    """What every language-model command uses, imported at once under :func:`paused_gc` (transformers resolves
    its classes lazily, on first use)."""
    with paused_gc(), contextlib.suppress(ImportError):     # a missing extra is named by the command's own check
        import datasets  # noqa: F401
        from transformers import (AutoConfig, AutoModelForCausalLM,  # noqa: F401
                                  AutoModelForSequenceClassification, AutoTokenizer)
