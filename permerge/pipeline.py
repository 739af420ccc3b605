"""The one orchestration used by the CLI and the dashboard.

checkpoints -> statistics -> permutations -> permuted model -> interpolation curves.  Each heavy
result is cached by content (see cache.py); progress is reported through a callback
``progress(stage, done, total, **info)``, which may raise ``Cancelled`` to stop a run.
"""
from __future__ import annotations

import copy
import threading
import time
from dataclasses import asdict, dataclass, field
from functools import cached_property

import numpy as np
import torch

from . import data as D
from .align import VANILLA, AlignOptions, Alignment, compute_alignment
from .arch import spec_for
from .cache import NoCache, make_key
from .checkpoints import load_pair
from .errors import DataError, IncompatibleModels, PermergeError
from .evaluate import EvalSet, evaluate, exact_evalset, mlm_evalset
from .interpolate import barrier, clone_state, curve, interpolate_state, lambda_grid
from .permute import logit_error, permute_model
from .stats import DEFAULT_FRACTIONS, StatsResult, collect_stats, resolve_precision


class Cancelled(PermergeError):
    """Raised by a progress callback to stop a run; nothing is cached for the stopped stage."""


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise PermergeError("--device cuda was asked for, but no CUDA GPU is available")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise PermergeError(f"unknown device {device!r}: use auto, cpu or cuda")
    return device


@dataclass(frozen=True)
class Job:
    model_a: str
    model_b: str
    data: str
    tokens: int | None = None  # bound on alignment tokens
    eval_data: str | None = None  # plain text for MLM evaluation (default: held-out tail of data)
    eval_blocks: int = 64  # MLM evaluation blocks of 128 tokens
    eval_examples: int | None = None  # cap on classification dev examples
    device: str = "auto"
    batch_size: int = 16
    fractions: tuple = DEFAULT_FRACTIONS
    exclude_special: bool = False
    mask_seed: int = 0
    exact_pppl: bool = False  # one-token-at-a-time pseudo-perplexity (slow)
    precision: str = "auto"  # statistics-pass forwards: auto (fp16 on CUDA, fp32 on CPU), fp32, fp16, bf16

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Prepared:
    align_batches: list[dict]
    evalset: EvalSet
    data_hash: str
    eval_hash: str
    task: str | None = None


@dataclass
class CurveResult:
    method: str
    options: dict
    rows: list[dict]  # lambda, loss, and pseudo_perplexity or accuracy
    barrier: float
    barrier_lambda: float
    loss_a: float
    loss_b: float  # the ORIGINAL B's loss
    function_preserving: bool
    fraction: float = 1.0
    tokens: int | None = None


@dataclass
class Pipeline:
    job: Job
    cache: object = field(default_factory=NoCache)
    progress: object = None
    distributed: bool = False
    timings: dict = field(default_factory=dict)
    # one computation at a time per pipeline (a dashboard may share it between threads)
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)

    # --- stages --------------------------------------------------------------------------
    @cached_property
    def pair(self):
        t = time.perf_counter()
        a, b = load_pair(self.job.model_a, self.job.model_b)
        ta, tb = a.tokenizer, b.tokenizer
        if ta is not None and tb is not None and ta.get_vocab() != tb.get_vocab():
            raise IncompatibleModels("the checkpoints' tokenizers have different vocabularies")
        self.timings["load_s"] = time.perf_counter() - t
        return a, b

    @cached_property
    def spec(self):
        return spec_for(self.pair[0].model)

    @property
    def tokenizer(self):
        a, b = self.pair
        return b.tokenizer or a.tokenizer

    @property
    def block(self) -> int:
        """128-token blocks, or the model's maximum length when that is shorter."""
        return min(D.BLOCK, self.pair[0].config.max_position_embeddings)

    @cached_property
    def device(self) -> str:
        return resolve_device(self.job.device)

    @cached_property
    def prepared(self) -> Prepared:
        t = time.perf_counter()
        prep = self._prepare_data()
        self.timings["data_s"] = time.perf_counter() - t
        return prep

    def _prepare_data(self) -> Prepared:
        job, tok = self.job, self.tokenizer
        head = self.spec.head
        special = tuple(tok.all_special_ids) if tok is not None else ()
        if D.is_task_folder(job.data):
            train, dev = D.read_task(job.data, "train"), D.read_task(job.data, "dev")
            if head == "classifier":
                nl = self.pair[0].config.num_labels
                if dev.num_labels > nl or (dev.regression != (nl == 1)):
                    raise DataError(f"task {dev.name} has {dev.num_labels} label(s); the checkpoints have {nl}")
            align = D.limit_tokens(D.task_batches(tok, train, job.batch_size, self.block), job.tokens)
            if job.eval_examples:
                dev = D.Task(dev.name, dev.texts_a[:job.eval_examples],
                             dev.texts_b[:job.eval_examples] if dev.texts_b else None,
                             dev.labels[:job.eval_examples], dev.regression, dev.num_labels)
            if head == "classifier":
                ev = EvalSet("classification", D.task_batches(tok, dev, 32, self.block), regression=dev.regression)
            else:
                text = "\n".join(dev.texts_a + (dev.texts_b or []))
                ev = self._mlm_eval(D.text_blocks(tok, text, self.block)[: job.eval_blocks])
            task = dev.name
        else:
            if head == "classifier":
                raise DataError("a classifier pair needs a GLUE-format task folder (train.tsv, dev.tsv) as --data")
            blocks = D.text_blocks(tok, D.read_text(job.data), self.block)
            if job.eval_data:
                eval_blocks = D.text_blocks(tok, D.read_text(job.eval_data), self.block)[: job.eval_blocks]
            else:  # hold out the tail of the data for evaluation
                k = min(job.eval_blocks, len(blocks) // 2)
                if k == 0:
                    raise DataError("the data is too short to hold out evaluation blocks; give --eval-data")
                blocks, eval_blocks = blocks[:-k], blocks[-k:]
            align = D.limit_tokens(D.block_batches(blocks, job.batch_size, special), job.tokens)
            ev = self._mlm_eval(eval_blocks) if head == "mlm" else EvalSet("none", [])
            task = None
        if not align:
            raise DataError("no alignment data")
        return Prepared(align, ev, D.content_hash(align), D.content_hash(ev.batches), task)

    def _mlm_eval(self, blocks) -> EvalSet:
        if len(blocks) == 0:
            raise DataError("no evaluation blocks")
        if self.job.exact_pppl:
            tok = self.tokenizer
            return exact_evalset(blocks, tok.all_special_ids, tok.mask_token_id)
        return mlm_evalset(D.mlm_masks(self.tokenizer, blocks, seed=self.job.mask_seed), batch_size=32)

    @property
    def stats_key(self) -> str:
        a, b = self.pair
        return make_key("stats", a=a.content_hash, b=b.content_hash, data=self.prepared.data_hash,
                        fractions=list(self.job.fractions), exclude_special=self.job.exclude_special,
                        precision=resolve_precision(self.job.precision, self.device))

    def stats(self) -> StatsResult:
        def compute():
            t = time.perf_counter()
            a, b = self.pair
            res = collect_stats(a.model, b.model, self.spec, self.prepared.align_batches, device=self.device,
                                fractions=self.job.fractions, exclude_special=self.job.exclude_special,
                                progress=self.progress, distributed=self.distributed, precision=self.job.precision)
            self.timings["statistics_s"] = time.perf_counter() - t
            return res.to_numpy()

        with self.lock:
            if "_stats" not in self.__dict__:
                self.__dict__["_stats"] = StatsResult.from_numpy(self.cache.get_or_compute(self.stats_key, compute))
            return self.__dict__["_stats"]

    def alignment(self, options: AlignOptions, fraction: float = 1.0) -> Alignment:
        memo = self.__dict__.setdefault("_alignments", {})
        if (options, fraction) not in memo:
            def compute():
                t = time.perf_counter()
                al = compute_alignment(self.spec, self.stats().at(fraction), options, progress=self.progress)
                self.timings["assignment_s"] = time.perf_counter() - t
                return al

            key = make_key("alignment", stats=self.stats_key, options=options.to_dict(), fraction=fraction)
            with self.lock:
                memo[options, fraction] = self.cache.get_or_compute(key, compute)
        return memo[options, fraction]

    def permuted(self, options: AlignOptions, fraction: float = 1.0):
        t = time.perf_counter()
        model = permute_model(self.pair[1].model, self.spec, self.alignment(options, fraction).perms)
        self.timings["permute_s"] = time.perf_counter() - t
        return model

    def merged(self, options: AlignOptions, lam: float, fraction: float = 1.0):
        """theta(lambda) = lambda * A + (1 - lambda) * B' as a model of A's class (on the CPU)."""
        a = self.pair[0].model
        bp = self.permuted(options, fraction) if options != VANILLA else self.pair[1].model
        model = copy.deepcopy(a).cpu()
        model.load_state_dict(interpolate_state(clone_state(a), clone_state(bp), float(lam)))
        return model

    def probe_batch(self) -> dict:
        b = self.prepared.align_batches[0]
        return {k: b[k][:8] for k in ("input_ids", "attention_mask", "token_type_ids")}

    def function_check(self, options: AlignOptions, model_bp=None) -> dict:
        """B' against B on a probe batch of the alignment data."""
        t = time.perf_counter()
        bp = model_bp if model_bp is not None else self.permuted(options)
        dev = self.device
        batch = {k: v.to(dev) for k, v in self.probe_batch().items()}
        err = logit_error(self.pair[1].model.to(dev), bp.to(dev), batch, self.spec, self.alignment(options).perms)
        self.timings["check_s"] = time.perf_counter() - t
        return err

    def curve(self, options: AlignOptions, lambdas: int = 21, fraction: float = 1.0) -> CurveResult:
        """Loss (and pseudo-perplexity or accuracy) along lambda between A and B'."""
        if self.prepared.evalset.kind == "none":
            raise DataError("a bare encoder has no loss to interpolate; use an MLM or a classifier")
        vanilla = options == VANILLA
        a, b = self.pair
        key = make_key("curve", a=a.content_hash, b=b.content_hash, eval=self.prepared.eval_hash,
                       stats=None if vanilla else self.stats_key, options=options.to_dict(),
                       fraction=None if vanilla else fraction, lambdas=lambdas, device_kind=self.device.split(":")[0])

        def compute():
            t = time.perf_counter()
            grid = lambda_grid(lambdas)
            model_b = b.model if vanilla else self.permuted(options, fraction)
            work = copy.deepcopy(a.model).to(self.device)  # a working copy
            state_a = {k: v.to(self.device) for k, v in clone_state(a.model).items()}
            state_b = {k: v.to(self.device) for k, v in clone_state(model_b).items()}
            rows = curve(work, state_a, state_b, grid, lambda m: evaluate(m, self.prepared.evalset, self.device, self.spec.mlm_head),
                         progress=self.progress, label=options.label())
            loss_a = rows[-1]["loss"]
            loss_b = rows[0]["loss"] if vanilla else self.original_b_loss(lambdas)
            bar, lam = barrier(grid, [r["loss"] for r in rows], loss_a, loss_b)
            self.timings.setdefault("interpolation_s", 0.0)
            self.timings["interpolation_s"] += time.perf_counter() - t
            snap_tokens = None if vanilla else self.stats().snapshot_tokens.get(fraction)
            return CurveResult(options.label(), options.to_dict(), rows, bar, lam, loss_a, loss_b,
                               options.function_preserving, fraction, snap_tokens)

        with self.lock:
            return self.cache.get_or_compute(key, compute)

    def original_b_loss(self, lambdas: int = 21) -> float:
        return self.curve(VANILLA, lambdas).rows[0]["loss"]


def _tls(pipe: Pipeline) -> threading.local:
    return pipe.__dict__.setdefault("_progress_tls", threading.local())


# The progress callback is per thread: the dashboard shares one Pipeline between the jobs of
# several sessions, each on its own worker thread, so one job's callback (which raises Cancelled
# once its user cancels) must never see another job's work.
Pipeline.progress = property(lambda self: getattr(_tls(self), "callback", None),
                             lambda self, cb: setattr(_tls(self), "callback", cb),
                             doc="progress(stage, done, total, **info) for the calling thread")


def curve_table(results: list[CurveResult]):
    """Rows of curve.csv: lambda, method, loss, and pseudo_perplexity or accuracy."""
    import pandas as pd

    rows = [{"lambda": r["lambda"], "method": c.method, **{k: v for k, v in r.items() if k != "lambda"}}
            for c in results for r in c.rows]
    return pd.DataFrame(rows)


def barrier_summary(results: list[CurveResult]) -> dict:
    return {c.method: {"barrier": c.barrier, "lambda": c.barrier_lambda, "loss_a": c.loss_a,
                       "loss_b": c.loss_b, "function_preserving": c.function_preserving,
                       "options": c.options} for c in results}


def permutations_tensors(al: Alignment) -> dict[str, torch.Tensor]:
    return {g: torch.tensor(np.asarray(p), dtype=torch.int64) for g, p in al.perms.items()}  # copies: no shared memory
