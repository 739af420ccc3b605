"""The one orchestration used by the CLI and the dashboard.

checkpoints -> statistics -> permutations -> permuted model -> interpolation curves.  Each heavy
result is cached by content (see cache.py); progress is reported through a callback
``progress(stage, done, total, **info)``, which may raise ``Cancelled`` to stop a run.  The
callback is given per call (``pipe.curve(options, progress=cb)``), so that one Pipeline shared by
several threads reports each thread's work to that thread's own callback; ``Pipeline(progress=...)``
is the default for calls that give none (the CLI's progress bars).
"""
from __future__ import annotations

import copy
import gc
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
from .checkpoints import check_tokenizers, load_pair
from .errors import Cancelled, DataError, IncompatibleModels, PermergeError  # noqa: F401 (Cancelled: re-export)
from .evaluate import EvalSet, causal_evalset, evaluate, exact_evalset, mlm_evalset
from .interpolate import (barrier, barrier_sem, check_finite_loss, clone_state, coarse_first, interpolate_into,
                          interpolate_state, lambda_grid)
from .memory import give_back
from .permute import equivalence, logit_error, permute_model
from .results import CurveResult  # noqa: F401 (re-exported: callers import it from here)
from .stats import DEFAULT_FRACTIONS, StatsResult, collect_stats, resolve_precision, stats_bytes

# statistics larger than this are released once a job's alignments are computed (Pipeline.release_stats)
RELEASE_BYTES = 256 << 20


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    index = device[5:] if device.startswith("cuda:") else None
    if device not in ("cpu", "cuda") and not (index and index.isdigit()):
        raise PermergeError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise PermergeError(f"--device {device} was asked for, but no CUDA GPU is available")
    if index is not None and int(index) >= torch.cuda.device_count():
        raise PermergeError(f"--device {device}: there is no GPU {index} (this machine has "
                            f"{torch.cuda.device_count()}: cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    return device


@dataclass(frozen=True)
class Job:
    model_a: str
    model_b: str
    data: str | None  # None: no alignment data (weight matching), evaluation from eval_data
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
    precision: str = "auto"  # forwards of the statistics pass and the evaluation: auto (fp16 on CUDA, fp32 on CPU), fp32, fp16, bf16
    glue_task: str | None = None  # the GLUE task a task folder holds (default: the one its folder's name names)

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
class Pipeline:
    job: Job
    cache: object = field(default_factory=NoCache)
    progress: object = None  # default callback for calls that give none (one thread: the CLI)
    distributed: bool = False
    timings: dict = field(default_factory=dict)
    # one computation at a time per pipeline (a dashboard may share it between threads)
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)
    # memos of the stages (the heavy results also live in the cache)
    _stats: StatsResult | None = field(default=None, init=False, repr=False, compare=False)
    # tokens, sentences and snapshot tokens of the statistics: kept when the matrices are released
    _stats_info: dict | None = field(default=None, init=False, repr=False, compare=False)
    _alignments: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    # --- stages --------------------------------------------------------------------------
    @cached_property
    def pair(self):
        t = time.perf_counter()
        a, b = load_pair(self.job.model_a, self.job.model_b)
        check_tokenizers(a, b)  # one tokenizer for the pair, its ids within the embeddings
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
        return min(D.BLOCK, self.spec.table.longest_input(self.pair[0].config))

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
        if job.data is None:
            return self._prepare_eval_only()
        head = self.spec.head
        special = tuple(tok.all_special_ids) if tok is not None else ()
        if D.is_task_folder(job.data) and self.spec.evaluation == "causal-lm":
            raise DataError("a causal-LM pair takes plain text as --data, not a task folder")
        if D.is_task_folder(job.data):
            train, dev = D.read_task(job.data, "train", job.glue_task), D.read_task(job.data, "dev", job.glue_task)
            if head == "classifier":  # file and line of the first label that does not fit (dev: below)
                D.check_task_labels(train, self.pair[0].config.num_labels)
            ev = self._classifier_eval(job.data) if head == "classifier" else None
            align = D.limit_tokens(D.iter_task_batches(tok, train, job.batch_size, self.block), job.tokens)
            dev = self._eval_cut(dev)
            if ev is None:
                text = "\n".join(dev.texts_a + (dev.texts_b or []))
                ev = self._mlm_eval(D.text_blocks(tok, text, self.block)[: job.eval_blocks])
            task = dev.name
        else:  # plain text: no labels are needed to align, only to evaluate a classifier
            specials = self.spec.table.block_specials
            hold_out = 0 if head == "classifier" or job.eval_data else job.eval_blocks
            blocks, tail = D.text_data(tok, job.data, self.block, specials, job.tokens, hold_out)
            if head == "classifier":
                align = D.limit_tokens(D.block_batches(blocks, job.batch_size, special), job.tokens)
                if not align:  # before reading the evaluation folder
                    raise DataError("no alignment data")
                ev = self._classifier_eval(job.eval_data)
            else:
                if job.eval_data:
                    eval_blocks = D.text_data(tok, job.eval_data, self.block, specials, job.eval_blocks * self.block)[0]
                else:  # the tail of the data, held out for evaluation
                    eval_blocks = tail
                align = D.limit_tokens(D.block_batches(blocks, job.batch_size, special), job.tokens)
                if self.spec.evaluation == "mlm":
                    ev = self._mlm_eval(eval_blocks)
                elif self.spec.evaluation == "causal-lm":
                    ev = causal_evalset(eval_blocks, self.spec.inputs)
                else:
                    ev = EvalSet("none", [], self.spec.inputs)
            task = None
        if not align:
            raise DataError("no alignment data")
        return Prepared(align, ev, D.content_hash(align), _eval_hash(ev), task)

    def _prepare_eval_only(self) -> Prepared:
        """No alignment data (weight matching needs none): evaluation from ``eval_data`` alone."""
        job, spec = self.job, self.spec
        if spec.head == "classifier":
            ev = self._classifier_eval(job.eval_data)
        elif not job.eval_data or spec.evaluation == "none":
            ev = EvalSet("none", [], spec.inputs)
        else:
            blocks = D.text_data(self.tokenizer, job.eval_data, self.block, spec.table.block_specials,
                                 job.eval_blocks * self.block)[0][: job.eval_blocks]  # as for activation matching
            ev = self._mlm_eval(blocks) if spec.evaluation == "mlm" else causal_evalset(blocks, spec.inputs)
        return Prepared([], ev, D.content_hash([]), _eval_hash(ev), None)

    def _classifier_eval(self, folder: str | None) -> EvalSet:
        """A classifier aligned on plain text is evaluated on a task folder's dev.tsv when one is
        given (``eval_data``), else not at all (the alignment and the B' check still run)."""
        if not folder:
            return EvalSet("none", [], self.spec.inputs)
        if not D.is_task_folder(folder):
            raise DataError(f"a classifier is evaluated on a GLUE-format task folder (dev.tsv): {folder} is not one")
        dev = D.read_task(folder, "dev", self.job.glue_task)
        D.check_task_labels(dev, self.pair[0].config.num_labels)
        dev = self._eval_cut(dev)
        return EvalSet("classification", D.task_batches(self.tokenizer, dev, 32, self.block), self.spec.inputs,
                       regression=dev.regression, metrics=dev.metrics if dev.glue else ())

    def _eval_cut(self, dev: D.Task) -> D.Task:
        """The first ``eval_examples`` examples of a task (all of them when it is 0)."""
        n = self.job.eval_examples
        if not n:
            return dev
        return D.Task(dev.name, dev.texts_a[:n], dev.texts_b[:n] if dev.texts_b else None, dev.labels[:n],
                      dev.regression, dev.num_labels, glue=dev.glue)

    def _mlm_eval(self, blocks) -> EvalSet:
        if len(blocks) == 0:
            raise DataError("no evaluation blocks")
        if self.job.exact_pppl:
            tok = self.tokenizer
            return exact_evalset(blocks, tok.all_special_ids, tok.mask_token_id, self.spec.inputs)
        return mlm_evalset(D.mlm_masks(self.tokenizer, blocks, seed=self.job.mask_seed), self.spec.inputs, batch_size=32)

    @property
    def stats_key(self) -> str:
        a, b = self.pair
        return make_key("stats", a=a.content_hash, b=b.content_hash, data=self.prepared.data_hash,
                        fractions=list(self.job.fractions), exclude_special=self.job.exclude_special,
                        precision=resolve_precision(self.job.precision, self.device))

    @property
    def eval_precision(self) -> str:
        """The evaluation's forwards along lambda: the job's precision (auto: fp16 on CUDA, fp32
        on the CPU); part of every curve and point key, so that curves of two precisions never mix."""
        return resolve_precision(self.job.precision, self.device)

    def _cb(self, progress):
        return progress if progress is not None else self.progress

    def stats(self, progress=None) -> StatsResult:
        if self.job.data is None:
            raise DataError("activation statistics need alignment data (--data); weight matching needs none")

        def compute():
            t = time.perf_counter()
            a, b = self.pair
            res = collect_stats(a.model, b.model, self.spec, self.prepared.align_batches, device=self.device,
                                fractions=self.job.fractions, exclude_special=self.job.exclude_special,
                                progress=self._cb(progress), distributed=self.distributed, precision=self.job.precision)
            self.timings["statistics_s"] = time.perf_counter() - t
            return res.to_numpy()

        with self.lock:
            if self._stats is None:
                self._stats = StatsResult.from_numpy(self.cache.get_or_compute(self.stats_key, compute))
                st = self._stats
                self._stats_info = {"tokens": st.tokens, "sentences": st.sentences,
                                    "snapshot_tokens": dict(st.snapshot_tokens)}
                give_back()  # the pass's activations and its streaming buffers go back to the system
            return self._stats

    def stats_info(self, progress=None) -> dict:
        """``tokens``, ``sentences`` and ``snapshot_tokens`` of the statistics, without holding
        their matrices (computed, or read from the cache, when not known yet)."""
        with self.lock:
            if self._stats_info is None:
                self.stats(progress)
            return self._stats_info

    def release_stats(self, keep_bytes: int = RELEASE_BYTES) -> bool:
        """Let go of the statistics' matrices when they hold more than ``keep_bytes`` (bert-base:
        1.08 GB of float64), once the alignments that need them are computed: a later ``stats()``
        reads them back from the cache (or computes them again without one).  Small statistics stay
        in memory.  True when released."""
        with self.lock:
            st = self._stats
            if st is None or stats_bytes(st) <= keep_bytes:
                return False
            self._stats = None
        del st
        gc.collect()  # the matrices sit in reference cycles: without a collection they stayed until the job's end
        give_back()  # and their memory goes back to the system before the curves (memory.py)
        return True

    def alignment(self, options: AlignOptions, fraction: float = 1.0, progress=None) -> Alignment:
        if options.matcher == "weight":
            return self.weight_alignment(options, progress)
        memo = self._alignments
        if (options, fraction) not in memo:
            def compute():
                points = self.stats(progress).at(fraction)  # timed on its own, not as assignment time
                t = time.perf_counter()
                al = compute_alignment(self.spec, points, options, progress=self._cb(progress))
                self.timings["assignment_s"] = time.perf_counter() - t
                return al

            key = make_key("alignment", stats=self.stats_key, options=options.to_dict(), fraction=fraction)
            with self.lock:
                memo[options, fraction] = self.cache.get_or_compute(key, compute)
        return memo[options, fraction]

    def weight_alignment(self, options: AlignOptions, progress=None) -> Alignment:
        """Weight matching (weight_match.py): permutations from the two checkpoints' weights alone,
        cached under the pair and the options; no data, so no statistics fraction."""
        from .weight_match import MAX_SWEEPS, SEED, weight_alignment

        def compute():
            t = time.perf_counter()
            a, b = self.pair
            al, trace = weight_alignment(self.spec, a.model, b.model, options, progress=self._cb(progress))
            al.trace = trace
            self.timings["weight_matching_s"] = time.perf_counter() - t
            return al

        memo = self._alignments
        if (options, None) not in memo:
            a, b = self.pair
            key = make_key("alignment", a=a.content_hash, b=b.content_hash, options=options.to_dict(),
                           sweeps=MAX_SWEEPS, seed=SEED)
            with self.lock:
                memo[options, None] = self.cache.get_or_compute(key, compute)
        return memo[options, None]

    def _aligned_on(self, options: AlignOptions) -> str | None:
        """What an aligned result depends on besides the pair and the options: the statistics
        (activation matching) or nothing (weight matching)."""
        return None if options.matcher == "weight" else self.stats_key

    def permuted(self, options: AlignOptions, fraction: float = 1.0, progress=None):
        t = time.perf_counter()
        model = permute_model(self.pair[1].model, self.spec, self.alignment(options, fraction, progress).perms)
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
        if not self.prepared.align_batches:  # no alignment data: random tokens (any input checks B')
            ids = torch.randint(0, self.pair[0].config.vocab_size, (8, min(self.block, 64)),
                                generator=torch.Generator().manual_seed(0))
            b = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}
            return self.spec.model_inputs(b)
        b = self.prepared.align_batches[0]
        return {k: v[:8] for k, v in self.spec.model_inputs(b).items()}

    def forward_seconds_per_token(self) -> float:
        """Seconds per token of B's evaluation (``evaluate``, as a curve point runs it: the MLM head on
        the masked positions only) over the first evaluation batch, timed after a warm-up on one of its
        sequences, the faster of two calls; a forward of the probe batch when there is no evaluation set.
        A first measure of a curve's speed before any curve has run (it costs about two batches of one
        curve point)."""
        import dataclasses

        from .evaluate import evaluate

        dev = self.device
        model = self.pair[1].model.to(dev).eval()
        ev = self.prepared.evalset
        if ev.kind == "none" or not ev.batches:
            batch = {k: v.to(dev) for k, v in self.probe_batch().items()}
            with torch.no_grad():
                model(**{k: v[:1] for k, v in batch.items()})  # warm-up
                t = time.perf_counter()
                model(**batch)
                return (time.perf_counter() - t) / max(int(batch["input_ids"].numel()), 1)
        first = ev.batches[0]
        one = dataclasses.replace(ev, batches=[{k: v[:1] for k, v in first.items()}])
        evaluate(model, one, dev, self.spec.mlm_head, precision=self.eval_precision)  # warm-up
        times = []
        for _ in range(2):  # the faster of two: other work on the machine only ever slows a call down
            t = time.perf_counter()
            evaluate(model, dataclasses.replace(ev, batches=[first]), dev, self.spec.mlm_head,
                     precision=self.eval_precision)
            times.append(time.perf_counter() - t)
        return min(times) / max(int(first["input_ids"].numel()), 1)

    def function_check(self, options: AlignOptions, model_bp=None, progress=None) -> dict:
        """B' against B on a probe batch of the alignment data: the float32 errors on the run's
        device, and the judgement ``equivalent`` from the same check in float64 (see
        ``permute.equivalence``), so that float32 rounding in a deep or wide model is no alarm."""
        t = time.perf_counter()
        bp = model_bp if model_bp is not None else self.permuted(options, progress=progress)
        dev = self.device
        perms = self.alignment(options, progress=progress).perms
        batch = self.probe_batch()
        err = logit_error(self.pair[1].model.to(dev), bp.to(dev), {k: v.to(dev) for k, v in batch.items()},
                          self.spec, perms)
        err.update(equivalence(self.pair[1].model, bp, batch, self.spec, perms))
        del bp
        give_back()  # the float64 copies' memory goes back to the system
        self.timings["check_s"] = time.perf_counter() - t
        return err

    def _point_key(self, options: AlignOptions, fraction: float, lam: float) -> str:
        """Cache key of one point of a curve.  lambda = 1 is A itself, whatever the options."""
        a, b = self.pair
        vanilla = options == VANILLA
        if lam == 1.0:
            return make_key("point", a=a.content_hash, eval=self.prepared.eval_hash, endpoint="A",
                            device_kind=self.device.split(":")[0], eval_precision=self.eval_precision)
        return make_key("point", a=a.content_hash, b=b.content_hash, eval=self.prepared.eval_hash,
                        stats=None if vanilla else self._aligned_on(options), options=options.to_dict(),
                        fraction=None if vanilla else fraction, lam=float(lam), device_kind=self.device.split(":")[0],
                        eval_precision=self.eval_precision)

    def curve(self, options: AlignOptions, lambdas: int = 21, fraction: float = 1.0, progress=None) -> CurveResult:
        """Loss (and pseudo-perplexity, perplexity or accuracy) along lambda between A and B'.

        Points are evaluated coarse grid first (1, 0, 1/2, 1/4, 3/4, ...) and cached one by one, so
        that grids share their common points and a caller sees the curve take shape: after every
        point, ``progress("interpolation", done, total, method=..., rows=[rows so far])``."""
        if self.prepared.evalset.kind == "none":
            raise DataError("no evaluation data with labels for this pair: give a task folder (dev.tsv) to "
                            "evaluate a classifier, or use an MLM or a causal LM; the alignment itself needs no labels")
        cb = self._cb(progress)
        vanilla = options == VANILLA
        a, b = self.pair
        key = make_key("curve", a=a.content_hash, b=b.content_hash, eval=self.prepared.eval_hash,
                       stats=None if vanilla else self._aligned_on(options), options=options.to_dict(),
                       fraction=None if vanilla else fraction, lambdas=lambdas, device_kind=self.device.split(":")[0],
                       eval_precision=self.eval_precision)

        def compute():
            if not vanilla:  # statistics and assignments keep their own timings
                self.alignment(options, fraction, progress)
            t = time.perf_counter()
            grid = lambda_grid(lambdas)
            points = self._points(options, fraction, grid, cb)
            give_back()  # the working model's memory goes back to the system
            rows = [points[float(lam)][0] for lam in grid]
            losses = [r["loss"] for r in rows]
            loss_a = rows[-1]["loss"]
            if vanilla:
                loss_b, items_b = rows[0]["loss"], points[float(grid[0])][1]
            else:
                row_b, items_b = self._points(VANILLA, 1.0, [0.0], None)[0.0]
                loss_b = row_b["loss"]
            bar, lam = barrier(grid, losses, loss_a, loss_b)
            se, n = barrier_sem(points[lam][1], points[float(grid[-1])][1], items_b)
            self.timings.setdefault("interpolation_s", 0.0)
            self.timings["interpolation_s"] += time.perf_counter() - t
            snap_tokens = (None if vanilla or options.matcher == "weight"
                           else self.stats_info()["snapshot_tokens"].get(fraction))
            return CurveResult(options.label(), options.to_dict(), rows, bar, lam, loss_a, loss_b,
                               options.function_preserving, fraction, snap_tokens, se, n)

        with self.lock:
            return self.cache.get_or_compute(key, compute)

    def _points(self, options: AlignOptions, fraction: float, grid, progress) -> dict:
        """{lambda: (row, per-item losses)} for every lambda of ``grid``, from the cache or evaluated
        in coarse-first order; the working model is only built when a point is missing."""
        out, work = {}, None
        order = coarse_first(len(grid))
        for done, i in enumerate(order, 1):
            lam = float(grid[i])
            key = self._point_key(options, fraction, lam)

            def compute(lam=lam):
                nonlocal work
                if work is None:
                    work = self._work_model(options, fraction, progress)
                model, state_a, state_b = work
                interpolate_into(model, state_a, state_b, lam)  # on the device, in place
                kept: list = []
                row = {"lambda": lam, **evaluate(model, self.prepared.evalset, self.device, self.spec.mlm_head,
                                                 keep=kept, precision=self.eval_precision)}
                check_finite_loss(row, options.label())  # raised inside the cached computation: nothing is stored
                items = np.concatenate([k.numpy() for k in kept]).astype(np.float32) if kept else None
                return row, items

            out[lam] = self.cache.get_or_compute(key, compute)
            if progress:
                progress("interpolation", done, len(order), method=options.label(),
                         rows=sorted((r for r, _ in out.values()), key=lambda r: r["lambda"]))
        return out

    def _work_model(self, options: AlignOptions, fraction: float, progress):
        a, b = self.pair
        model_b = b.model if options == VANILLA else self.permuted(options, fraction, progress)
        return work_model(a.model, model_b, self.device)

    def original_b_loss(self) -> float:
        return self._points(VANILLA, 1.0, [0.0], None)[0.0][0]["loss"]


def work_model(model_a, model_b, device):
    """(working model, A's state, B's state) for ``interpolate_into``: one preallocated copy of A that
    every lambda point is written into in place.  The two states are the models' own tensors (moved
    to ``device`` only when they live elsewhere), never cloned: interpolation reads them only, so the
    path costs one model's memory beyond A and B'."""
    work = copy.deepcopy(model_a).to(device)
    state = lambda m: {k: v.detach().to(device) for k, v in m.state_dict().items()}  # noqa: E731
    return work, state(model_a), state(model_b)


def _eval_hash(ev: EvalSet) -> str:
    """The evaluation set's cache identity: its batches, and the GLUE metrics when it has them
    (curves without them keep their earlier keys)."""
    return D.content_hash([ev.batches, list(ev.metrics)] if ev.metrics else ev.batches)


def permutations_tensors(al: Alignment) -> dict[str, torch.Tensor]:
    return {g: torch.tensor(np.asarray(p), dtype=torch.int64) for g, p in al.perms.items()}  # copies: no shared memory
