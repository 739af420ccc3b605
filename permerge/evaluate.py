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


@torch.no_grad()
def evaluate(model, evalset: EvalSet, device="cpu", mlm_head: str | None = None,
             keep: list | None = None) -> dict[str, float]:
    """{"loss", "pseudo_perplexity"} for MLM, {"loss", "perplexity"} for a causal LM,
    {"loss", "accuracy"} for classification.
    With ``mlm_head`` (the name of the module mapping encoder states to vocabulary logits) the
    head runs on the masked positions only, which gives the same loss for a fraction of the cost.
    With ``keep`` (a list), the loss of every scored token or example is appended to it, as CPU
    float64 tensors in evaluation order (not for the exact pseudo-perplexity mode): the loss is
    their mean, and their spread gives standard errors."""
    model.eval().to(device)
    head = dict(model.named_modules())[mlm_head] if mlm_head else None
    total, count, correct = 0.0, 0, 0
    for b in evalset.batches:
        if evalset.kind == "mlm-exact":
            t, n = _exact_nll(model, b, device, head, keys=evalset.inputs)
            total, count = total + t, count + n
            continue
        inputs = {k: b[k].to(device) for k in evalset.inputs if k in b}
        if evalset.kind == "causal-lm":
            logits = model(**inputs).logits.float()[:, :-1]
            y, scored = inputs["input_ids"][:, 1:], inputs["attention_mask"][:, 1:].bool()
            per = F.cross_entropy(logits[scored], y[scored], reduction="none")
            _keep(keep, per)
            total += per.sum().item()
            count += int(scored.sum())
            continue
        y = b["labels"].to(device)
        if evalset.kind == "mlm":
            sel = y != -100
            if head is not None:
                logits = head(model.base_model(**inputs).last_hidden_state[sel]).float()
            else:
                logits = model(**inputs).logits.float()[sel]
            per = F.cross_entropy(logits, y[sel], reduction="none")
            _keep(keep, per)
            total += per.sum().item()
            count += int(sel.sum())
            continue
        logits = model(**inputs).logits.float()
        if evalset.regression:
            per = F.mse_loss(logits.squeeze(-1), y.float(), reduction="none")
            _keep(keep, per)
            total += per.sum().item()
            count += len(y)
        else:
            per = F.cross_entropy(logits, y, reduction="none")
            _keep(keep, per)
            total += per.sum().item()
            correct += int((logits.argmax(-1) == y).sum())
            count += len(y)
    if count == 0:
        raise ValueError("the evaluation set has no scored tokens or examples")
    loss = total / count
    if evalset.kind.startswith("mlm"):
        # 2^(-(1/N) sum log2 p) = exp(mean NLL)
        return {"loss": loss, "pseudo_perplexity": math.exp(min(loss, 700.0))}
    if evalset.kind == "causal-lm":
        return {"loss": loss, "perplexity": math.exp(min(loss, 700.0))}
    return {"loss": loss, "accuracy": float("nan") if evalset.regression else correct / count}


def _keep(keep: list | None, per: torch.Tensor) -> None:
    if keep is not None:
        keep.append(per.detach().double().cpu())
