"""The slow tier: sympy (through latex2sympy2_extended) in a worker process with a hard time limit.

Only answers that the in-process parser cannot read come here, so most gradings never touch it.
sympy can run for minutes or exhaust memory on a hostile input (``simplify`` of a tower of powers),
and a thread cannot be stopped, so the work runs in a separate process started with the "spawn"
method (safe with threads and CUDA in the parent). A request that outlives its time limit gets the
worker killed; the next request starts a fresh one. Any thread may call ``symbolic_equal``: a lock
serialises requests, and nothing here relies on signals. The worker is killed at interpreter exit.
"""

from __future__ import annotations

import atexit
import multiprocessing
import re
import threading

DEFAULT_TIMEOUT = 1.0
# The grader audit's limit per sample: math-verify's own parse and verify limits (seconds, whole) fit in it.
AUDIT_TIMEOUT = 6.0
_MATH_VERIFY_LIMIT = 2
_TAGS = ("<think>", "</think>", "<answer>", "</answer>")
# Starting Python and importing sympy takes seconds on a busy machine; it is not the answer's fault,
# so it has its own, longer limit.
STARTUP_TIMEOUT = 180.0
MAX_CHARS = 300
# Inputs that make sympy build enormous numbers: stacked exponents and very long digit strings.
_HOSTILE = re.compile(r"\^\s*\{[^{}]*\^|\^\s*\d+\s*\^|\d{40}|!\s*!")


class _Worker:
    """One worker process at a time, replaced after a timeout or a crash."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._process = None
        self._conn = None
        self._ready = False

    def _launch(self) -> None:
        """Start a worker without waiting for it: its start-up overlaps whatever the caller does next."""
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe()
        process = ctx.Process(target=_serve, args=(child,), daemon=True, name="srlm-grading-sympy")
        process.start()
        child.close()
        self._process, self._conn, self._ready = process, parent, False

    def _wait_ready(self) -> bool:
        try:
            if self._conn.poll(STARTUP_TIMEOUT) and self._conn.recv() == "ready":
                self._ready = True
                return True
        except (EOFError, OSError):
            pass
        self._stop()
        return False

    def request(self, message: tuple, timeout: float) -> bool | None:
        if not self._lock.acquire(timeout=STARTUP_TIMEOUT + timeout):
            return None
        try:
            if self._process is None or not self._process.is_alive():
                self._stop()
                self._launch()
            if not self._ready and not self._wait_ready():
                return None
            try:
                self._conn.send(message)
                if self._conn.poll(timeout):
                    return self._conn.recv()
            except (EOFError, OSError):
                pass
            # Too slow, or the worker died: kill it and start a fresh one for the next request.
            self._stop()
            self._launch()
            return None
        finally:
            self._lock.release()

    def _stop(self) -> None:
        if self._process is not None:
            _kill(self._process)
        if self._conn is not None:
            try:
                self._conn.close()
            except OSError:
                pass
        self._process, self._conn, self._ready = None, None, False

    def close(self) -> None:
        with self._lock:
            self._stop()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None


def _kill(process) -> None:
    if process.is_alive():
        process.kill()
    process.join(timeout=5)


_WORKER = _Worker()
atexit.register(_WORKER.close)


def symbolic_equal(gold: str, pred: str, timeout: float = DEFAULT_TIMEOUT) -> bool | None:
    """Whether sympy proves the two LaTeX answers equal; ``None`` if it cannot tell in time."""
    if len(gold) > MAX_CHARS or len(pred) > MAX_CHARS or _HOSTILE.search(gold) or _HOSTILE.search(pred):
        return None
    result = _WORKER.request(("sympy", gold, pred), timeout)
    return result if isinstance(result, bool) else None


def math_verify_equal(gold: str, response: str, timeout: float = AUDIT_TIMEOUT) -> bool | None:
    """math-verify's verdict on a whole ``response`` against ``gold`` (wrapped in ``\\boxed{}``, as its
    README grades), computed in the same killable worker with its own time limit; ``None`` when it
    fails or runs out of time. The grader audit of evaluation, a second opinion beside srlm's."""
    # math-verify's number pattern wants whitespace around a number, so `<answer>18</answer>` would read
    # as no answer at all: the tags become line breaks, the text is otherwise what the model wrote.
    for tag in _TAGS:
        response = response.replace(tag, "\n")
    result = _WORKER.request(("math_verify", gold, response), timeout)
    return result if isinstance(result, bool) else None


def shutdown_worker() -> None:
    """Stop the worker process now (it is also stopped at exit)."""
    _WORKER.close()


def worker_pid() -> int | None:
    """Process id of the running worker, if any (for tests)."""
    return _WORKER.pid


# --- inside the worker process -------------------------------------------------------------------


def _serve(conn) -> None:
    from latex2sympy2_extended import latex2sympy

    # The first parse builds the LaTeX grammar and the first simplify fills sympy's caches: seconds on
    # a cold machine. Doing both before "ready" keeps that start-up cost out of every request's limit.
    try:
        _same(latex2sympy("\\sum_{k=1}^{2} \\frac{k}{2}"), latex2sympy("\\sqrt{x^2}+1"))
        _math_verify("\\frac{1}{2}", "so $\\boxed{0.5}$")
    except Exception:
        pass
    conn.send("ready")
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        kind, gold, pred = message
        try:
            if kind == "math_verify":
                result = _math_verify(gold, pred)
            else:
                result = _same(latex2sympy(gold), latex2sympy(pred))
        except Exception:  # any failure to parse or compare means "cannot tell"
            result = None
        try:
            conn.send(result)
        except (OSError, BrokenPipeError):
            return


def _math_verify(gold: str, response: str) -> bool:
    from math_verify import parse, verify

    gold_parsed = parse("\\boxed{" + gold + "}", parsing_timeout=_MATH_VERIFY_LIMIT)
    return bool(verify(gold_parsed, parse(response, parsing_timeout=_MATH_VERIFY_LIMIT),
                       timeout_seconds=_MATH_VERIFY_LIMIT))


def _same(a, b) -> bool:
    import sympy

    if a == b:
        return True
    if isinstance(a, sympy.Eq) and isinstance(b, sympy.Eq):
        return _same(a.lhs - a.rhs, b.lhs - b.rhs) or _same(a.lhs - a.rhs, b.rhs - b.lhs) \
            or (a.lhs == b.lhs and _same(a.rhs, b.rhs))
    if isinstance(a, sympy.Eq) and not isinstance(b, sympy.Eq) and isinstance(a.lhs, sympy.Symbol):
        return _same(a.rhs, b)
    if isinstance(b, sympy.Eq) and not isinstance(a, sympy.Eq) and isinstance(b.lhs, sympy.Symbol):
        return _same(a, b.rhs)
    sequences = (tuple, list, sympy.Tuple)
    if isinstance(a, sequences) and isinstance(b, sequences):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, sympy.FiniteSet) and isinstance(b, sympy.FiniteSet):
        return len(a) == len(b) and all(any(_same(x, y) for y in b) for x in a)
    if isinstance(a, sympy.MatrixBase) and isinstance(b, sympy.MatrixBase):
        return a.shape == b.shape and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, sympy.Expr) and isinstance(b, sympy.Expr):
        if sympy.simplify(a - b) == 0:
            return True
        equal = a.equals(b)
        return bool(equal)
    return False
