"""The evaluation engine: many problems in flight, one record per problem written as soon as it is finished.

A method's `solve` is a generator: it yields `(prompt, gen)` whenever it needs completions from the model,
receives the list of `gen.n` completions, and finally returns the method's record fields. CoT yields once;
the calculator yields again after each pause with the extended text; PAL runs its program after its one
completion; self-consistency is one yield with `gen.n = k`. The engine starts as many problems as the backend
can decode at once, hands every yielded request to the backend, and feeds each finished request back to its
problem, so the backend's batch stays full while problems start, pause and finish at different times.

Records are appended (and fsynced) in the order problems finish. A run killed at any moment loses only the
problems in flight; rerunning the same command resumes with the problems that have no record.
"""
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Dict

from .config import CACHE_DIR, METHODS, GenerationConfig, RunConfig, UserError, as_dict

MAX_ERRORS_IN_A_ROW = 3  # consecutive backend errors: a few mean the swarm, not the problem, is broken


def solve_one(method, problem, backend, template: str, gen: GenerationConfig, **tools) -> dict:
    """One problem's record fields, each request answered by a blocking `backend.generate` (notebooks, tests)."""
    solver = method.solve(problem, backend, template, gen, **tools)
    try:
        prompt, g = next(solver)
        while True:
            prompt, g = solver.send(backend.generate(prompt, g, seed=problem.idx))
    except StopIteration as done:
        return done.value


def run(config: RunConfig, gen: GenerationConfig) -> dict:
    """Solve every not-yet-solved problem of the split, appending records; return the run's summary."""
    from .backends import open_backend, resolve_device
    from .convert import resolve_model
    from .data import load_split
    from .methods import SAMPLING_METHODS, get_method
    from .prompts import chat_generation, check_slots, load_prompt, prompt_hash
    from .report import summarize_run
    from .results import ResultsWriter, process_commit, records_path, run_name

    method = get_method(config.method)
    if config.method in SAMPLING_METHODS and gen.n < 2:
        raise UserError(f"--method {config.method} needs --samples k >= 2 (and --temperature > 0)")
    model_path = resolve_model(config.model)
    template = load_prompt(config.prompt, model_path)
    check_slots(template, config.prompt, method.SLOTS, f"--method {config.method}", f" (its prompt: {METHODS[config.method][1]})")
    gen = chat_generation(template, gen)
    resolve_device(config.device)  # --device cuda without CUDA: one line before any file is opened
    problems = load_split(config.split, config.limit)
    soft_prompt = None
    if config.soft_prompt:
        from .tuning import load_soft_prompt

        soft_prompt = load_soft_prompt(config.soft_prompt)
    settings = method.run_settings(config) if hasattr(method, "run_settings") else {}
    name, path = run_name(config, gen), records_path(config, gen)
    base = {"run_id": name, "method": config.method, "backend": config.backend, "model": config.model,
            "prompt": config.prompt, "prompt_hash": prompt_hash(template), "gen": as_dict(gen),
            "split": config.split, "commit": process_commit(), "dtype": config.dtype,
            "batch_size": config.batch_size,
            "soft_prompt": soft_prompt and {"path": config.soft_prompt, "mode": soft_prompt.mode,
                                            "length": soft_prompt.length, "sha256": soft_prompt.sha256()},
            **settings}
    summary = None
    with ResultsWriter(path) as writer:
        def failed(p) -> bool:
            return bool(writer.done[p.idx].get("error"))

        todo = [p for p in problems if p.idx not in writer.done or (config.retry_errors and failed(p))]
        if writer.done:
            _check_same_config(path, next(iter(writer.done.values())), base, own=tuple(settings))
            print(f"resuming {path}: {len(problems) - len(todo)} of {len(problems)} problems already done",
                  file=sys.stderr)
        try:
            if todo:
                tools = method.setup(config) if hasattr(method, "setup") else {}
                with contextlib.ExitStack() as stack:
                    for tool in tools.values():  # a sandbox worker: stopped with the run
                        if hasattr(tool, "close"):
                            stack.callback(tool.close)
                    backend = stack.enter_context(open_backend(
                        config.backend, model_path, config.initial_peers, config.dht_prefix, config.num_servers,
                        CACHE_DIR / "swarm" / name, device=config.device, dtype=config.dtype,
                        batch_size=config.batch_size))
                    if soft_prompt is not None:
                        backend.set_soft_prompt(soft_prompt)
                    _Loop(method, backend, template, gen, tools, base, writer, path, problems).run(todo)
        finally:  # an interrupted run still gets a summary of what it finished
            records = [writer.done[p.idx] for p in problems if p.idx in writer.done]
            if records:
                summary = summarize_run(path, records, {**as_dict(config), "gen": as_dict(gen)})
    if summary and summary["n_backend_errors"]:
        print(f"{summary['n_backend_errors']} problems are recorded as backend errors (not graded): rerun with "
              f"--retry-errors to solve them again", file=sys.stderr)
    return summary


class _Loop:
    """Keeps the backend busy: starts problems while it wants more, feeds finished requests back."""

    def __init__(self, method, backend, template, gen, tools, base, writer, path, problems):
        self.method, self.backend, self.template, self.gen, self.tools = method, backend, template, gen, tools
        self.base, self.writer, self.path, self.problems = base, writer, path, problems
        self.in_flight: Dict[int, tuple] = {}  # problem idx -> (problem, solver)
        self.errors_in_a_row, self.tokens = 0, 0
        self.last_write = time.perf_counter()

    def run(self, todo) -> None:
        from tqdm import tqdm

        waiting = list(todo)
        self.bar = tqdm(total=len(todo), desc=self.base["run_id"], unit="problem", dynamic_ncols=True)
        try:
            while True:
                while waiting and self.backend.wants_more():
                    problem = waiting.pop(0)
                    solver = self.method.solve(problem, self.backend, self.template, self.gen, **self.tools)
                    self._advance(problem, solver, None)
                if not self.in_flight:
                    return
                for idx, answer in self.backend.step():
                    self._advance(*self.in_flight[idx], answer)
        finally:
            self.bar.close()

    def _advance(self, problem, solver, answer) -> None:
        """Send the backend's answer (completions, a BackendError, or None to start) to the problem's solver;
        queue what it asks next, or write its record."""
        from .backends import BackendError

        record = {**self.base, "idx": problem.idx, "question": problem.question, "gold": problem.gold}
        if isinstance(answer, BackendError):
            solver.close()
            self._write(problem, {**record, "error": f"backend_error: {answer}"})
            self.errors_in_a_row += 1
            if self.errors_in_a_row == MAX_ERRORS_IN_A_ROW:
                done = [self.writer.done[p.idx] for p in self.problems if p.idx in self.writer.done]
                raise UserError(
                    f"problem {problem.idx}: {answer}; {self.errors_in_a_row} problems in a row failed, so the run "
                    f"stops; {self.path} keeps {len(done)} records ({sum(bool(r.get('error')) for r in done)} of "
                    f"them backend errors): rerun with --retry-errors to resume and retry those")
            return
        try:
            prompt, gen = next(solver) if answer is None else solver.send(answer)
        except StopIteration as finished:
            self.errors_in_a_row = 0
            self.tokens += sum(finished.value.get("n_completion_tokens", []))
            self._write(problem, {**record, **finished.value, "error": None})
            return
        self.in_flight[problem.idx] = (problem, solver)
        self.backend.submit(problem.idx, prompt, gen, seed=problem.idx)

    def _write(self, problem, record: dict) -> None:
        """Append the record with `wall_s`, the time since the previous record: over a run these add up to its
        wall time, so seconds per problem stay meaningful when many problems overlap (`latency_s` does not)."""
        now = time.perf_counter()
        record["wall_s"], self.last_write = round(now - self.last_write, 3), now
        self.in_flight.pop(problem.idx, None)
        self.writer.write(record)
        self.bar.update()
        self.bar.set_postfix_str(f"{self.tokens / max(self.bar.format_dict['elapsed'], 1e-9):.1f} tok/s",
                                 refresh=False)


def _check_same_config(path: Path, old: dict, base: dict, own=()) -> None:
    """Resuming appends to a run only if the prompt, generation settings, dtype and the method's own settings are
    the ones it was made with (records made before the dtype was recorded were float32)."""
    from .results import dtype_of

    old = {**old, "dtype": dtype_of(old)}
    for key in ("prompt_hash", "gen", "soft_prompt", "dtype", *own):
        if old.get(key) != json.loads(json.dumps(base[key])):
            raise UserError(f"{path} was made with another {key} ({old.get(key)}); "
                            f"use another --output-dir or move that file")
