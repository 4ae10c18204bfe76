"""Prune a transformers checkpoint directory bigger than memory, one decoder layer at a time.

    res = gp.prune("llama-7b/", flops=0.8, calib=[ids, ...])     # ids: [B, S] token tensors
    res.save_pretrained("llama-7b-pruned/")

The model is built on the meta device (``accelerate.init_empty_weights``) and captured there, so
the coupling groups are exactly those of the in-memory path. Weights are read from the
safetensors shards one tensor at a time (``safe_open``) and placed into the meta model with
``accelerate.utils.set_module_tensor_to_device`` (and put back on meta when done). Three streamed
passes, SparseGPT/FLAP-style sequential:

1. **statistics**: the calibration ids go through the embeddings; the inputs of decoder layer 0
   are caught by a forward pre-hook; then each layer is loaded, run on every batch with forward
   pre-hooks on the consumer modules (the sites of ``graphprune.analysis.calibration``) adding
   the same per-channel sums the in-memory interpreter adds, its (dense) input hidden states are
   spilled to a temporary file, and it is freed. Its output feeds the next layer.
2. **score and allocate**: the registered criterion runs once over the whole model with a lazy
   weight mapping (each tensor read from disk when the criterion asks for it, then dropped), then
   the same ``allocate`` pass as in memory; ``rewrite_module`` on the meta model gives the pruned
   config and shapes.
3. **verify, reconstruct, write**: per layer, the masked original (consumer columns of removed
   channels zeroed) and the pruned layer run on that layer's dense inputs from pass 1; they must
   agree within the dtype's tolerance (``graphprune.verification.dtype_rtol``). The masked run's
   pre-hooks also take the consumers' Gram matrices (their inputs equal the dense ones: masking
   zeroes consumer weights only), so ``lsq`` and ``bias`` reconstruction refit the layer with the
   same closed forms as the in-memory passes; the Grams are dropped with the layer. The layer's
   tensors are written to their own safetensors shard.

Because every decoder layer maps the residual stream to itself and the residual stream is kept,
"every layer equals its masked original on its inputs" composes to "the model equals the masked
original". Peak memory: the meta model, the embeddings (passes 1 and 3 only), the dense, masked
and pruned copy of one layer, one layer's Grams, and the calibration activations of one layer.

``torch.distributed``: when a process group is initialized, each rank passes its own calibration
batches; statistics are summed across ranks (:func:`all_reduce_stats`) before scoring, so every
rank takes the same plan; rank 0 writes the directory.
"""

from __future__ import annotations

import json
import logging
import math
import resource
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .errors import CalibrationError, OptionError, SourceError, VerificationError

__all__ = [
    "DTYPES", "Checkpoint", "StreamResult", "all_reduce_stats", "is_checkpoint_dir", "load_ids_file", "open_checkpoint",
    "prune_checkpoint",
]

log = logging.getLogger(__name__)

# config dtype name -> torch dtype the streamed path runs and writes in
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# safetensors header dtypes a checkpoint's floating tensors may have
_ST_FLOATS = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}
_ST_OTHER_FLOATS = {"F64", "F8_E4M3", "F8_E5M2", "F8_E8M0", "F4", "F6_E2M3", "F6_E3M2"}
INDEX = "model.safetensors.index.json"


def is_checkpoint_dir(path: Any) -> bool:
    """True for a directory (a transformers checkpoint directory, or a broken one to refuse)."""
    return isinstance(path, (str, Path)) and Path(path).is_dir()


@dataclass(frozen=True)
class Checkpoint:
    """A transformers checkpoint directory: its config and where each tensor lives."""

    directory: Path
    config: Any
    files: dict[str, Path]  # tensor name -> shard file
    dtype: torch.dtype
    cls: type


def open_checkpoint(directory: str | Path) -> Checkpoint:
    """Read config.json and the shard index; refuse a missing file or an unsupported dtype."""
    import importlib.util

    missing = [m for m in ("transformers", "safetensors", "accelerate") if importlib.util.find_spec(m) is None]
    if missing:
        raise SourceError(f"{directory}: pruning a checkpoint directory needs {', '.join(missing)}; "
                          "pip install 'graphprune[hf]'")
    import transformers
    from safetensors import safe_open

    d = Path(directory)
    cfg = d / "config.json"
    if not cfg.is_file():
        raise SourceError(f"{d}: no config.json; give a transformers checkpoint directory (config.json + "
                          "*.safetensors), e.g. one written by save_pretrained")
    try:
        data = json.loads(cfg.read_text())
    except (OSError, ValueError) as exc:
        raise SourceError(f"{cfg}: not readable JSON ({exc}); fix or re-save the checkpoint") from exc
    if "graphprune" in data:
        raise SourceError(f"{d}: a graphprune per-layer directory; prune the original checkpoint instead")
    index = d / INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, ValueError, KeyError) as exc:
            raise SourceError(f"{index}: not a safetensors index (no weight_map): {exc}") from exc
        files = {k: d / v for k, v in weight_map.items()}
    elif (d / "model.safetensors").is_file():
        files = {}
    else:
        bins = sorted(p.name for p in d.glob("*.bin"))
        hint = f" (found {bins[0]}: re-save with safe_serialization)" if bins else ""
        raise SourceError(f"{d}: no model.safetensors or {INDEX}{hint}; graphprune streams safetensors checkpoints")
    missing = sorted({p.name for p in files.values() if not p.is_file()})
    if missing:
        raise SourceError(f"{d}: shard {missing[0]} listed in {INDEX} is missing ({len(missing)} missing); "
                          "download or copy the whole checkpoint")
    if not files:
        with safe_open(str(d / "model.safetensors"), "pt") as f:
            files = {k: d / "model.safetensors" for k in f.keys()}
    dtypes: dict[str, str] = {}
    for shard in sorted(set(files.values())):
        with safe_open(str(shard), "pt") as f:
            for k in f.keys():
                dtypes.setdefault(f.get_slice(k).get_dtype(), k)
    bad = sorted(set(dtypes) & _ST_OTHER_FLOATS)
    if bad:
        raise OptionError(f"{d}: tensor {dtypes[bad[0]]} has dtype {bad[0]}; graphprune prunes float32, float16 "
                          "and bfloat16 checkpoints (dequantize or convert it first)")
    floats = [_ST_FLOATS[t] for t in dtypes if t in _ST_FLOATS]
    name = str(data.get("dtype") or data.get("torch_dtype") or (floats[0] if floats else "float32"))
    if name not in DTYPES:
        raise OptionError(f"{cfg}: dtype {name!r} is not supported; graphprune prunes {', '.join(DTYPES)} checkpoints")
    archs = data.get("architectures") or []
    cls = getattr(transformers, archs[0], None) if archs else None
    if cls is None:
        raise SourceError(f"{cfg}: architectures {archs} names no transformers class; cannot build the model")
    try:
        config = transformers.AutoConfig.from_pretrained(str(d))
    except Exception as exc:  # transformers raises several types for a bad config
        raise SourceError(f"{cfg}: transformers cannot read it ({type(exc).__name__}: {str(exc)[:200]})") from exc
    return Checkpoint(d, config, files, DTYPES[name], cls)


class _Reader:
    """Reads tensors from the shards; one ``safe_open`` handle per shard, closed by :meth:`close`.

    A handle maps its shard: every page read stays resident (and counted in the RSS) until the
    handle is dropped, so the streamed passes close the handles after each layer (and the lazy
    scoring after each tensor)."""

    def __init__(self, ckpt: Checkpoint) -> None:
        self.ckpt = ckpt
        self._open: dict[Path, Any] = {}

    def has(self, name: str) -> bool:
        return name in self.ckpt.files

    def get(self, name: str) -> torch.Tensor:
        from safetensors import safe_open

        path = self.ckpt.files.get(name)
        if path is None:
            raise SourceError(f"{self.ckpt.directory}: tensor {name!r} is in no shard; the checkpoint does not match "
                              f"its config ({type(self.ckpt.config).__name__})")
        f = self._open.get(path)
        if f is None:
            f = self._open[path] = safe_open(str(path), "pt")
        return f.get_tensor(name)

    def close(self) -> None:
        self._open.clear()  # the handles unmap their files when dropped


class LazyWeights(Mapping[str, torch.Tensor]):
    """IR value name -> weight tensor, read from the checkpoint when asked (never cached)."""

    def __init__(self, sources: dict[str, str], reader: _Reader) -> None:
        self.sources = {k: v for k, v in sources.items() if reader.has(v)}
        self.reader = reader

    def __getitem__(self, key: str) -> torch.Tensor:
        t = self.reader.get(self.sources[key]).clone()  # own memory: the shard is unmapped now
        self.reader.close()
        return t

    def __iter__(self) -> Iterator[str]:
        return iter(self.sources)

    def __len__(self) -> int:
        return len(self.sources)


@dataclass
class StreamResult:
    """What :func:`prune_checkpoint` wrote: a directory (``path``), the plan and the report."""

    path: Path
    report: dict[str, Any]
    plan: Any
    _owned: bool = field(default=False, repr=False)
    coupling: Any = field(default=None, repr=False)  # the meta capture's coupling (sources are the model's FQNs)
    removed: np.ndarray | None = field(default=None, repr=False)  # bool per coupling unit

    def save_pretrained(self, directory: str | Path) -> dict[str, Any]:
        """Move the written checkpoint directory to ``directory`` (replacing it)."""
        from .hf import _replace_dir

        dest = Path(directory)
        if dest.resolve() == self.path.resolve():
            return {"path": str(dest), "loader": self.report["loader"]}
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
        shutil.move(str(self.path), str(tmp / "d"))
        _replace_dir(tmp / "d", dest)
        shutil.rmtree(tmp, ignore_errors=True)
        self.path = dest
        return {"path": str(dest), "loader": self.report["loader"]}

    def load(self) -> nn.Module:
        """The pruned model in memory (only for a model that fits)."""
        from .hf import load_pretrained

        return load_pretrained(self.path)


def _decoder_layers(model: nn.Module, n_layers: int) -> tuple[str, nn.ModuleList]:
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) == n_layers and n_layers > 0:
            return name, mod
    raise OptionError(f"{type(model).__name__}: no list of {n_layers} decoder layers found; streamed pruning "
                      "needs a decoder-only transformers model (config num_hidden_layers)")


def _ids_batches(calib: Iterable[Any] | None, vocab: int, seed: int) -> list[torch.Tensor]:
    """Calibration batches as [B, S] int64 id tensors; random ids when none are given."""
    if calib is None:
        g = torch.Generator().manual_seed(seed)
        return [torch.randint(0, vocab, (1, 32), generator=g)]
    if isinstance(calib, (torch.Tensor, Mapping)):
        raise CalibrationError("calib= must be a list of batches (tensors of token ids or dicts with input_ids), "
                               f"not one {type(calib).__name__}; wrap a single batch in a list")
    out = []
    for i, b in enumerate(calib):
        ids = b.get("input_ids") if isinstance(b, Mapping) else (b[0] if isinstance(b, (tuple, list)) else b)
        if not isinstance(ids, torch.Tensor) or ids.is_floating_point() or ids.dim() != 2:
            raise CalibrationError(f"calib= batch {i}: expected a [batch, seq] integer tensor of token ids (or a dict "
                                   f"with input_ids), got {type(ids).__name__}"
                                   f"{' ' + str(tuple(ids.shape)) + ' ' + str(ids.dtype) if isinstance(ids, torch.Tensor) else ''}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
            raise CalibrationError(f"calib= batch {i}: token id {int(ids.max()) if int(ids.max()) >= vocab else int(ids.min())} "
                                   f"is outside the vocabulary [0, {vocab}) of the checkpoint's config; use the "
                                   "checkpoint's own tokenizer")
        out.append(ids.long())
    if not out:
        raise CalibrationError("calib= holds no batch")
    return out


IDS_PER_BATCH = 8  # rows per calibration batch when a file holds one [N, S] id tensor


def load_ids_file(path: str | Path) -> list[torch.Tensor]:
    """Calibration token ids for a checkpoint directory (``--calib``): a ``.pt`` holding a list of
    [B, S] id tensors, one [N, S] tensor (split into batches of :data:`IDS_PER_BATCH` rows) or a dict
    with ``input_ids``; or an ``.npz`` with one array (or ``input_ids``)."""
    from .frontends.calib import read_calib_file

    p = Path(path)
    data: Any = read_calib_file(p, "--calib", "token ids")
    if isinstance(data, Mapping) and "input_ids" in data:
        data = data["input_ids"]
    if isinstance(data, torch.Tensor):
        if data.dim() != 2:
            raise CalibrationError(f"--calib {p}: expected [N, seq] token ids, got shape {tuple(data.shape)}")
        return list(data.split(IDS_PER_BATCH))
    if isinstance(data, (list, tuple)):
        return list(data)
    raise CalibrationError(f"--calib {p}: expected token ids (a tensor, a list of tensors or a dict with input_ids), "
                           f"got {type(data).__name__}")


def _set(module: nn.Module, name: str, value: torch.Tensor | None, dtype: torch.dtype | None = None) -> None:
    from accelerate.utils import set_module_tensor_to_device

    if value is None:
        set_module_tensor_to_device(module, name, "meta")
    else:
        set_module_tensor_to_device(module, name, "cpu", value=value, dtype=dtype)


def _load(module: nn.Module, prefix: str, reader: _Reader, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Place the checkpoint's tensors of ``module`` (names under ``prefix``) into it; returns them."""
    got = {}
    for name, _ in list(module.named_parameters()) + list(module.named_buffers()):
        key = f"{prefix}{name}"
        if not reader.has(key):
            if any(name == n for n, _ in module.named_parameters()):
                raise SourceError(f"{reader.ckpt.directory}: tensor {key!r} is in no shard; the checkpoint does not "
                                  "match its config")
            continue
        t = reader.get(key)
        if t.is_floating_point():
            t = t.to(dtype)
        _set(module, name, t)
        got[name] = t
    return got


def _free(module: nn.Module) -> None:
    for name, _ in list(module.named_parameters()):
        _set(module, name, None)


class _Stop(Exception):
    pass


def _layer0_inputs(model: nn.Module, layers: nn.ModuleList, lprefix: str, reader: _Reader, dtype: torch.dtype,
                   batches: list[torch.Tensor]) -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
    """(args, kwargs) of decoder layer 0 for every batch: the embeddings run, the layer is never entered."""
    base = model.base_model
    bprefix = model.base_model_prefix + "." if base is not model else ""
    outside = [(n, m) for n, m in base.named_children() if not (bprefix + n).startswith(lprefix.rstrip("."))]
    for n, m in outside:
        _load(m, f"{bprefix}{n}.", reader, dtype)
    caught: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def hook(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        caught.append((args, dict(kwargs)))
        raise _Stop

    h = layers[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            for ids in batches:
                try:
                    base(input_ids=ids, use_cache=False)
                except _Stop:
                    pass
    finally:
        h.remove()
        for _, m in outside:
            _free(m)
        reader.close()
    return caught


def _hidden(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _with_hidden(args: tuple[Any, ...], kwargs: dict[str, Any], h: torch.Tensor) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if args:
        return (h, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": h}


def _out(y: Any) -> torch.Tensor:
    return y[0] if isinstance(y, (tuple, list)) else y


def _site_hooks(layer: nn.Module, lpre: str, sites: list[Any], stats: dict[str, Any], gram: bool, batch: list[int]) -> list[Any]:
    """Forward pre-hooks on the consumer modules of ``sites`` adding channel sums (and Grams)."""
    from .analysis.calibration import GramAcc, add_gram, channel_sums

    hooks = []
    for site in sites:
        mod_path = site.weight.source.rpartition(".")[0][len(lpre):]
        mod = layer.get_submodule(mod_path)
        st = stats[site.node]
        acc = GramAcc()

        def hook(_m: nn.Module, args: tuple[Any, ...], site: Any = site, st: Any = st, acc: Any = acc) -> None:
            x = args[0].detach()
            axis = site.a_axis % x.dim()
            if gram:
                xf = x if x.dtype in (torch.float32, torch.float64) else x.float()
                flat = xf.movedim(axis, -1).reshape(-1, xf.shape[axis])
                add_gram(acc, lambda idx: flat.index_select(0, idx), flat.shape[0], flat.shape[1], batch[0], rows_per_dim=0)
                st.gram, st.gsum, st.gn = acc.gram, acc.gsum, acc.gn
                return
            s, q, n = channel_sums(x, axis)
            st.sum = s if st.sum is None else st.sum + s
            st.sumsq = q if st.sumsq is None else st.sumsq + q
            st.n += n

        hooks.append(mod.register_forward_pre_hook(hook))
    return hooks


def all_reduce_stats(stats: dict[str, Any], group: Any = None, sums: bool = True, grams: bool = True) -> None:
    """Sum every site's streaming sums (``sums``: n, sum, sumsq; ``grams``: Gram, gsum, gn when
    present) across the ranks of ``group`` in place: the result equals one process's sums over all
    ranks' batches. Every rank must hold the same sites (in any order)."""
    import torch.distributed as dist

    for name in sorted(stats):
        st = stats[name]
        if sums and st.sum is not None:
            buf = torch.from_numpy(np.concatenate([st.sum, st.sumsq, [float(st.n)]]))
            dist.all_reduce(buf, group=group)
            c = len(st.sum)
            st.sum, st.sumsq, st.n = buf[:c].numpy(), buf[c:2 * c].numpy(), int(round(float(buf[-1])))
        if grams and st.gram is not None:
            buf = torch.cat([st.gram.reshape(-1), st.gsum, torch.tensor([float(st.gn)], dtype=torch.float64)])
            dist.all_reduce(buf, group=group)
            d = st.gsum.numel()
            st.gram, st.gsum, st.gn = buf[:d * d].view(d, d), buf[d * d:d * d + d], int(round(float(buf[-1])))


def _distributed() -> tuple[bool, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return True, dist.get_rank()
    return False, 0


def _rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def prune_checkpoint(
    directory: str | Path,
    *,
    flops: float | None = None,
    params: float | None = None,
    macs: float | None = None,
    calib: Iterable[Any] | None = None,
    criterion: str | None = None,
    allocation: str | None = None,
    reconstruct: Any = None,
    round_to: int | None = None,
    verify: bool = True,
    seed: int = 0,
    uniform: bool = False,
    output: str | Path | None = None,
    progress: Callable[..., None] | None = None,
) -> StreamResult:
    """Prune the checkpoint in ``directory`` layer by layer (module docstring); write it to
    ``output`` (default: a temporary directory; move it with ``res.save_pretrained(d)``)."""
    from graphprune.passes import PassContext, parse_pipeline
    from graphprune.passes.pipelines import default_pipeline

    from .analysis.calibration import ChannelStats, reader_sites
    from .analysis.importance import CRITERIA, NORMALIZERS, CriterionInputs, normalize_global
    from .api import default_allocation, default_recipe
    from .frontends import capture
    from .progress import as_progress
    from .rewrite import kept_indices, rewrite_module

    progress = as_progress(progress)
    t_start = time.perf_counter()
    timings: dict[str, float] = {}

    def phase(name: str) -> None:
        if progress:
            progress(name)

    budgets = [(k, v) for k, v in (("flops", flops), ("macs", macs), ("params", params)) if v is not None]
    if len(budgets) != 1:
        from .errors import BudgetError

        raise BudgetError("give exactly one budget for a checkpoint directory: flops=, macs= or params= FRACTION")
    metric, frac = budgets[0]
    phase("load")
    ckpt = open_checkpoint(directory)
    dist_on, rank = _distributed()
    recipe = default_recipe(criterion, reconstruct, allocation, calib is not None, False)
    crit = CRITERIA.get(recipe.criterion)
    if crit is None:
        raise OptionError(f"unknown criterion {recipe.criterion!r}; available: {', '.join(sorted(CRITERIA))}")
    if crit.needs == "gradients":
        raise OptionError(f"criterion {recipe.criterion!r} needs gradients through the whole model; a streamed "
                          "checkpoint takes a weight or activation criterion (l1, l2, wanda, flap)")
    if crit.gram:
        raise OptionError(f"criterion {recipe.criterion!r} needs every consumer's Gram matrix before scoring; a "
                          "streamed checkpoint keeps one layer's Grams at a time: use wanda (the default), flap, l1 or l2")
    recon = recipe.reconstruct
    recon = tuple(r.strip() for r in recon.split(",") if r.strip()) if isinstance(recon, str) else tuple(recon)
    if "bn" in recon:
        raise OptionError("reconstruct='bn' has no BatchNorm to recalibrate in a decoder checkpoint; use lsq, bias")
    if crit.needs == "activations" and calib is None:
        raise CalibrationError(f"criterion {recipe.criterion!r} needs calibration data: pass calib=[ids, ...] "
                               "(CLI: --calib FILE)")
    if recon and calib is None:
        raise CalibrationError(f"reconstruct={','.join(recon)} needs calibration data: pass calib=[ids, ...]")
    policy = allocation or ("uniform" if uniform else recipe.allocation or default_allocation(False, recipe.criterion))
    if uniform and policy != "uniform":
        raise OptionError(f"uniform=True needs allocation='uniform' (got allocation={policy!r})")
    vocab = int(getattr(ckpt.config, "vocab_size", 0) or 0)
    batches = _ids_batches(calib, vocab, seed)
    reader = _Reader(ckpt)
    tmpdir = Path(tempfile.mkdtemp(prefix="graphprune-stream-"))
    try:
        from accelerate import init_empty_weights

        t0 = time.perf_counter()
        with init_empty_weights():
            model = ckpt.cls._from_config(ckpt.config, dtype=ckpt.dtype)
        model.eval()
        n_layers = int(getattr(ckpt.config, "num_hidden_layers", 0) or 0)
        lname, layers = _decoder_layers(model, n_layers)
        lpre = lname + "."
        phase("capture")
        example = {"input_ids": torch.zeros(batches[0].shape, dtype=torch.long, device="meta"), "use_cache": False}
        cap = capture(model, example)
        timings["capture"] = time.perf_counter() - t0
        text = default_pipeline(metric, float(frac), recipe.criterion, policy, round_to, strict=verify,
                                reconstruct=(), uniform_layers=uniform)
        passes = {p.name: p for p in parse_pipeline(text)}
        ctx = PassContext(model=model, example_inputs=example, program=cap.program, seed=seed, progress=progress)
        if recipe.note:
            ctx.records.notes.append(recipe.note)
        if calib is None:
            ctx.records.notes.append("no calib=: each layer is verified on one batch of random token ids")
        graph = passes["couple"].run(cap.graph, ctx).graph
        coupling = ctx.coupling
        sites = reader_sites(coupling)
        by_layer: dict[int, list[Any]] = {}
        for s in sites:
            src = s.weight.source or ""
            if not src.startswith(lpre):
                if crit.needs == "activations" or recon:
                    raise OptionError(f"streamed pruning calibrates consumers inside decoder layers only; "
                                      f"{src or s.node} reads a prunable axis outside them (prune it in memory "
                                      "with gp.prune(model, ...))")
                continue
            by_layer.setdefault(int(src[len(lpre):].split(".")[0]), []).append(s)
        stats: dict[str, ChannelStats] = {s.node: ChannelStats() for s in sites}

        # pass 1: statistics, layer by layer; dense layer inputs spilled to tmpdir
        phase("calibration")
        t0 = time.perf_counter()
        inputs = _layer0_inputs(model, layers, lpre, reader, ckpt.dtype, batches)
        kw = [k for _, k in inputs]
        hs = [_hidden(a, k) for a, k in inputs]
        args_rest = [a for a, _ in inputs]
        batch_no = [0]
        for i, layer in enumerate(layers):
            torch.save(hs, tmpdir / f"h{i}.pt")
            _load(layer, f"{lpre}{i}.", reader, ckpt.dtype)
            hooks = _site_hooks(layer, f"{lpre}{i}.", by_layer.get(i, []), stats, False, batch_no)
            try:
                with torch.no_grad():
                    new = []
                    for b, h in enumerate(hs):
                        a, k = _with_hidden(args_rest[b], kw[b], h)
                        new.append(_out(layer(*a, **k)))
                hs = new
            finally:
                for hk in hooks:
                    hk.remove()
                _free(layer)
                reader.close()
            if progress:
                progress("calibration", i + 1, len(layers))
        del hs
        if dist_on:
            all_reduce_stats(stats, grams=False)
        timings["calibration"] = time.perf_counter() - t0

        # pass 2: score (lazy weights) and allocate
        phase("score")
        t0 = time.perf_counter()
        lazy = LazyWeights({v.name: v.source for v in graph.weights() if v.source}, reader)
        inp = CriterionInputs(coupling, lazy, sites if crit.needs == "activations" else (), stats, seed=seed)
        raw = crit(inp)
        ctx.scores = NORMALIZERS[recipe.normalize](coupling, raw)
        ctx.loss_scores = normalize_global(raw) if crit.loss_based else None
        ctx.criterion = recipe.criterion
        timings["score"] = time.perf_counter() - t0
        phase("allocate")
        t0 = time.perf_counter()
        graph = passes["allocate"].run(graph, ctx).graph
        removed = ctx.plan.removed_mask(coupling.n_units)
        pruned = rewrite_module(model, coupling, removed)
        kept_list = kept_indices(coupling, removed)
        kept = {k.value.source: k.axes for k in kept_list if k.value.source}
        outside = sorted(k.value.source for k in kept_list if k.value.source and not k.value.source.startswith(lpre)
                         and any(len(idx) < k.value.shape[ax] for ax, idx in k.axes.items()))
        if outside:  # the per-layer oracle and writer assume the residual stream is kept
            raise OptionError(f"the plan shrinks {outside[0]}, outside the decoder layers (the residual stream); a "
                              "checkpoint directory is pruned inside its layers only: prune the model in memory")
        timings["allocate"] = time.perf_counter() - t0
        reader.close()

        # pass 3: verify, reconstruct and write, layer by layer
        phase("verify")
        t0 = time.perf_counter()
        out = Path(output) if output is not None else Path(tempfile.mkdtemp(prefix="graphprune-pruned-"))
        write_to = out if output is None else Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=_parent(out)))
        worst = {"max_abs_err": 0.0, "max_ref": 0.0, "tolerance": 0.0, "checks": 0}
        write = rank == 0
        weight_map: dict[str, str] = {}
        n_files = len(layers) + 1
        refit: list[str] = []
        for i, layer in enumerate(layers):
            pre = f"{lpre}{i}."
            lsites = by_layer.get(i, [])
            dense = _load(layer, pre, reader, ckpt.dtype)
            hs_in = torch.load(tmpdir / f"h{i}.pt", weights_only=False)
            players = _decoder_layers(pruned, n_layers)[1]
            player = players[i]
            tensors = _pruned_tensors(dense, pre, kept)
            for name, t in tensors.items():
                _set(player, name, t)
            gram_sites = [s for s in lsites if "lsq" in recon and s.linear_like]
            if gram_sites:  # the dense layer's consumer inputs (masking a reader changes what follows it)
                hooks = _site_hooks(layer, pre, gram_sites, stats, True, batch_no)
                try:
                    with torch.no_grad():
                        for b, h in enumerate(hs_in):
                            batch_no[0] = b
                            a, k = _with_hidden(args_rest[b], kw[b], h)
                            layer(*a, **k)
                finally:
                    for hk in hooks:
                        hk.remove()
                if dist_on:
                    all_reduce_stats({s.node: stats[s.node] for s in gram_sites}, sums=False)
            _mask(layer, pre, coupling, removed, dense)
            with torch.no_grad():
                for b, h in enumerate(hs_in):
                    a, k = _with_hidden(args_rest[b], kw[b], h)
                    ref, got = _out(layer(*a, **k)), _out(player(*a, **k))
                    _compare(ref, got, worst, f"decoder layer {i} ({pre.rstrip('.')})", verify)
            tensors.update(_reconstruct(lsites, dense, pre, stats, coupling, removed, recon, player, refit))
            if write:
                fname = f"model-{i + 1:05d}-of-{n_files:05d}.safetensors"
                _save({pre + k: v for k, v in tensors.items()}, write_to / fname)
                weight_map.update({pre + k: fname for k in tensors})
            for s in lsites:
                st = stats[s.node]
                st.gram = st.gsum = None
            _free(layer)
            _free(player)
            reader.close()
            del dense, tensors, hs_in
            (tmpdir / f"h{i}.pt").unlink()
            if progress:
                progress("verify", i + 1, len(layers))
        # the tensors outside the decoder layers (embeddings, final norm, lm_head)
        rest = {}
        pstate = pruned.state_dict()
        for name in sorted(k for k in pstate if not k.startswith(lpre)):
            if not reader.has(name):
                continue
            t = reader.get(name)
            rest[name] = _slice(t.to(ckpt.dtype) if t.is_floating_point() else t, kept.get(name, {}))
        if write:
            fname = f"model-{n_files:05d}-of-{n_files:05d}.safetensors"
            _save(rest, write_to / fname)
            weight_map.update({k: fname for k in rest})
        reader.close()
        timings["verify_reconstruct_write"] = time.perf_counter() - t0
        loader = _write_config(pruned, write_to, weight_map, ckpt) if write else ""
        if output is not None and write:
            from .hf import _replace_dir

            _replace_dir(write_to, out)
        timings["total"] = time.perf_counter() - t_start
        report = _report(graph, ctx, kept_list, worst, timings, recon, refit, loader, ckpt, len(batches))
        plan = ctx.plan
        return StreamResult(out, report, plan, output is None, coupling, removed)
    except BaseException:
        partial = locals().get("write_to")  # ours: a temporary directory (renamed into place only at the end)
        if partial is not None:
            shutil.rmtree(partial, ignore_errors=True)
        raise
    finally:
        reader.close()
        shutil.rmtree(tmpdir, ignore_errors=True)


def _parent(p: Path) -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    if p.exists() and not p.is_dir():
        raise OptionError(f"-o {p}: exists and is not a directory; give a directory path for a pruned checkpoint")
    return p.parent


def _slice(t: torch.Tensor, axes: Mapping[int, Any]) -> torch.Tensor:
    for ax, idx in axes.items():
        if len(idx) != t.shape[ax]:
            t = t.index_select(ax, torch.as_tensor(np.asarray(idx), dtype=torch.long))
    return t.contiguous()


def _pruned_tensors(dense: dict[str, torch.Tensor], pre: str, kept: dict[str, Any]) -> dict[str, torch.Tensor]:
    return {k: _slice(v, kept.get(pre + k, {})) for k, v in dense.items()}


def _mask(layer: nn.Module, pre: str, coupling: Any, removed: np.ndarray, dense: dict[str, torch.Tensor]) -> list[str]:
    """Zero, in ``layer``, the consumer slices that read removed channels (a masked copy of each
    such tensor; ``dense`` keeps the originals). Returns the names masked."""
    done = []
    for vi, ax in sorted(coupling.readers):
        v = coupling.graph.values[vi]
        if not v.source or not v.source.startswith(pre):
            continue
        kept = coupling.kept(v, ax, removed)
        if len(kept) == v.shape[ax]:
            continue
        name = v.source[len(pre):]
        gone = np.setdiff1d(np.arange(v.shape[ax]), kept)
        m = dense[name].clone().index_fill_(ax, torch.as_tensor(gone, dtype=torch.long), 0.0)
        _set(layer, name, m)
        done.append(name)
    return done


def _compare(ref: torch.Tensor, got: torch.Tensor, worst: dict[str, Any], where: str, strict: bool) -> None:
    from .verification import dtype_rtol

    if ref.shape != got.shape:
        raise VerificationError(f"{where}: pruned output shape {tuple(got.shape)} != masked original {tuple(ref.shape)}")
    err = float((ref.double() - got.double()).abs().max()) if ref.numel() else 0.0
    scale = float(ref.double().abs().max()) if ref.numel() else 0.0
    tol = dtype_rtol(ref.dtype) * max(1.0, scale)
    worst["max_abs_err"] = max(worst["max_abs_err"], err)
    worst["max_ref"] = max(worst["max_ref"], scale)
    worst["tolerance"] = max(worst["tolerance"], tol)
    worst["checks"] += 1
    ok = err <= tol and not math.isnan(err)
    worst["ok"] = worst.get("ok", True) and ok
    if not ok and strict:
        raise VerificationError(f"{where}: the pruned layer differs from its masked original by {err:.3g} "
                                f"(tolerance {tol:.3g} for {ref.dtype}); nothing was written (verify=False keeps it)")


def _reconstruct(sites: list[Any], dense: dict[str, torch.Tensor], pre: str, stats: dict[str, Any], coupling: Any,
                 removed: np.ndarray, recon: tuple[str, ...], player: nn.Module, refit: list[str]) -> dict[str, torch.Tensor]:
    """The refit weights (and biases) of the layer's shrunk consumers, as the in-memory
    reconstruct-lsq then reconstruct-bias passes compute them."""
    from .rewrite.reconstruct import LSQ_RIDGE, as_matrix, bias_delta, lsq_refit, shrunk_sites

    out: dict[str, torch.Tensor] = {}
    todo = shrunk_sites(sites, coupling, removed)
    factors: dict[Any, torch.Tensor] = {}
    done: set[str] = set()
    for site in todo if "lsq" in recon else []:
        wname = site.weight.source[len(pre):]
        w = dense[wname]
        if as_matrix(site, w) is None:
            continue
        mod_path = wname.rpartition(".")[0]
        mod = player.get_submodule(mod_path)
        bname = site.bias.source[len(pre):] if site.bias is not None and site.bias.source else f"{mod_path}.bias"
        can_bias = isinstance(mod, nn.Linear) and mod.bias is None
        intercept = site.bias is not None or can_bias
        got = lsq_refit(site, w, dense.get(bname) if site.bias is not None else None, stats[site.node], coupling,
                        removed, LSQ_RIDGE, intercept, factors)
        if got is None:
            continue
        shape = player.get_parameter(wname).shape
        out[wname] = got[0].reshape(shape).to(w.dtype).contiguous()
        if got[1] is not None:
            out[bname] = got[1].to(w.dtype).contiguous()
        done.add(site.node)
        refit.append(site.node)
    for site in todo if "bias" in recon else []:
        if site.node in done:
            continue
        wname = site.weight.source[len(pre):]
        delta = bias_delta(site, dense[wname], stats[site.node], coupling, removed)
        mod_path = wname.rpartition(".")[0]
        mod = player.get_submodule(mod_path)
        if delta is None or not isinstance(mod, nn.Linear):
            continue
        bname = f"{mod_path}.bias"
        cur = _slice(dense[bname], {0: coupling.kept(site.weight, 0, removed)}) if bname in dense else None
        out[bname] = (delta if cur is None else cur.double() + delta).to(dense[wname].dtype).contiguous()
        refit.append(site.node)
    return out


def _save(tensors: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata={"format": "pt"})


def _write_config(pruned: nn.Module, d: Path, weight_map: dict[str, str], ckpt: Checkpoint) -> str:
    """config.json (+ generation_config.json) and the index; the graphprune section when the
    widths differ per layer (or tensors exist the config cannot build), as ``hf.save_pretrained``."""
    from .hf import FORMAT, POISON, _layers_key, invalid_fields, stock_mismatches
    from .rewrite.hf_attrs import LOADER, layer_widths

    total = 0
    for fname in sorted(set(weight_map.values())):
        total += (d / fname).stat().st_size
    (d / INDEX).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))},
                                      indent=2) + "\n")
    invalid = invalid_fields(pruned.config, ckpt.config)
    pruned.config.to_json_file(str(d / "config.json"))  # save_pretrained would refuse an invalid config
    gen = ckpt.directory / "generation_config.json"
    if gen.is_file():
        shutil.copyfile(gen, d / "generation_config.json")
    mismatched = stock_mismatches(pruned) if not invalid else {}
    stock_keys = set(pruned.state_dict())
    extra = sorted(k for k in weight_map if k not in stock_keys)
    if not mismatched and not extra and not invalid:
        return "stock"
    if invalid:  # the loader builds the original widths, then every tensor takes its written shape
        mismatched = {k: (list(v.shape), []) for k, v in pruned.state_dict().items()}
    path = d / "config.json"
    data = json.loads(path.read_text())
    key = _layers_key(pruned.config)
    data["graphprune"] = {
        "format": FORMAT, "loader": LOADER, "restore": {key: data[key], **invalid},
        "layers": layer_widths(pruned), "shapes": {k: v[0] for k, v in sorted(mismatched.items())},
    }
    data[key] = POISON
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return LOADER


def _report(graph: Any, ctx: Any, kept_list: list[Any], worst: dict[str, Any], timings: dict[str, float],
            recon: tuple[str, ...], refit: list[str], loader: str, ckpt: Checkpoint, n_batches: int) -> dict[str, Any]:
    from .analysis.allocation import ShapeTable
    from .cost import count

    removed = ctx.plan.removed_mask(ctx.coupling.n_units)
    before, after = count(graph), count(graph, ShapeTable(ctx.coupling).shapes(removed))
    target, round_to = dict(ctx.plan.target), int(ctx.plan.round_to)
    metric, frac = next(iter(target.items()))
    kept = {"flops": after.flops / before.flops if before.flops else 1.0,
            "macs": after.macs / before.macs if before.macs else 1.0,
            "params": after.params / before.params if before.params else 1.0}
    widths = {k.value.source: {"before": list(k.value.shape), "after": [
        len(k.axes[ax]) if ax in k.axes else s for ax, s in enumerate(k.value.shape)]} for k in kept_list if k.value.source}
    return {
        "model": graph.name, "checkpoint": str(ckpt.directory), "dtype": str(ckpt.dtype).replace("torch.", ""),
        "streamed": True, "target": target, "achieved": {metric: kept[metric]}, "kept": kept,
        "flops_before": before.flops, "flops_after": after.flops, "params_before": before.params,
        "params_after": after.params, "criterion": ctx.criterion, "allocation": ctx.allocation.policy,
        "round_to": round_to, "units": ctx.coupling.n_units, "units_removed": int(removed.sum()),
        "verification": {"ok": bool(worst.get("ok", True)), **{k: v for k, v in worst.items() if k != "ok"},
                         "detail": "per decoder layer on its calibration inputs"},
        "reconstruction": list(recon) if refit else [], "refit": refit, "widths": widths, "loader": loader,
        "calibration_batches": n_batches, "timings": {k: round(v, 4) for k, v in timings.items()},
        "peak_rss_gb": round(_rss_gb(), 3),
        "route": "module", "notes": list(ctx.records.notes),
    }
