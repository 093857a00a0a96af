"""What a set of graded samples says about the grader itself (pure; evaluation writes it to summary.json).

* ``accuracy_by_method``: how many samples each extraction rule answered and how many of those were
  correct, so a score carried by the weak last-number fallback is visible (rules: ``answer_tag`` the
  paper's tags, ``boxed``, ``final_answer`` an "answer is" phrase, ``gsm8k`` a ``####`` line,
  ``last_number`` the fallback, ``none`` / ``unclosed_think`` no answer).
* ``grader_audit``: srlm's verdicts beside a second grader's (math-verify, field ``math_verify`` of a
  sample record: ``true``/``false``, ``null`` when it failed or ran out of time): both accuracies over
  the samples both judged, their agreement, and which way the disagreements go.
* ``disagreements``: the samples where the two differ, for ``grader_disagreements.jsonl``.
"""

from __future__ import annotations

SECOND_GRADER_FIELD = "math_verify"
# How much of a response a disagreement line keeps: enough to see the final answer.
RESPONSE_TAIL_CHARS = 600


def accuracy_by_method(samples: list[dict]) -> dict[str, dict]:
    """``{method: {"n": samples, "share": fraction of all samples, "accuracy": correct fraction}}``."""
    counts: dict[str, list[int]] = {}
    for s in samples:
        c = counts.setdefault(s.get("method") or "none", [0, 0])
        c[0] += 1
        c[1] += bool(s.get("correct"))
    total = max(1, len(samples))
    return {m: {"n": n, "share": n / total, "accuracy": k / n} for m, (n, k) in sorted(counts.items())}


def grader_audit(samples: list[dict]) -> dict | None:
    """Both graders' accuracies and their agreement; ``None`` when no sample carries a second verdict."""
    audited = [s for s in samples if SECOND_GRADER_FIELD in s]
    if not audited:
        return None
    judged = [s for s in audited if s[SECOND_GRADER_FIELD] is not None]
    n = len(judged)
    srlm_only = sum(1 for s in judged if s["correct"] and not s[SECOND_GRADER_FIELD])
    second_only = sum(1 for s in judged if s[SECOND_GRADER_FIELD] and not s["correct"])
    return {
        "second_grader": "math-verify",
        "n_samples": len(audited),
        "n_judged": n,
        "n_undecided": len(audited) - n,
        "srlm_accuracy": sum(bool(s["correct"]) for s in judged) / n if n else None,
        "math_verify_accuracy": sum(bool(s[SECOND_GRADER_FIELD]) for s in judged) / n if n else None,
        "agreement": (n - srlm_only - second_only) / n if n else None,
        "srlm_only_correct": srlm_only,
        "math_verify_only_correct": second_only,
    }


def disagreements(samples: list[dict]) -> list[dict]:
    """One line per sample the two graders judged differently (undecided ones are not disagreements)."""
    out = []
    for s in samples:
        second = s.get(SECOND_GRADER_FIELD)
        if second is None or bool(second) == bool(s["correct"]):
            continue
        response = s.get("response") or ""
        out.append({"id": s["id"], "sample": s["sample"], "gold": s["gold"], "extracted": s["extracted"],
                    "method": s["method"], "srlm": bool(s["correct"]), "math_verify": bool(second),
                    "response_tail": response[-RESPONSE_TAIL_CHARS:]})
    return out


def merge_audits(audits: list[dict | None]) -> dict | None:
    """One audit over several evaluations of the same benchmark (seeds): counts added, rates recomputed
    over all the samples both graders judged; ``None`` when none was audited."""
    present = [a for a in audits if a]
    if not present:
        return None
    n = sum(a["n_judged"] for a in present)

    def pooled(key: str) -> float | None:
        return sum((a[key] or 0) * a["n_judged"] for a in present) / n if n else None

    merged = {"second_grader": present[0]["second_grader"]}
    for key in ("n_samples", "n_judged", "n_undecided", "srlm_only_correct", "math_verify_only_correct"):
        merged[key] = sum(a[key] for a in present)
    for key in ("srlm_accuracy", "math_verify_accuracy", "agreement"):
        merged[key] = pooled(key)
    return merged
