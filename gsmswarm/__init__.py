"""gsmswarm: integrating knowledge into an LLM served by Petals, measured on GSM8K.

Importing the package is cheap: torch, transformers and petals load only when a backend is created.
"""
import os
import warnings

# hivemind passes each future's state byte through torch shared memory, by default with the "file_system"
# strategy: named /dev/shm files whose reference count lives in the file. A process forked from one that holds
# such a buffer (a Petals server forks its connection handlers after loading its blocks) lets go of its
# inherited copy at its first future, a decrement nobody counted, and the file can be unlinked while the parent
# and its DHT process still use it: CI lost a restarted server so ("could not unlink the shared memory file",
# its runtime never started). "file_descriptor" shared memory has no name to unlink. Set here, before any
# gsmswarm code imports hivemind, which reads the variable once at import.
os.environ.setdefault("HIVEMIND_MEMORY_SHARING_STRATEGY", "file_descriptor")

# Noise from the pinned stack, not actionable here: transformers 4.34 on torch 2.13, tqdm without ipywidgets.
warnings.filterwarnings("ignore", message=".*_register_pytree_node", category=FutureWarning)
warnings.filterwarnings("ignore", message="IProgress not found")

from .answers import extract_answer, gold_answer, is_correct
from .config import GenerationConfig, RunConfig
from .data import load_split
from .methods import get_method
from .metrics import accuracy, wilson_interval
from .prompts import load_prompt, render
from .results import load_runs, read_records

__all__ = ["extract_answer", "gold_answer", "is_correct", "GenerationConfig", "RunConfig", "load_split",
           "get_method", "accuracy", "wilson_interval", "load_prompt", "render", "load_runs", "read_records"]
