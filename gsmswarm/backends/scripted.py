"""A scripted backend for unit tests of methods and of the engine (never for results): each request is
answered at once with the next scripted completion, and every request is remembered."""
from typing import Callable, List, Optional, Tuple, Union

from . import Backend, Completion

Turn = Union[str, Tuple[str, Optional[str]]]  # a completion's text, or (text, the stop string that ended it)


class ScriptedBackend(Backend):
    name = "scripted"

    def __init__(self, turns: Union[List[Turn], Callable[[str], Turn]], tokenizer=None):
        """`turns`: answers in order, or a function of the prompt; `tokenizer`: a real one where the method
        asks it something (PAL's token boundaries), else prompt tokens are counted as words."""
        self.turns, self.tokenizer = turns, tokenizer
        self.seen: List[tuple] = []  # (prompt, gen) of every request
        self._done = []

    def submit(self, key, prompt, gen, seed=0):
        self.seen.append((prompt, gen))
        turn = self.turns(prompt) if callable(self.turns) else self.turns.pop(0)
        text, stop = (turn, None) if isinstance(turn, str) else turn
        self._done.append((key, [Completion(text, [0] * 3, truncated=False, latency_s=0.01, stop=stop)
                                 for _ in range(gen.n)]))

    def step(self):
        done, self._done = self._done, []
        return done

    def wants_more(self) -> bool:
        return True

    def n_tokens(self, text: str) -> int:
        return len(self.tokenizer(text).input_ids) if self.tokenizer is not None else len(text.split())
