"""Losses and advantages: pure tensor functions, no I/O, no model calls.

Shapes: B sequences, T tokens (completion positions for RL), V vocabulary, G completions per group.
Every function here has a naive reference implementation in the tests.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from srlm.data.collate import IGNORE_INDEX  # the one label value that carries no loss


# ------------------------------------------------------------------------------------- token log-probs


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log p(target) per position. logits [B, T, V], targets [B, T] -> [B, T].

    Computed as logit[target] - logsumexp(logits), which never materialises a [B, T, V] log-softmax copy
    (a 151k vocabulary makes that the largest tensor of a step).
    """
    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    safe = targets.clamp(min=0)
    picked = logits.gather(-1, safe.unsqueeze(-1)).squeeze(-1)  # [B, T]
    return picked - torch.logsumexp(logits, dim=-1)  # [B, T]


def token_entropy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Entropy of the next-token distribution per position. logits [B, T, V] -> [B, T] (nats)."""
    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    logp = F.log_softmax(logits, dim=-1)  # [B, T, V]
    return -(logp.exp() * logp).sum(-1)  # [B, T]


# ------------------------------------------------------------------------------------------------ SFT


def sft_loss(logits: torch.Tensor, labels: torch.Tensor, normalizer: float | None = None) -> torch.Tensor:
    """Next-token cross-entropy on positions whose label is not IGNORE_INDEX.

    logits [B, T, V] predict labels shifted by one: position t predicts labels[:, t+1].
    `normalizer` (the number of loss tokens in the whole optimizer step) makes micro-batch losses add up
    to the step's token mean, so gradient accumulation and data parallelism give the same gradient as one
    big batch; without it the loss is this batch's token mean.
    """
    pred = logits[:, :-1, :]  # [B, T-1, V]
    tgt = labels[:, 1:]  # [B, T-1]
    total = F.cross_entropy(pred.reshape(-1, pred.shape[-1]).float(), tgt.reshape(-1),
                            ignore_index=IGNORE_INDEX, reduction="sum")
    n = normalizer if normalizer is not None else (tgt != IGNORE_INDEX).sum().clamp(min=1)
    return total / n


# ----------------------------------------------------------------------------------------- advantages


def group_advantages(rewards: torch.Tensor, group_size: int, scale: bool = True, eps: float = 1e-4) -> torch.Tensor:
    """GRPO advantages: (r - mean of its group) / (std of its group + eps). rewards [B] -> [B].

    Rows are grouped consecutively: rows [k*G, (k+1)*G) answer the same prompt. `scale=False` drops the
    std division (Dr. GRPO), which keeps easy and hard questions on the same scale. The std is the
    sample std (n-1), as in the GRPO reference code; a group with equal rewards gets all-zero advantages.
    """
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    grouped = rewards.float().view(-1, group_size)  # [B/G, G]
    centred = grouped - grouped.mean(dim=1, keepdim=True)  # [B/G, G]
    if scale:
        std = grouped.std(dim=1, keepdim=True)  # [B/G, 1]
        # equal rewards carry no signal: exactly zero, whatever eps is
        centred = torch.where(std > 0, centred / (std + eps), torch.zeros_like(centred))
    return centred.reshape(-1)  # [B]


def leave_one_out_advantages(rewards: torch.Tensor, group_size: int, scale: bool = True,
                             eps: float = 1e-4) -> torch.Tensor:
    """RLOO advantages: r minus the mean of the *other* rewards of its group. rewards [B] -> [B].

    Equal to G/(G-1) times the group-centred reward, so the baseline never contains the sample itself.
    `scale` divides by the group's sample std as `group_advantages` does; equal rewards give zeros.
    """
    if group_size < 2:
        raise ValueError("leave-one-out advantages need groups of at least 2 completions")
    centred = group_advantages(rewards, group_size, scale=False).view(-1, group_size)  # [B/G, G]
    loo = centred * (group_size / (group_size - 1))  # [B/G, G]
    if scale:
        std = rewards.float().view(-1, group_size).std(dim=1, keepdim=True)  # [B/G, 1]
        loo = torch.where(std > 0, loo / (std + eps), torch.zeros_like(loo))
    return loo.reshape(-1)  # [B]


# An advantage estimator turns a batch's rewards [B] (consecutive groups of `group_size` completions of one
# prompt) into per-completion advantages [B]; `scale` is `grpo.scale_rewards`. Named by `grpo.advantage`.
ADVANTAGE_ESTIMATORS: dict[str, Callable[..., torch.Tensor]] = {
    "grpo": group_advantages,
    "rloo": leave_one_out_advantages,
}


# ------------------------------------------------------------------------------------------------ GRPO


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token KL(pi || ref) estimate k3 = exp(ref - logp) - (ref - logp) - 1 >= 0. [B, T] -> [B, T]."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1.0


# An aggregation turns per-token losses [B, T] into the scalar to minimise. `n_seqs` and `n_tokens` are the
# counts of the whole optimizer batch: when a batch is split into micro-batches, each micro-batch divides by
# the batch's totals, so the micro-batch losses add up exactly to the full batch's loss.


def aggregate_seq_mean(per_token, mask, max_tokens: int, n_seqs: float, n_tokens: float) -> torch.Tensor:
    """The paper's 1/G sum_i 1/|o_i| sum_t: mean over each sequence's tokens, then over sequences."""
    lengths = mask.sum(-1).clamp(min=1)  # [B]
    return ((per_token * mask).sum(-1) / lengths).sum() / n_seqs


def aggregate_token_mean(per_token, mask, max_tokens: int, n_seqs: float, n_tokens: float) -> torch.Tensor:
    """Mean over all completion tokens of the batch (DAPO): long answers weigh by their length."""
    return (per_token * mask).sum() / max(n_tokens, 1.0)


def aggregate_dr_grpo(per_token, mask, max_tokens: int, n_seqs: float, n_tokens: float) -> torch.Tensor:
    """Dr. GRPO: sum over tokens divided by a constant (sequences x max completion length): no length bias."""
    return (per_token * mask).sum() / (n_seqs * max_tokens)


AGGREGATIONS: dict[str, Callable[..., torch.Tensor]] = {
    "seq_mean": aggregate_seq_mean,
    "token_mean": aggregate_token_mean,
    "dr_grpo": aggregate_dr_grpo,
}


def grpo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    ref_logp: torch.Tensor | None = None,
    beta: float = 0.0,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    aggregation: str = "seq_mean",
    max_tokens: int | None = None,
    n_seqs: float | None = None,
    n_tokens: float | None = None,
    engine_logp: torch.Tensor | None = None,
    tis_cap: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Negative of the paper's J(theta) (eq. 3), to minimise.

    logp, old_logp, ref_logp, mask: [B, T] over completion tokens (mask 1 on real tokens); advantages [B].
    Per token: -(min(r*A, clip(r, 1-eps, 1+eps_high)*A) - beta*KL_k3(pi||ref)), r = exp(logp - old_logp),
    then aggregated by `aggregation` (see AGGREGATIONS). `max_tokens` is the completion length limit
    (Dr. GRPO's constant); `n_seqs`/`n_tokens` are the optimizer batch's counts when this call sees only a
    micro-batch of it (default: this call's own counts). Returns (loss, stats) with detached stats:
    clip fraction, mean KL and mean ratio over real tokens.

    Truncated importance sampling (`tis_cap` C, with `engine_logp` [B, T]: the log-probs of the engine
    that sampled the tokens, vLLM say): the tokens came from pi_engine, not pi_old, so each token's
    clipped-ratio term is weighted by w = min(pi_old / pi_engine, C), detached (Yao et al. 2025, "Your
    efficient RL framework secretly brings you off-policy RL training"). The KL penalty is not weighted.
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {aggregation!r}; choose one of {sorted(AGGREGATIONS)}")
    eps_high = epsilon if epsilon_high is None else epsilon_high
    mask = mask.to(logp.dtype)
    ratio = torch.exp(logp - old_logp)  # [B, T]
    adv = advantages.to(logp.dtype).unsqueeze(-1)  # [B, 1]
    unclipped = ratio * adv  # [B, T]
    clipped = torch.clamp(ratio, 1.0 - epsilon, 1.0 + eps_high) * adv  # [B, T]
    per_token = -torch.min(unclipped, clipped)  # [B, T]
    tis_weight = None
    if tis_cap is not None:
        if engine_logp is None:
            raise ValueError("tis_cap needs engine_logp")
        tis_weight = truncated_is_weight(old_logp, engine_logp, tis_cap)  # [B, T]
        per_token = tis_weight * per_token
    kl = None
    if beta != 0.0:
        if ref_logp is None:
            raise ValueError("beta != 0 needs ref_logp")
        kl = kl_k3(logp, ref_logp)  # [B, T]
        per_token = per_token + beta * kl
    loss = AGGREGATIONS[aggregation](
        per_token, mask, max_tokens or logp.shape[1],
        float(n_seqs if n_seqs is not None else logp.shape[0]),
        float(n_tokens if n_tokens is not None else mask.sum().item()),
    )
    n = mask.sum().clamp(min=1)
    with torch.no_grad():
        is_clipped = (clipped < unclipped).to(logp.dtype)  # the min picked the clipped term
        stats = {
            "clip_fraction": (is_clipped * mask).sum() / n,
            "ratio_mean": (ratio * mask).sum() / n,
            "kl": (kl * mask).sum() / n if kl is not None else torch.zeros(()),
        }
        if tis_weight is not None:
            stats["tis_weight"] = (tis_weight * mask).sum() / n
    return loss, stats


def truncated_is_weight(old_logp: torch.Tensor, engine_logp: torch.Tensor, cap: float) -> torch.Tensor:
    """min(pi_old / pi_engine, cap) per token, without gradient. [B, T], [B, T] -> [B, T]."""
    return torch.exp(old_logp.detach() - engine_logp).clamp(max=cap)


def rollout_mismatch(old_logp: torch.Tensor, engine_logp: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """How far the sampling engine's log-probs are from the trainer's pi_old on the sampled tokens, as
    sums over real tokens (callers divide by their token count): |log pi_engine - log pi_old| and the k3
    estimate of KL(pi_engine || pi_old) (the tokens were drawn from pi_engine). [B, T] x 3 -> scalars."""
    mask = mask.to(old_logp.dtype)
    return {"abs_logp_diff": ((engine_logp - old_logp).abs() * mask).sum(),
            "kl": (kl_k3(engine_logp, old_logp) * mask).sum()}


# ------------------------------------------------------------------------------- logit-level distillation
#
# The KD functions work on the positions that carry loss only, flattened: logits [N, V] (N positions,
# any leading shape works the same), so a [B, T, V] tensor is never built for prompt or padding tokens.
# P is the teacher's next-token distribution, Q the student's, both at temperature tau.


def selected_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy per selected position. logits [N, V], targets [N] -> [N] (nats).

    The SFT and KD loops select the loss positions before the LM head, so no shift or mask is needed here.
    """
    return F.cross_entropy(logits.float(), targets, reduction="none")  # [N]


def _forward_kl(logp_s: torch.Tensor, logp_t: torch.Tensor, beta: float) -> torch.Tensor:
    """KL(P || Q) = sum_v P (log P - log Q): mass-covering; its student gradient is CE on P's soft labels."""
    return (logp_t.exp() * (logp_t - logp_s)).sum(-1)  # [N]


def _reverse_kl(logp_s: torch.Tensor, logp_t: torch.Tensor, beta: float) -> torch.Tensor:
    """KL(Q || P) = sum_v Q (log Q - log P): mode-seeking (MiniLLM, GKD with on-policy samples)."""
    return (logp_s.exp() * (logp_s - logp_t)).sum(-1)  # [N]


def _jsd(logp_s: torch.Tensor, logp_t: torch.Tensor, beta: float) -> torch.Tensor:
    """Generalised JSD of GKD: beta KL(P || M) + (1 - beta) KL(Q || M), M = beta P + (1 - beta) Q.

    beta = 0.5 is the symmetric Jensen-Shannon divergence; small beta behaves like beta * forward KL,
    beta near 1 like (1 - beta) * reverse KL. log M is a logsumexp of the two, never log of a sum.
    """
    import math  # local: this section is appended to a module whose header belongs to the GRPO code

    log_m = torch.logsumexp(torch.stack([logp_t + math.log(beta), logp_s + math.log(1.0 - beta)]), dim=0)
    kl_pm = (logp_t.exp() * (logp_t - log_m)).sum(-1)  # [N]
    kl_qm = (logp_s.exp() * (logp_s - log_m)).sum(-1)  # [N]
    return beta * kl_pm + (1.0 - beta) * kl_qm  # [N]


# name -> (student log-probs [N, V], teacher log-probs [N, V], beta) -> divergence per position [N]
KD_DIVERGENCES: dict[str, Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]] = {
    "forward_kl": _forward_kl,
    "reverse_kl": _reverse_kl,
    "jsd": _jsd,
}


def kd_divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor, divergence: str = "forward_kl",
                  beta: float = 0.5, temperature: float = 1.0) -> torch.Tensor:
    """Per-position divergence between teacher and student next-token distributions.

    student_logits, teacher_logits [N, V] -> [N]. Both are softened by `temperature` and the result is
    multiplied by temperature^2 (Hinton et al.), so the gradient's scale does not shrink as tau grows and
    one learning rate fits every temperature. The teacher side carries no gradient.
    """
    if divergence not in KD_DIVERGENCES:
        raise ValueError(f"unknown divergence {divergence!r}; choose one of {sorted(KD_DIVERGENCES)}")
    if divergence == "jsd" and not 0.0 < beta < 1.0:
        raise ValueError(f"jsd needs 0 < beta < 1, got {beta}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} differ: the models must share a vocabulary")
    logp_s = F.log_softmax(student_logits.float() / temperature, dim=-1)  # [N, V]
    logp_t = F.log_softmax(teacher_logits.detach().float() / temperature, dim=-1)  # [N, V]
    return KD_DIVERGENCES[divergence](logp_s, logp_t, beta) * temperature**2  # [N]


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor | None = None,
            divergence: str = "forward_kl", beta: float = 0.5, temperature: float = 1.0, ce_weight: float = 0.0,
            normalizer: float | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(1 - ce_weight) * divergence + ce_weight * cross-entropy on `targets`, summed over positions and
    divided by `normalizer` (the optimizer step's count of loss positions; default N).

    student_logits, teacher_logits [N, V]; targets [N] (the sampled or reference next tokens; needed only
    when ce_weight > 0). Returns (loss, detached stats: mean divergence and mean cross-entropy per position).
    """
    n = float(normalizer if normalizer is not None else max(student_logits.shape[0], 1))
    div = kd_divergence(student_logits, teacher_logits, divergence, beta, temperature)  # [N]
    loss = (1.0 - ce_weight) * div.sum() / n
    stats = {"kd": div.detach().sum() / n}
    if ce_weight > 0.0:
        if targets is None:
            raise ValueError("ce_weight > 0 needs targets")
        ce = selected_cross_entropy(student_logits, targets)  # [N]
        loss = loss + ce_weight * ce.sum() / n
        stats["ce"] = ce.detach().sum() / n
    return loss, stats


# ------------------------------------------------------------------------------ the output layer in chunks
#
# At a real vocabulary the logits are the largest tensors of a step: 16 completions x 256 tokens x 49k
# entries are 0.8 GB in fp32, 2.5 GB at Qwen2.5's 151k, and a log-softmax, its exp and its gradient are as
# large again. These functions take the hidden states [N, E] and the output layer (weight [V, E], bias [V])
# instead of logits and work through N in chunks of positions, so logits exist for one chunk at a time,
# forward and backward (the backward recomputes a chunk's logits: one more product with the output layer).

CHUNK_ELEMENTS = 1 << 24  # logits per chunk: 64 MB in fp32, whatever the vocabulary
# The softmax work of `linear_token_logprobs` goes through smaller pieces: a few fp32 passes over each piece
# then stay in the CPU's last-level cache (16 MB); over 64 MB pieces each pass went to memory, and its
# elementwise work cost as much as the products (SmolLM2, 49k vocabulary, bf16 products).
PIECE_ELEMENTS = 1 << 22


def chunk_rows(vocab: int, elements: int = CHUNK_ELEMENTS) -> int:
    """Positions per chunk so that a chunk's logits hold about `elements` numbers."""
    return max(1, elements // max(vocab, 1))


def _low_precision(hidden: torch.Tensor) -> torch.dtype | None:
    """The dtype of the products under the caller's autocast (bf16 on CPU), or None without autocast."""
    kind = hidden.device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else None


def _piece_logits(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                  temperature: float) -> torch.Tensor:
    """fp32 logits / t of one piece of positions [n, V], a fresh tensor that the caller may overwrite.
    `weight` (and `bias`) are already in the products' dtype; `h` is cast to it."""
    z = F.linear(h.to(weight.dtype), weight, bias).float()  # [n, V]
    return z.div_(temperature) if temperature != 1.0 else z


class _LinearTokenLogprobs(torch.autograd.Function):
    """log softmax(linear(hidden) / t)[target] per position, and (without gradient) the entropy there.

    Products in the dtype of the caller's autocast (its bf16 weight made once per pass, not per piece),
    softmax statistics in fp32. The backward recomputes each piece's logits, writes d logp / d logits for
    a chunk of `rows` positions into one buffer in the products' dtype, then takes the two products over
    the chunk: the weight's gradient [V, E] is read and written once per chunk, not once per piece.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, temperature, rows, piece, with_entropy):
        n = hidden.shape[0]
        low = _low_precision(hidden)
        w = weight.to(low) if low is not None else weight  # [V, E]
        b = bias.to(low) if (bias is not None and low is not None) else bias
        logp = hidden.new_empty(n, dtype=torch.float32)  # [N]
        ent = hidden.new_empty(n if with_entropy else 0, dtype=torch.float32)  # [N] or []
        lse = hidden.new_empty(n, dtype=torch.float32)  # [N]
        for s in range(0, n, piece):
            e = slice(s, s + piece)
            y = _piece_logits(hidden[e], w, b, temperature)  # [n, V]
            picked = y.gather(-1, targets[e, None]).squeeze(-1)  # [n]
            top = y.amax(-1, keepdim=True)  # [n, 1]
            y.sub_(top)  # y = z - max(z)
            p = torch.exp(y)  # [n, V], unnormalised
            total = p.sum(-1)  # [n]
            log_total = total.log()  # [n]
            lse[e] = top.squeeze(-1) + log_total
            logp[e] = picked - lse[e]
            if with_entropy:  # H = lse - sum_v p_v z_v = log(total) - sum_v p_v y_v / total
                ent[e] = log_total - p.mul_(y).sum(-1) / total
        ctx.save_for_backward(hidden, weight, bias, targets, lse)
        ctx.temperature, ctx.rows, ctx.piece, ctx.low = temperature, rows, piece, low
        ctx.mark_non_differentiable(ent)
        return logp, ent

    @staticmethod
    def backward(ctx, grad_logp, _grad_ent):
        hidden, weight, bias, targets, lse = ctx.saved_tensors
        t, rows, piece, low = ctx.temperature, ctx.rows, ctx.piece, ctx.low
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        # the products' dtype: the forward autocast's (bf16), as autocast's own linear does in its backward;
        # gradients summed over chunks in fp32 (or the weight's dtype, when wider)
        prod = low or weight.dtype
        acc = torch.promote_types(prod, torch.float32)
        w = weight.to(prod)  # [V, E], cast once for every chunk (no copy without autocast)
        b = bias.to(prod) if bias is not None else None
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None
        grad_b = torch.zeros(weight.shape[0], dtype=torch.float32, device=weight.device) if need_b else None
        g_all = grad_logp.float()  # [N]
        n = hidden.shape[0]
        dz = hidden.new_empty(min(rows, n), weight.shape[0], dtype=prod)  # [rows, V], reused by every chunk
        for c in range(0, n, rows):
            m = min(rows, n - c)
            for s in range(c, c + m, piece):
                e = slice(s, min(s + piece, c + m))
                g = g_all[e, None]  # [n, 1]
                # d logp / d z = onehot(target) - softmax(z), z = logits / t; times g, over t
                y = _piece_logits(hidden[e], w, b, t)  # [n, V]
                y.sub_(lse[e, None]).exp_().mul_(-g)
                y.scatter_add_(-1, targets[e, None], g)
                if t != 1.0:
                    y.div_(t)
                if need_b:
                    grad_b += y.sum(0)
                dz[s - c:s - c + y.shape[0]].copy_(y)  # in the products' dtype
            d = dz[:m]
            if need_h:
                grad_h[c:c + m] = (d @ w).to(hidden.dtype)  # [m, E]
            if need_w:
                h = hidden[c:c + m].to(prod)  # [m, E]
                if acc == prod:
                    grad_w.addmm_(d.t(), h)  # [V, E]
                else:
                    grad_w += d.t() @ h  # [V, E], a bf16 product summed in fp32
        return (grad_h, grad_w.to(weight.dtype) if need_w else None,
                grad_b.to(bias.dtype) if need_b else None, None, None, None, None, None)


def linear_token_logprobs(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                          targets: torch.Tensor, temperature: float = 1.0, with_entropy: bool = False,
                          rows: int | None = None, piece: int | None = None,
                          ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`token_logprobs` and `token_entropy` of logits = linear(hidden, weight, bias), in chunks of `rows`
    positions (default `chunk_rows(V)`), whose softmax work goes `piece` positions at a time (default
    `chunk_rows(V, PIECE_ELEMENTS)`, at most `rows`). hidden [..., E], targets [...] -> log-probs [...]
    (with gradient for hidden, weight and bias) and entropies [...] (detached) or None."""
    lead = targets.shape
    flat_h = hidden.reshape(-1, hidden.shape[-1])  # [N, E]
    flat_t = targets.reshape(-1).clamp(min=0)  # [N]
    rows = rows or chunk_rows(weight.shape[0])
    piece = min(rows, piece or chunk_rows(weight.shape[0], PIECE_ELEMENTS))
    logp, ent = _LinearTokenLogprobs.apply(flat_h, weight, bias, flat_t, float(temperature), rows, piece,
                                           with_entropy)
    return logp.view(lead), (ent.view(lead) if with_entropy else None)


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                         targets: torch.Tensor, rows: int | None = None) -> torch.Tensor:
    """`selected_cross_entropy` of logits = linear(hidden, weight, bias), in chunks of positions.
    hidden [N, E], targets [N] -> [N] (nats)."""
    return -linear_token_logprobs(hidden, weight, bias, targets, rows=rows)[0]


def linear_kd_loss(student_hidden: torch.Tensor, student_head: tuple, teacher_hidden: torch.Tensor,
                   teacher_head: tuple, width: int, targets: torch.Tensor | None = None,
                   divergence: str = "forward_kl", beta: float = 0.5, temperature: float = 1.0,
                   ce_weight: float = 0.0, normalizer: float | None = None,
                   rows: int | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """`kd_loss` of logits = linear(hidden, *head)[:, :width] for student and teacher, in chunks of positions.

    student_hidden [N, Es], teacher_hidden [N, Et] (detached), heads (weight [V, E], bias [V] or None).
    Each chunk is recomputed in the backward (activation checkpointing), so one chunk's logits of each
    model exist at a time. Same value and gradients as `kd_loss` on the full logits.
    """
    from torch.utils.checkpoint import checkpoint

    n = float(normalizer if normalizer is not None else max(student_hidden.shape[0], 1))
    rows = rows or chunk_rows(width)
    teacher_hidden = teacher_hidden.detach()

    def chunk(h_s, h_t, tgt):
        s_logits = F.linear(h_s, *student_head)[:, :width]  # [n, V]
        with torch.no_grad():
            t_logits = F.linear(h_t, *teacher_head)[:, :width]  # [n, V]
        loss, stats = kd_loss(s_logits, t_logits, tgt, divergence, beta, temperature, ce_weight, n)
        return loss, stats["kd"], stats.get("ce", loss.new_zeros(()))

    total = student_hidden.new_zeros((), dtype=torch.float32)
    kd_sum, ce_sum = total.new_zeros(()), total.new_zeros(())
    for s in range(0, student_hidden.shape[0], rows):
        tgt = targets[s:s + rows] if targets is not None else None
        loss, kd, ce = checkpoint(chunk, student_hidden[s:s + rows], teacher_hidden[s:s + rows], tgt,
                                  use_reentrant=False)
        total = total + loss
        kd_sum, ce_sum = kd_sum + kd.detach(), ce_sum + ce.detach()
    stats = {"kd": kd_sum}
    if ce_weight > 0.0:
        stats["ce"] = ce_sum
    return total, stats
