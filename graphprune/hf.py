"""Save and reload pruned Hugging Face transformers models.

``save_pretrained(model, d)`` writes ``d`` atomically (a sibling temporary directory renamed into
place). It compares every tensor with the shape the stock config builds (the class instantiated
from ``model.config`` on the meta device):

- all equal (same widths per layer kind, config updated by the rewriter): a stock directory;
  ``AutoModel*.from_pretrained(d)`` reloads it without graphprune.
- otherwise (per-layer widths, a width the config cannot express, or a class graphprune has no
  config mapping for): ``model.safetensors`` holding the model's own ``state_dict`` names (written
  with ``safetensors.torch.save_model``: transformers renames some checkpoint keys on save, e.g.
  ViT's, and its loader would rename them back), plus in ``config.json``
  a ``graphprune`` section (the per-layer widths when the class is mapped, the shapes that differ
  from the config, the loader's name) and the layer-count field replaced by a string naming
  ``graphprune.load_pretrained``: transformers' strict config validation then refuses the
  directory (``AutoModel*`` and the concrete class alike) with that message, before any weight is
  loaded, so it can never load random or mismatched weights.

``load_pretrained(d)`` restores the config, builds the class without initializing weights,
replaces every tensor whose saved shape differs by an empty one of that shape, runs the same
module updaters as the rewriter (head counts, Conv1D sizes, per-layer configs), then loads the
safetensors strictly. A stock directory is passed to the class's own ``from_pretrained``.

transformers and safetensors are imported here only when called (the ``hf`` extra).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import ExportError, SourceError

__all__ = ["FORMAT", "load_pretrained", "save_pretrained", "stock_mismatches"]

log = logging.getLogger(__name__)

FORMAT = 1
LOADER_HINT = "graphprune.load_pretrained(dir)"
POISON = f"pruned with per-layer widths: load with {LOADER_HINT} (see the graphprune section of config.json)"


def _require_hf(model: nn.Module) -> Any:
    from .rewrite.hf_attrs import hf_config

    cfg = hf_config(model)
    if cfg is None or not hasattr(model, "save_pretrained"):
        raise ExportError(
            f"save_pretrained needs a transformers PreTrainedModel; the pruned model is a {type(model).__name__} "
            "(prune the PreTrainedModel itself, with keyword inputs such as {'input_ids': ids, 'use_cache': False}; "
            "a model that took the fx route can be saved with res.save('model.pt') only)"
        )
    return cfg


def stock_mismatches(model: nn.Module) -> dict[str, tuple[list[int], list[int]]]:
    """name -> (shape in ``model``, shape the stock config builds) for every tensor that differs;
    a tensor the config does not build at all (a bias that reconstruction fitted into a bias-free
    projection) has the stock shape ``[]`` (stock loading would drop it)."""
    cfg = _require_hf(model)
    with torch.device("meta"):
        ref = type(model)(cfg)
    ref_shapes = {k: list(v.shape) for k, v in ref.state_dict().items()}
    out = {}
    for k, v in model.state_dict().items():
        stock = ref_shapes.get(k, [])
        if stock != list(v.shape):
            out[k] = (list(v.shape), stock)
    return out


def _layers_key(cfg: Any) -> str:
    return getattr(cfg, "attribute_map", {}).get("num_hidden_layers", "num_hidden_layers")


def save_pretrained(model: nn.Module, directory: str | os.PathLike[str], original: Any = None) -> dict[str, Any]:
    """Write ``model`` to ``directory`` (see the module docstring). Returns ``{"path", "loader",
    "mismatched"}``: loader is ``"stock"`` or ``"graphprune.load_pretrained"``. ``original`` is
    the config before pruning: where transformers' validation refuses the pruned config (LLaMA
    wants hidden_size divisible by the head count), its changed fields are restored from it."""
    from .rewrite.hf_attrs import LOADER, layer_widths

    cfg = _require_hf(model)
    dest = Path(directory)
    if dest.exists() and not dest.is_dir():
        raise ExportError(f"save_pretrained: {dest} exists and is not a directory; give a directory path")
    invalid = invalid_fields(cfg, original)
    mismatched = ({k: (list(v.shape), []) for k, v in model.state_dict().items()} if invalid
                  else stock_mismatches(model))
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        if invalid:  # save_pretrained would refuse the config
            cfg.to_json_file(str(tmp / "config.json"))
        else:
            model.save_pretrained(tmp)
        if mismatched:
            from safetensors.torch import save_model

            for f in tmp.glob("model*.safetensors*"):
                f.unlink()
            save_model(model, str(tmp / "model.safetensors"), metadata={"format": "pt"})
            path = tmp / "config.json"
            data = json.loads(path.read_text())
            key = _layers_key(cfg)
            if key not in data:
                raise ExportError(f"save_pretrained: config.json of {type(model).__name__} has no {key!r} field to "
                                  "mark the directory as graphprune-only; cannot write it safely")
            data.pop("graphprune", None)
            data["graphprune"] = {
                "format": FORMAT, "loader": LOADER, "restore": {key: data[key], **invalid},
                "layers": layer_widths(model), "shapes": {k: v[0] for k, v in sorted(mismatched.items())},
            }
            data[key] = POISON
            path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        _replace_dir(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if not mismatched:
        return {"path": str(dest), "loader": "stock", "mismatched": 0,
                "note": f"{type(model).__name__}.from_pretrained({str(dest)!r}) reloads it"}
    note = (f"{len(mismatched)} tensors differ from what the config builds (per-layer widths); reload with "
            f"graphprune.load_pretrained({str(dest)!r}) (stock from_pretrained refuses this directory)")
    log.info("%s: %s", dest, note)
    return {"path": str(dest), "loader": LOADER, "mismatched": len(mismatched), "note": note}


def invalid_fields(pruned: Any, original: Any) -> dict[str, Any]:
    """The changed integer config fields, at their ``original`` values, when transformers' own
    validation refuses the ``pruned`` config; empty when it validates. A refused config with no
    original to restore from is an ExportError naming the problem."""
    validate = getattr(pruned, "validate", None)
    if validate is None:
        return {}
    try:
        validate()
        return {}
    except Exception as exc:  # huggingface_hub's StrictDataclassClassValidationError and ValueError
        problem = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if original is None:
        raise ExportError(f"save_pretrained: transformers refuses the pruned {type(pruned).__name__} ({problem}) and "
                          "the config before pruning is not known; save the PruneResult "
                          "(res.save_pretrained(dir)), which keeps it")
    log.info("pruned config does not validate (%s); written for graphprune.load_pretrained", problem)
    new, old = pruned.to_dict(), original.to_dict()
    return {k: old[k] for k, v in new.items() if isinstance(v, int) and k in old and old[k] != v}


def _replace_dir(tmp: Path, dest: Path) -> None:
    old = None
    if dest.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
        os.replace(dest, old / "d")
    os.replace(tmp, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def load_pretrained(directory: str | os.PathLike[str], **kwargs: Any) -> nn.Module:
    """Reload a directory written by :func:`save_pretrained` (or a stock transformers directory)
    as the model's own class, in eval mode. ``kwargs`` go to ``from_pretrained`` for a stock
    directory (they are refused for a graphprune one)."""
    import transformers
    from safetensors import safe_open
    from safetensors.torch import load_model

    d = Path(directory)
    cfg_path = d / "config.json"
    if not cfg_path.is_file():
        raise SourceError(f"{d}: no config.json; give a directory written by res.save_pretrained(d)")
    data = json.loads(cfg_path.read_text())
    archs = data.get("architectures") or []
    cls = getattr(transformers, archs[0], None) if archs else None
    if cls is None:
        raise SourceError(f"{cfg_path}: architectures {archs} names no transformers class; cannot rebuild the model")
    gp = data.pop("graphprune", None)
    if gp is None:
        return cls.from_pretrained(d, **kwargs).eval()
    if kwargs:
        raise SourceError(f"load_pretrained({str(d)!r}) takes no from_pretrained options for a graphprune "
                          f"directory (got {sorted(kwargs)})")
    if "format" not in gp:
        raise SourceError(f"{cfg_path}: written by the model's own save_pretrained with per-layer widths (the "
                          "config does not describe the weights); write it with res.save_pretrained(d) instead")
    if gp.get("format") != FORMAT:
        raise SourceError(f"{cfg_path}: graphprune format {gp.get('format')!r} is not {FORMAT}; "
                          "save it again with this graphprune version")
    data.update(gp["restore"])
    config = transformers.CONFIG_MAPPING[data["model_type"]].from_dict(data)
    from transformers.initialization import no_init_weights

    with no_init_weights():
        model = cls(config)
    dtype = _config_dtype(config)
    if dtype is not None:  # built in the default dtype; the weights were written in the config's
        model = model.to(dtype)
    paths = _weight_files(d)
    shapes = {}
    for path in paths:
        with safe_open(str(path), "pt") as sf:
            shapes.update({k: list(sf.get_slice(k).get_shape()) for k in sf.keys()})
    model.tie_weights()  # share tied tensors first: the file holds one name of each
    _shrink_to(model, shapes)
    missing_all: set[str] | None = None
    unexpected: list[str] = []
    for path in paths:  # each shard: the keys it lacks are "missing" for it alone
        miss, unexp = load_model(model, str(path), strict=False)
        missing_all = set(miss) if missing_all is None else missing_all & set(miss)
        unexpected += unexp
    missing = _untied(model, missing_all or set())
    if missing or unexpected:
        raise SourceError(f"{d}: the weights do not fit {cls.__name__} (missing {sorted(missing)[:3]}, unexpected "
                          f"{sorted(unexpected)[:3]}); was the directory written by res.save_pretrained?")
    return model.eval()


def _config_dtype(config: Any) -> torch.dtype | None:
    """The floating dtype a config records (``dtype``, formerly ``torch_dtype``), if any."""
    dt = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(dt, str):
        dt = getattr(torch, dt, None)
    return dt if isinstance(dt, torch.dtype) and dt.is_floating_point else None


def _weight_files(d: Path) -> list[Path]:
    """``model.safetensors``, or the shards ``model.safetensors.index.json`` lists (a streamed prune
    writes one shard per decoder layer: ``graphprune.stream``)."""
    index = d / "model.safetensors.index.json"
    if index.is_file():
        files = sorted({d / f for f in json.loads(index.read_text())["weight_map"].values()})
        gone = [f.name for f in files if not f.is_file()]
        if gone:
            raise SourceError(f"{d}: shard {gone[0]} listed in {index.name} is missing; copy the whole directory")
        return files
    path = d / "model.safetensors"
    if not path.is_file():
        raise SourceError(f"{d}: no model.safetensors; write the directory with res.save_pretrained(d)")
    return [path]


def _untied(model: nn.Module, missing: set[str]) -> list[str]:
    """The missing keys that are not another loaded key's tensor (tied embeddings are written once)."""
    state = model.state_dict(keep_vars=True)
    loaded = {id(v) for k, v in state.items() if k not in missing}
    return sorted(k for k in missing if id(state[k]) not in loaded)


def _shrink_to(model: nn.Module, shapes: dict[str, list[int]]) -> None:
    """Give every tensor whose saved shape differs an empty tensor of that shape, then update the
    modules' attributes as the rewriter does."""
    from .rewrite.slicing import set_tensor, tensor_owners
    from .rewrite.to_torch import refresh_modules

    _add_biases(model, shapes)
    owners = tensor_owners(model)
    current = model.state_dict(keep_vars=True)
    touched: set[int] = set()
    for k, shape in shapes.items():
        t = current.get(k)
        if t is None or list(t.shape) == shape:
            continue
        holders = owners.get(id(t), [])
        set_tensor(holders, torch.empty(shape, dtype=t.dtype), isinstance(t, nn.Parameter), t.requires_grad)
        touched.update(id(m) for m, _ in holders)
    refresh_modules(model, touched)


def _add_biases(model: nn.Module, shapes: dict[str, list[int]]) -> None:
    """A Linear the file gives a bias its class builds without (reconstruction fitted an intercept
    into a bias-free projection: ``reconstruct="lsq"``/``"bias"``) gets an empty one to load into."""
    names = set(model.state_dict())
    for k, shape in shapes.items():
        mod_path, _, leaf = k.rpartition(".")
        if k in names or leaf != "bias":
            continue
        try:
            mod = model.get_submodule(mod_path)
        except AttributeError:
            continue
        if isinstance(mod, nn.Linear) and mod.bias is None:
            mod.bias = nn.Parameter(torch.empty(shape, dtype=mod.weight.dtype))
