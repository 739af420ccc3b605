"""Evaluation with fixed inputs: MLM loss and pseudo-perplexity on fixed masks, classification
loss (cross-entropy, or MSE for a regression task) and accuracy."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class EvalSet:
    """Fixed evaluation batches.  kind "mlm": input_ids with masks applied and labels (-100 off the
    selected tokens); kind "classification": encoded sentences and labels."""
    kind: str
    batches: list[dict]
    regression: bool = False


def mlm_evalset(masked: dict, batch_size: int = 32) -> EvalSet:
    ids, labels = masked["input_ids"], masked["labels"]
    batches = [{"input_ids": ids[i:i + batch_size], "attention_mask": torch.ones_like(ids[i:i + batch_size]),
                "token_type_ids": torch.zeros_like(ids[i:i + batch_size]), "labels": labels[i:i + batch_size]}
               for i in range(0, len(ids), batch_size)]
    return EvalSet("mlm", batches)


@torch.no_grad()
def evaluate(model, evalset: EvalSet, device="cpu", mlm_head: str | None = None) -> dict[str, float]:
    """{"loss", "pseudo_perplexity"} for MLM, {"loss", "accuracy"} for classification.
    With ``mlm_head`` (the name of the module mapping encoder states to vocabulary logits) the
    head runs on the masked positions only, which gives the same loss for a fraction of the cost."""
    model.eval().to(device)
    head = dict(model.named_modules())[mlm_head] if mlm_head else None
    total, count, correct = 0.0, 0, 0
    for b in evalset.batches:
        inputs = {k: b[k].to(device) for k in ("input_ids", "attention_mask", "token_type_ids")}
        y = b["labels"].to(device)
        if evalset.kind == "mlm":
            sel = y != -100
            if head is not None:
                logits = head(model.base_model(**inputs).last_hidden_state[sel]).float()
            else:
                logits = model(**inputs).logits.float()[sel]
            total += F.cross_entropy(logits, y[sel], reduction="sum").item()
            count += int(sel.sum())
            continue
        logits = model(**inputs).logits.float()
        if evalset.regression:
            total += F.mse_loss(logits.squeeze(-1), y.float(), reduction="sum").item()
            count += len(y)
        else:
            total += F.cross_entropy(logits, y, reduction="sum").item()
            correct += int((logits.argmax(-1) == y).sum())
            count += len(y)
    if count == 0:
        raise ValueError("the evaluation set has no scored tokens or examples")
    loss = total / count
    if evalset.kind == "mlm":
        # 2^(-(1/N) sum log2 p) = exp(mean NLL)
        return {"loss": loss, "pseudo_perplexity": math.exp(min(loss, 700.0))}
    return {"loss": loss, "accuracy": float("nan") if evalset.regression else correct / count}
