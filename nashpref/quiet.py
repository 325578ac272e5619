"""Quiet by default: the libraries' INFO logs and their own progress bars off unless ``--verbose``; each warning
shown once; our one progress bar (tqdm, on stderr, only on a terminal) shows the figures that matter.

Called by the command line before any heavy import: vLLM reads its log level from the environment when it is
first imported.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

LIBRARIES = ("vllm", "transformers", "datasets", "huggingface_hub", "torch", "accelerate", "peft")


def configure(verbose: bool) -> None:
    """Library logs at WARNING (INFO with ``verbose``); every distinct warning once."""
    level = "INFO" if verbose else "WARNING"
    os.environ.setdefault("VLLM_LOGGING_LEVEL", level)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", level.lower())
    os.environ.setdefault("DATASETS_VERBOSITY", level.lower())
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ["NASHPREF_VERBOSE"] = "1" if verbose else "0"
    for name in LIBRARIES:
        logging.getLogger(name).setLevel(level)
    if not sys.warnoptions:                 # an explicit -W or PYTHONWARNINGS wins
        warnings.simplefilter("default" if verbose else "once")


def verbose() -> bool:
    """Whether the command line asked for the libraries' own logs and progress bars."""
    return os.environ.get("NASHPREF_VERBOSE") == "1"


def progress(total: int, name: str, initial: int = 0, enabled: bool = True):
    """The one progress bar of a command: stderr, shown on a terminal once a run takes longer than half a
    second; ``set_postfix`` carries the key figures (gap, loss, win-rate)."""
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=name, unit="it", file=sys.stderr, delay=0.5,
                disable=None if enabled else True, leave=False, dynamic_ncols=True)
