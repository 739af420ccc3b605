"""Apply index permutations to a model through its ArchSpec, and check functional equivalence.

Convention everywhere: ``perm[i] = j`` means unit i of B' is unit j of B (row i of B' is row
``perm[i]`` of B).  Permuting is an index gather along each named axis; nothing is rescaled.
"""
from __future__ import annotations

import copy

import numpy as np
import torch

from .arch import ArchSpec
from .arch.spec import axis_index


def permute_state_dict(state: dict[str, torch.Tensor], spec: ArchSpec,
                       perms: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Return a new state dict with every axis named in ``spec.axes`` gathered by its group's
    permutation.  An axis entry ``(group, k)`` is the permutation tiled k times with offsets (a fused
    weight holding k blocks side by side); a ``View`` derives its gather from attention groups'
    permutations (key/value heads, per-head fused blocks; see arch/spec.py).  Parameters not in the spec, and groups without a
    permutation, are unchanged.  Tied weights are stored once in ``spec.axes``; their aliases are
    rebuilt by ``load_state_dict``."""
    out = dict(state)
    idx_cache: dict[object, torch.Tensor] = {}
    for name, axes in spec.axes.items():
        if name not in state:
            continue
        w = state[name]
        for axis, entry in enumerate(axes):
            if entry is None:
                continue
            key = entry
            if key not in idx_cache:
                idx = axis_index(entry, perms)
                idx_cache[key] = None if idx is None else torch.as_tensor(np.asarray(idx), dtype=torch.long)
            idx = idx_cache[key]
            if idx is None:
                continue
            idx = idx.to(w.device)
            if idx.numel() != w.shape[axis]:
                raise ValueError(f"permutation {entry} has {idx.numel()} entries, {name} axis {axis} "
                                 f"has {w.shape[axis]}")
            w = w.index_select(axis, idx)
        out[name] = w
    return out


def permute_model(model, spec: ArchSpec, perms: dict[str, np.ndarray]):
    """A deep copy of ``model`` with the permutations applied (B -> B')."""
    new = copy.deepcopy(model)
    state = {n: p.detach() for n, p in model.named_parameters()}
    permuted = permute_state_dict(state, spec, perms)
    with torch.no_grad():
        for n, p in new.named_parameters():
            p.copy_(permuted[n])
    return new


@torch.no_grad()
def logit_error(model_b, model_bp, batch: dict[str, torch.Tensor], spec: ArchSpec | None = None,
                perms: dict[str, np.ndarray] | None = None, dtype=torch.float32) -> dict[str, float]:
    """Max absolute and max relative (to B's largest output) difference of B' against B.  Heads
    (MLM, classifier) compare logits.  A bare encoder's last hidden state lives in the residual
    basis, so B's is gathered by the last residual permutation (give ``spec`` and ``perms``)."""
    model_b.eval()
    model_bp.eval()
    return _output_error(model_b(**batch), model_bp(**batch), spec, perms, dtype)


def _output_error(raw_b, raw_p, spec, perms, dtype) -> dict[str, float]:
    out_b, out_p = _logits(raw_b, dtype), _logits(raw_p, dtype)
    if not hasattr(raw_b, "logits") and spec is not None and perms:
        last = spec.residual_points[-1]
        if last in perms:
            out_b = out_b[..., torch.as_tensor(np.asarray(perms[last]), dtype=torch.long)]
    diff = (out_b - out_p).abs().max().item()
    scale = out_b.abs().max().item()
    return {"max_abs_logit_error": diff, "max_rel_logit_error": diff / max(scale, 1e-30)}


def _logits(out, dtype=torch.float32) -> torch.Tensor:
    if hasattr(out, "logits"):
        return out.logits.to(dtype)
    return out.last_hidden_state.to(dtype)


EQUIVALENCE_TOL = 1e-9  # relative, in float64


def _cpu_float64_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A float64 copy of ``model`` on the CPU.  Each parameter and buffer is copied straight to the
    CPU (no second copy of the weights on the model's device); tied weights stay tied."""
    def cpu(t):
        return t.detach().to("cpu", torch.float64 if t.is_floating_point() else t.dtype, copy=True)

    memo = {}
    for p in model.parameters():
        memo[id(p)] = torch.nn.Parameter(cpu(p), requires_grad=p.requires_grad)
    for b in model.buffers():
        memo[id(b)] = cpu(b)
    return copy.deepcopy(model, memo).to("cpu", torch.float64)


@torch.no_grad()
def equivalence(model_b, model_bp, batch: dict[str, torch.Tensor], spec: ArchSpec | None = None,
                perms: dict[str, np.ndarray] | None = None, tol: float | None = None) -> dict:
    """Does B' compute B's function?  The check runs on float64 copies on the CPU, where rounding
    is about 1e-16 relative and grows with depth and width to far below ``tol``, so a correct
    permutation passes for any model size, while a real break (a weight left unpermuted, a wrong
    axis) gives an error of the order of the logits.  In float32 the same check on a correct
    permutation reaches 1e-5 relative on realistic models, which is why it is not judged there.
    A family whose modules compute in float32 even in a float64 model (the Hugging Face RMSNorm
    does) names its own, float32-level tolerance in its table (``Family.equivalence_tol``).
    Returns ``max_rel_logit_error_float64``, ``equivalence_tolerance`` and ``equivalent``."""
    if tol is None:
        table = getattr(spec, "table", None)
        tol = getattr(table, "equivalence_tol", None) or EQUIVALENCE_TOL
    batch = {k: v.to("cpu") for k, v in batch.items()}

    def outputs(model):  # one float64 copy at a time: the check costs one model in float64, not two
        m64 = _cpu_float64_copy(model).eval()
        return m64(**batch)

    raw_b = outputs(model_b)
    err = _output_error(raw_b, outputs(model_bp), spec, perms, torch.float64)
    rel = err["max_rel_logit_error"]
    return {"max_rel_logit_error_float64": rel, "equivalence_tolerance": tol, "equivalent": bool(rel < tol)}
