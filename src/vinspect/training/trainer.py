"""The training loop shared by every CNN method: stages (head, then fine-tuning), optimiser and schedule,
early stopping on validation loss with best-weights restore, a checkpoint per epoch to resume from, history."""

from __future__ import annotations

import math
import random
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .config import TrainConfig
from .data import ArrayDataset


CL = torch.channels_last  # NHWC in memory: about twice as fast for these networks on a CPU, also to train


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def pick_device(device: str | None) -> torch.device:
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def stages_for(cfg: TrainConfig) -> list[tuple[str, int, float]]:
    """``[(stage, epochs, learning rate)]``: transfer trains the head; finetune then unfreezes the top blocks."""
    if cfg.method == "scratch":
        return [("all", cfg.epochs, cfg.lr)]
    probe = [("probe", 1, 0.0)] if cfg.probe else []
    if cfg.method == "transfer":
        return [*probe, ("head", cfg.epochs, cfg.lr)]
    head = [("head", cfg.head_epochs, cfg.lr)] if cfg.head_epochs > 0 else []
    return [*probe, *head, ("finetune", cfg.epochs, cfg.second_stage_lr)]


@torch.no_grad()
def linear_probe(net: nn.Module, images: np.ndarray, labels: np.ndarray, n_classes: int, class_weight=None,
                 batch_size: int = 64) -> float:
    """Fit the new head as a logistic regression (scikit-learn, L-BFGS) on the frozen backbone's pooled
    features of ``images`` (no augmentation) and copy it into ``net.fc``: the head starts trained, so the
    fine-tuning that follows does not distort the pretrained features with a random head's gradients
    (linear probing then fine-tuning, LP-FT).  Returns the probe's training accuracy."""
    from sklearn.linear_model import LogisticRegression

    device = next(net.parameters()).device
    net.eval()
    feats = []
    for s in range(0, len(images), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(images[s:s + batch_size])).permute(0, 3, 1, 2).float()
        feats.append(net.features(x.to(device, memory_format=CL)).float().cpu().numpy())
    f = np.concatenate(feats).astype(np.float64)
    present = np.unique(labels)
    # the head method's classifier: standardised features, then logistic regression ...
    mu, sd = f.mean(axis=0), f.std(axis=0) + 1e-6
    lr = LogisticRegression(max_iter=2000, class_weight=class_weight).fit((f - mu) / sd, labels)
    coef, icpt = lr.coef_, lr.intercept_
    if len(present) == 2:  # scikit-learn keeps one row for two classes: split it into two logits
        coef, icpt = np.stack([-coef[0] / 2, coef[0] / 2]), np.array([-icpt[0] / 2, icpt[0] / 2])
    # ... folded into one dense layer on the raw features: w (x - mu) / sd + b = (w / sd) x + (b - w mu / sd)
    w = np.zeros((n_classes, f.shape[1]))
    b = np.full(n_classes, -30.0)  # a class absent from training stays improbable
    w[present] = coef / sd
    b[present] = icpt - (coef / sd) @ mu
    net.fc.weight.copy_(torch.from_numpy(w.astype(np.float32)))
    net.fc.bias.copy_(torch.from_numpy(b.astype(np.float32)))
    return float(lr.score((f - mu) / sd, labels))


def _optimizer(cfg: TrainConfig, params, lr: float):
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=True)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)


def _scheduler(cfg: TrainConfig, opt, epochs: int):
    """Per-epoch schedule: linear warm-up then cosine decay (torch's own schedulers chained), or step decay."""
    S = torch.optim.lr_scheduler
    if cfg.scheduler == "step":
        return S.StepLR(opt, step_size=max(1, cfg.step_size), gamma=cfg.gamma)
    if cfg.scheduler == "none":
        return S.ConstantLR(opt, factor=1.0, total_iters=0)
    warm = min(cfg.warmup_epochs, max(0, epochs - 1))
    cosine = S.CosineAnnealingLR(opt, T_max=max(1, epochs - warm), eta_min=0.0)
    if warm <= 0:
        return cosine
    return S.SequentialLR(opt, [S.LinearLR(opt, start_factor=0.1, total_iters=warm), cosine], milestones=[warm])


def class_weights(labels: np.ndarray, n_classes: int) -> torch.Tensor:
    """scikit-learn's 'balanced' weights: n_samples / (n_classes * count)."""
    from sklearn.utils.class_weight import compute_class_weight

    present = np.unique(labels)
    w = np.ones(n_classes, dtype=np.float32)
    w[present] = compute_class_weight("balanced", classes=present, y=labels)
    return torch.tensor(w)


@torch.no_grad()
def predict_proba(net: nn.Module, images: np.ndarray, batch_size: int = 64, device=None) -> np.ndarray:
    """Softmax probabilities of (N, H, W, C) uint8 images (no augmentation)."""
    device = device or next(net.parameters()).device
    net.eval()
    out = []
    for s in range(0, len(images), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(images[s:s + batch_size])).permute(0, 3, 1, 2).float()
        out.append(torch.softmax(net(x.to(device, memory_format=CL)).float(), dim=1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


class _Classify:
    """Image labels: cross-entropy, accuracy."""

    metric, short = "accuracy", "acc"

    def __init__(self, cfg: TrainConfig, train_labels, n_classes: int, device):
        weight = class_weights(train_labels, n_classes).to(device) if cfg.class_weight == "balanced" else None
        self.loss_fn = nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.label_smoothing)
        self.val_loss_fn = nn.CrossEntropyLoss(weight=weight)  # validation: the plain loss

    @staticmethod
    def counts(logits, y) -> tuple[float, float]:
        return int((logits.argmax(1) == y).sum()), len(y)


class _Segment:
    """Pixel masks of class indices (N, H, W): Dice + cross-entropy (binary: one logit channel, Dice + BCE);
    the metric is the IoU of the defect classes over all pixels of the epoch."""

    metric, short = "iou", "iou"

    def __init__(self, cfg: TrainConfig, train_labels, n_classes: int, device):
        self.n_classes = n_classes
        self.loss_fn = self.val_loss_fn = segmentation_loss(n_classes)

    def counts(self, logits, y) -> tuple[float, float]:
        pred = (logits[:, 0] > 0).long() if logits.shape[1] == 1 else logits.argmax(1)
        fg_p, fg_t = pred > 0, y > 0
        same = pred == y
        return int((fg_p & fg_t & same).sum()), int((fg_p | fg_t).sum())


def soft_dice_loss(logits: torch.Tensor, y: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - soft Dice over the batch; binary (one channel, sigmoid) or multi-class (softmax, defect classes)."""
    if logits.shape[1] == 1:
        p = torch.sigmoid(logits[:, 0].float())
        t = y.float()
        return 1 - (2 * (p * t).sum() + eps) / (p.sum() + t.sum() + eps)
    p = torch.softmax(logits.float(), 1)[:, 1:]
    t = nn.functional.one_hot(y, logits.shape[1]).permute(0, 3, 1, 2)[:, 1:].float()
    inter = (p * t).sum((0, 2, 3))
    return 1 - ((2 * inter + eps) / (p.sum((0, 2, 3)) + t.sum((0, 2, 3)) + eps)).mean()


def segmentation_loss(n_classes: int):
    """Dice + BCE (binary: background and one defect class) or Dice + cross-entropy (more classes)."""

    def loss(logits, y):
        if logits.shape[1] == 1:
            ce = nn.functional.binary_cross_entropy_with_logits(logits[:, 0].float(), y.float())
        else:
            ce = nn.functional.cross_entropy(logits.float(), y)
        return ce + soft_dice_loss(logits, y)

    return loss


@torch.no_grad()
def _score(net, loader, loss_fn, device, counts=_Classify.counts) -> tuple[float, float]:
    net.eval()
    tot = 0
    num = den = 0
    loss = 0.0
    for x, y in loader:
        x, y = x.to(device, memory_format=CL), y.to(device)
        logits = net(x)
        loss += float(loss_fn(logits, y)) * len(y)
        a, b = counts(logits, y)
        num += a
        den += b
        tot += len(y)
    return loss / max(tot, 1), num / max(den, 1)


def fit(net: nn.Module, cfg: TrainConfig, train_images: np.ndarray, train_labels: np.ndarray,
        val_images: np.ndarray | None, val_labels: np.ndarray | None, n_classes: int,
        checkpoint: str | Path | None = None, fingerprint: str = "", progress: bool = True,
        desc: str = "train", task: str = "classify", objective=None) -> dict:
    """Train ``net`` in place through the method's stages; returns ``{history, best_epoch, resumed_from, ...}``.

    With ``checkpoint``, the state after each epoch is written there and a matching checkpoint (same
    ``fingerprint``) is resumed from.  With a validation set, each stage stops early when the validation loss has
    not improved for ``cfg.patience`` epochs and ends with the weights of its best epoch.

    ``task="segment"``: the labels are (N, H, W) uint8 masks of class indices, the network returns per-pixel
    logits (one channel when ``n_classes`` is 2), augmentation moves each mask with its image, the loss is
    Dice + BCE/cross-entropy, one stage trains every layer, and the history reports ``train_iou``/``val_iou``.

    ``objective``: a task defined outside this module (detection: ``vinspect.detect.train.DetectObjective``)
    brings its own data and steps: ``transform(cfg, size)``, ``dataset(images, labels, transform)``, ``collate``,
    ``to_device(y, device)``, ``train_step(net, x, y) -> (loss, outputs)``, ``counts(outputs, y)``,
    ``score(net, loader, device) -> (val loss, val metric)``, ``metric``/``short`` and ``val_batch_size``; one
    stage trains every layer, with the same schedule, early stopping, checkpoints and history.
    """
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    device = pick_device(cfg.device)
    seed_everything(cfg.seed)
    net.to(device, memory_format=CL)
    size = tuple(train_images.shape[1:3])
    seg = task == "segment"
    custom = objective is not None
    if custom:
        transform, make_ds, collate = objective.transform(cfg, size), objective.dataset, objective.collate
        val_bs = max(objective.val_batch_size, cfg.batch_size)
    else:
        transform, collate = cfg.augment.build(size, with_mask=seg), None
        make_ds = MaskArrayDataset if seg else ArrayDataset
        val_bs = max(16 if seg else 64, cfg.batch_size)
    train_ds = make_ds(train_images, train_labels, transform)
    gen = torch.Generator().manual_seed(cfg.seed)
    loader = DataLoader(train_ds, batch_size=cfg.batch_size, shuffle=True, generator=gen, collate_fn=collate,
                        drop_last=len(train_ds) > cfg.batch_size and len(train_ds) % cfg.batch_size == 1)
    has_val = val_images is not None and len(val_images) > 0
    val_loader = (DataLoader(make_ds(val_images, val_labels, None), batch_size=val_bs, collate_fn=collate)
                  if has_val else None)
    if not custom:
        objective = (_Segment if seg else _Classify)(cfg, train_labels, n_classes, device)
    loss_fn, val_loss_fn, counts = getattr(objective, "loss_fn", None), getattr(objective, "val_loss_fn", None), \
        objective.counts
    metric, short = objective.metric, objective.short
    stages = [("all", cfg.epochs, cfg.lr)] if (seg or custom) else stages_for(cfg)

    state = {"stage": 0, "epoch": 0, "history": [], "best": None, "best_loss": math.inf, "bad": 0,
             "best_epochs": [], "best_in_stage": 0, "train_seconds": 0.0}
    resumed_from = None
    ck = Path(checkpoint) if checkpoint else None
    saved = _load_checkpoint(ck, fingerprint)
    if saved is not None:
        net.load_state_dict(saved["net"])
        state.update({k: saved[k] for k in state})
        torch.set_rng_state(saved["rng"])
        gen.set_state(saved["gen"])
        resumed_from = {"stage": stages[min(state["stage"], len(stages) - 1)][0], "epoch": state["epoch"]}

    total = sum(e for _, e, _ in stages)
    done_before = sum(e for _, e, _ in stages[: state["stage"]]) + state["epoch"]
    bar = tqdm(total=total, initial=done_before, desc=desc, unit="epoch", disable=not progress, leave=False)
    try:
        while state["stage"] < len(stages):
            name, epochs, lr = stages[state["stage"]]
            if name == "probe":
                t0 = time.perf_counter()
                acc = linear_probe(net, train_images, train_labels, n_classes, cfg.class_weight)
                row = {"stage": "probe", "epoch": 1, "lr": 0.0, "train_loss": float("nan"), "train_accuracy": acc}
                if has_val:
                    row["val_loss"], row["val_accuracy"] = _score(net, val_loader, val_loss_fn, device, counts)
                    state["best_loss"], state["best_in_stage"] = row["val_loss"], 1
                    state["best"] = _snapshot(net)
                row["seconds"] = time.perf_counter() - t0
                state["train_seconds"] += row["seconds"]
                state["history"].append(row)
                bar.update(1)
                state["epoch"] = 1  # the probe is the whole stage: no optimiser, no epochs
            else:
                if hasattr(net, "stage"):
                    net.stage("finetune" if name == "finetune" else "head")
                opt = _optimizer(cfg, [p for p in net.parameters() if p.requires_grad], lr)
                sched = _scheduler(cfg, opt, epochs)
                if saved is not None and saved.get("opt") is not None and saved["stage"] == state["stage"]:
                    opt.load_state_dict(saved["opt"])
                    sched.load_state_dict(saved["sched"])
            saved = None
            while state["epoch"] < epochs:
                t0 = time.perf_counter()
                net.train()
                seen = correct = total = 0
                run_loss = 0.0
                for x, y in loader:
                    x = x.to(device, memory_format=CL)
                    y = objective.to_device(y, device) if custom else y.to(device)
                    opt.zero_grad(set_to_none=True)
                    if custom:
                        loss, logits = objective.train_step(net, x, y)
                    else:
                        logits = net(x)
                        loss = loss_fn(logits, y)
                    loss.backward()
                    opt.step()
                    run_loss += float(loss.detach()) * len(y)
                    a, b = counts(logits.detach() if logits is not None else None, y)
                    correct += a
                    total += b
                    seen += len(y)
                    bar.set_postfix(stage=name, loss=f"{run_loss / seen:.3f}",
                                    **{short: f"{correct / total:.3f}" if total else "-"}, refresh=False)
                cur_lr = opt.param_groups[0]["lr"]
                sched.step()
                row = {"stage": name, "epoch": state["epoch"] + 1, "lr": cur_lr,
                       "train_loss": run_loss / max(seen, 1),
                       f"train_{metric}": correct / total if total else float("nan")}
                if has_val:
                    row["val_loss"], row[f"val_{metric}"] = (
                        objective.score(net, val_loader, device) if custom
                        else _score(net, val_loader, val_loss_fn, device, counts))
                row["seconds"] = time.perf_counter() - t0
                state["train_seconds"] += row["seconds"]
                state["history"].append(row)
                state["epoch"] += 1
                stop = False
                if has_val:
                    if row["val_loss"] < state["best_loss"] - 1e-6:
                        state["best_loss"], state["bad"] = row["val_loss"], 0
                        state["best"] = _snapshot(net)
                        state["best_in_stage"] = state["epoch"]
                    else:
                        state["bad"] += 1
                        stop = cfg.patience > 0 and state["bad"] >= cfg.patience
                bar.set_postfix(stage=name, loss=f"{row['train_loss']:.3f}", **{short: f"{row[f'train_{metric}']:.3f}"},
                                **({"val_loss": f"{row['val_loss']:.3f}", f"val_{short}": f"{row[f'val_{metric}']:.3f}"}
                                   if has_val else {}))
                bar.update(1)
                if stop:
                    row["early_stop"] = True
                    bar.update(epochs - state["epoch"])
                    state["epoch"] = epochs
                _save_checkpoint(ck, fingerprint, net, opt, sched, state, gen)
            # end of stage: continue from its best weights
            if state["best"] is not None:
                net.load_state_dict(state["best"])
                state["best_epochs"].append({"stage": name, "epoch": state["best_in_stage"],
                                             "val_loss": state["best_loss"]})
            state["best_in_stage"] = 0
            state["stage"] += 1
            state["epoch"] = 0
            state["best_loss"], state["bad"] = (state["best_loss"] if state["best"] is not None else math.inf), 0
            _save_checkpoint(ck, fingerprint, net, None, None, state, gen)
    finally:
        bar.close()
    return {"history": state["history"], "best_epochs": state["best_epochs"], "resumed_from": resumed_from,
            "train_seconds": state["train_seconds"], "device": str(device)}


def _snapshot(net: nn.Module) -> dict:
    """A copy of the weights, kept apart from the training that goes on."""
    return {k: v.detach().to("cpu", copy=True) for k, v in net.state_dict().items()}


def _save_checkpoint(path: Path | None, fingerprint, net, opt, sched, state, gen) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"fingerprint": fingerprint, "net": net.state_dict(), "opt": opt.state_dict() if opt else None,
                "sched": sched.state_dict() if sched else None, "rng": torch.get_rng_state(), "gen": gen.get_state(),
                **state}, tmp)
    tmp.replace(path)  # atomic: an interruption never leaves half a checkpoint


def _load_checkpoint(path: Path | None, fingerprint: str):
    if path is None or not path.is_file():
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - an unreadable checkpoint is ignored: training starts over
        return None
    if saved.get("fingerprint") != fingerprint:
        return None
    return saved


class MaskArrayDataset:
    """(N, H, W, C) uint8 images + (N, H, W) masks of class indices -> ((C, H, W) float in 0..255, (H, W) int64);
    an augmenting transform takes and returns the pair (see ``AugmentConfig.build(..., with_mask=True)``)."""

    def __init__(self, images: np.ndarray, masks: np.ndarray, transform=None):
        if len(images) != len(masks) or images.shape[1:3] != masks.shape[1:3]:
            raise ValueError(f"images {images.shape} and masks {masks.shape} do not match")
        self.images = images
        self.masks = masks
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        import torch

        x = torch.from_numpy(np.ascontiguousarray(self.images[i])).permute(2, 0, 1)
        m = torch.from_numpy(np.ascontiguousarray(self.masks[i]))
        if self.transform is not None:
            return self.transform(x, m)
        return x.float(), m.long()
