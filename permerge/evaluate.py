"""Evaluation with fixed inputs: MLM loss and pseudo-perplexity on fixed masks, causal-LM loss and
perplexity (next-token prediction), classification loss (cross-entropy, or MSE for a regression
task) and accuracy."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class EvalSet:
    """Fixed evaluation batches.  kind "mlm": input_ids with masks applied and labels (-100 off the
    selected tokens); kind "causal-lm": token blocks, every next token scored; kind
    "classification": encoded sentences and labels.  ``inputs``: the keys the model takes (its
    family's, ``ArchSpec.inputs``); other entries of a batch are not passed to the model."""
    kind: str
    batches: list[dict]
    inputs: tuple
    regression: bool = False
    metrics: tuple = ()  # classification: GLUE metrics (permerge.glue) reported beside the loss


def mlm_evalset(masked: dict, inputs, batch_size: int = 32) -> EvalSet:
    ids, labels = masked["input_ids"], masked["labels"]
    batches = [{"input_ids": ids[i:i + batch_size], "attention_mask": torch.ones_like(ids[i:i + batch_size]),
                "token_type_ids": torch.zeros_like(ids[i:i + batch_size]), "labels": labels[i:i + batch_size]}
               for i in range(0, len(ids), batch_size)]
    return EvalSet("mlm", batches, tuple(inputs))


def causal_evalset(blocks: torch.Tensor, inputs, batch_size: int = 32) -> EvalSet:
    """Next-token prediction on fixed blocks: every token after the first is scored."""
    batches = [{"input_ids": blocks[i:i + batch_size], "attention_mask": torch.ones_like(blocks[i:i + batch_size])}
               for i in range(0, len(blocks), batch_size)]
    return EvalSet("causal-lm", batches, tuple(inputs))


def exact_evalset(blocks: torch.Tensor, special_ids, mask_token_id: int, inputs) -> EvalSet:
    """Pseudo-perplexity of Salazar et al. (2020): every non-special token of every block is masked
    alone and scored.  One forward pass per token: the optional slow mode."""
    batches = []
    for row in blocks:
        pos = torch.tensor([i for i, t in enumerate(row.tolist()) if t not in set(special_ids)], dtype=torch.long)
        batches.append({"block": row, "positions": pos, "mask_token_id": mask_token_id})
    return EvalSet("mlm-exact", batches, tuple(inputs))


@torch.no_grad()
def _exact_nll(model, b: dict, device, head, keys, chunk: int = 64) -> tuple[float, int]:
    row, pos = b["block"].to(device), b["positions"].to(device)
    total = 0.0
    for i in range(0, len(pos), chunk):
        p = pos[i:i + chunk]
        ids = row.expand(len(p), -1).clone()
        ids[torch.arange(len(p), device=device), p] = b["mask_token_id"]
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}
        inputs = {k: v for k, v in inputs.items() if k in keys}
        if head is not None:
            h = model.base_model(**inputs).last_hidden_state[torch.arange(len(p), device=device), p]
            logits = head(h).float()
        else:
            logits = model(**inputs).logits.float()[torch.arange(len(p), device=device), p]
        total += F.cross_entropy(logits, row[p], reduction="sum").item()
    return total, len(pos)


# tokens per forward on a GPU: consecutive evaluation batches of one shape are merged up to it
CUDA_EVAL_TOKENS = 8192


def _forwards(batches: list[dict], tokens_per_forward: int):
    """Consecutive batches of one sequence length merged up to ``tokens_per_forward`` tokens (0:
    the batches as given)."""
    group: list[dict] = []
    size = 0
    for b in batches:
        ids = b.get("input_ids")
        if group and (not tokens_per_forward or ids is None or size + ids.numel() > tokens_per_forward
                      or ids.shape[1:] != group[0]["input_ids"].shape[1:]):
            yield _cat(group)
            group, size = [], 0
        group.append(b)
        size += ids.numel() if ids is not None else 0
    if group:
        yield _cat(group)


def _cat(group: list[dict]) -> dict:
    if len(group) == 1:
        return group[0]
    return {k: torch.cat([b[k] for b in group]) for k, v in group[0].items() if isinstance(v, torch.Tensor)}


@torch.no_grad()
def evaluate(model, evalset: EvalSet, device="cpu", mlm_head: str | None = None,
             keep: list | None = None, precision: str | None = "fp32",
             forward_tokens: int | None = None) -> dict[str, float]:
    """{"loss", "pseudo_perplexity"} for MLM, {"loss", "perplexity"} for a causal LM,
    {"loss", "accuracy"} for classification, and the evaluation set's GLUE ``metrics`` beside them
    (F1, Matthews correlation, Pearson and Spearman; ``permerge.glue``).
    With ``mlm_head`` (the name of the module mapping encoder states to vocabulary logits) the
    head runs on the masked positions only, which gives the same loss for a fraction of the cost.
    With ``keep`` (a list), the loss of every scored token or example is appended to it, as CPU
    float64 tensors in evaluation order (not for the exact pseudo-perplexity mode): the loss is
    their mean, and their spread gives standard errors.

    ``precision``: "fp32" (the default), "fp16" or "bf16" (the forwards under autocast: matrix
    products in half precision, norms, softmax and the losses in float32; the weights stay
    float32 and are cast once per call) or "auto" (fp16 on CUDA, fp32 elsewhere).
    ``forward_tokens``: consecutive batches of one shape are merged into forwards of up to this
    many tokens (default: CUDA_EVAL_TOKENS on a GPU, the batches as given on a CPU).  The sums
    stay on the device: one read at the end, none per batch."""
    from .stats import _autocast, resolve_precision

    precision = resolve_precision(precision, device)
    dev_type = torch.device(device).type
    if forward_tokens is None:
        forward_tokens = CUDA_EVAL_TOKENS if dev_type == "cuda" else 0
    model.eval().to(device)
    head = dict(model.named_modules())[mlm_head] if mlm_head else None
    total = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    count = 0
    per_item: list[torch.Tensor] = []
    outputs: list[torch.Tensor] = []  # predicted classes or scores, for evalset.metrics
    with _autocast(dev_type, precision):
        if evalset.kind == "mlm-exact":
            t_sum = 0.0
            for b in evalset.batches:
                t, n = _exact_nll(model, b, device, head, keys=evalset.inputs)
                t_sum, count = t_sum + t, count + n
            total += t_sum
        for b in (_forwards(evalset.batches, forward_tokens) if evalset.kind != "mlm-exact" else ()):
            inputs = {k: b[k].to(device, non_blocking=True) for k in evalset.inputs if k in b}
            if evalset.kind == "causal-lm":
                scored_host = b["attention_mask"][:, 1:].bool()
                logits = model(**inputs).logits[:, :-1]
                y, scored = inputs["input_ids"][:, 1:], inputs["attention_mask"][:, 1:].bool()
                per = F.cross_entropy(logits[scored].float(), y[scored], reduction="none")
                count += int(scored_host.sum())
            elif evalset.kind == "mlm":
                sel_host = b["labels"] != -100
                y = b["labels"].to(device, non_blocking=True)
                sel = y != -100
                if head is not None:
                    logits = head(model.base_model(**inputs).last_hidden_state[sel])
                else:
                    logits = model(**inputs).logits[sel]
                per = F.cross_entropy(logits.float(), y[sel], reduction="none")
                count += int(sel_host.sum())
            else:
                y = b["labels"].to(device, non_blocking=True)
                logits = model(**inputs).logits.float()
                if evalset.regression:
                    per = F.mse_loss(logits.squeeze(-1), y.float(), reduction="none")
                else:
                    per = F.cross_entropy(logits, y, reduction="none")
                    correct += (logits.argmax(-1) == y).sum()
                if evalset.metrics:
                    outputs.append(logits.squeeze(-1) if evalset.regression else logits.argmax(-1))
                count += len(b["labels"])
            total += per.sum(dtype=torch.float64)
            if keep is not None:
                per_item.append(per.detach())
    if count == 0:
        raise ValueError("the evaluation set has no scored tokens or examples")
    if per_item:  # one copy to the host for the whole evaluation set
        _keep(keep, torch.cat(per_item))
    loss = float(total) / count
    if evalset.kind.startswith("mlm"):
        # 2^(-(1/N) sum log2 p) = exp(mean NLL)
        return {"loss": loss, "pseudo_perplexity": math.exp(min(loss, 700.0))}
    if evalset.kind == "causal-lm":
        return {"loss": loss, "perplexity": math.exp(min(loss, 700.0))}
    out = {"loss": loss, "accuracy": float("nan") if evalset.regression else int(correct) / count}
    if evalset.metrics:
        from .glue import compute

        labels = torch.cat([b["labels"] for b in evalset.batches]).numpy()
        out.update(compute([m for m in evalset.metrics if m != "accuracy"], labels,
                           torch.cat(outputs).double().cpu().numpy(), evalset.regression))
    return out


def _keep(keep: list | None, per: torch.Tensor) -> None:
    if keep is not None:
        keep.append(per.detach().double().cpu())


def losses_along(model, state_a: dict, state_b: dict, evalset: EvalSet, lambdas, device="cpu",
                 mlm_head: str | None = None, precision: str | None = "fp32") -> list[float]:
    """The loss at each lambda of theta(lambda) = lambda * A + (1 - lambda) * B', written into
    ``model`` (a working copy of A's class on ``device``; ``state_a``/``state_b`` on the same
    device) once per point and evaluated in ``precision``."""
    from .interpolate import interpolate_into

    out = []
    for lam in lambdas:
        interpolate_into(model, state_a, state_b, float(lam))
        out.append(evaluate(model, evalset, device, mlm_head, precision=precision)["loss"])
    return out
