"""gsmswarm: integrating knowledge into an LLM served by Petals, measured on GSM8K.

Importing the package is cheap: torch, transformers and petals load only when a backend is created.
"""
import warnings

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
