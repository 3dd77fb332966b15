"""``cnn`` models: a trained network (``transfer``, ``finetune``: a pretrained backbone with a new head;
``scratch``: the lab's small CNN), one or an ensemble of members, weights in safetensors."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import BadInputError
from .bundle import Bundle, Preprocessing, save_bundle
from .predictor import Prediction, Predictor, register


@register("cnn")
class CNNPredictor(Predictor):
    """The members' softmax probabilities, averaged (one network: its own); runs in torch."""

    def __init__(self, bundle: Bundle, **runtime):
        super().__init__(bundle, **runtime)
        if self.engine not in (None, "torch", "auto"):
            raise BadInputError(f"--engine {self.engine}: {bundle.config.get('method')} models (trained CNNs) run "
                                f"with the torch engine; `vinspect export` makes an ONNX file of them")
        cfg = bundle.config
        if not isinstance(cfg.get("members"), list) or not cfg["members"] or not isinstance(cfg.get("net"), dict):
            raise BadInputError(f"{bundle.path / 'model.json'}: a cnn model needs config.net and config.members")
        self.nets = self._load()

    def _load(self) -> list:
        from safetensors.torch import load_file

        from ..training.models import build_network
        from ..training.trainer import CL

        nets = []
        for f in self.bundle.config["members"]:
            p = self.bundle.file(f)
            if not p.is_file():
                raise BadInputError(f"{p}: missing weights file of the model")
            net, _ = build_network(self.bundle.config["net"], len(self.classes), pretrained=False)
            try:
                net.load_state_dict(load_file(str(p)))
            except Exception as e:  # noqa: BLE001 - a damaged or foreign file is bad input
                raise BadInputError(f"{p}: does not fit the model described in model.json ({type(e).__name__})") from None
            nets.append(net.eval().to(memory_format=CL))
        return nets

    def describe(self) -> dict:
        d = super().describe()
        d.update(method=self.bundle.config.get("method"), members=len(self.nets), engine="torch")
        return d

    def proba(self, pixels: np.ndarray) -> np.ndarray:
        from ..training.trainer import predict_proba

        if self.bundle.preprocessing.colour == "grey":
            pixels = pixels[..., :1]  # the grey input was replicated to three channels by decode
        return np.mean([predict_proba(n, pixels, self.batch_size) for n in self.nets], axis=0)

    def predict_pixels(self, pixels: np.ndarray) -> list[Prediction]:
        classes = self.classes
        out = []
        for p in self.proba(pixels):
            k = int(np.argmax(p))
            out.append(Prediction(classes[k], float(p[k]), {c: float(v) for c, v in zip(classes, p)}))
        return out

    def explain_method(self) -> tuple[str, str]:
        n = len(self.nets)
        member = f" (member 1 of the {n}-network ensemble)" if n > 1 else ""
        if self.bundle.config["net"].get("kind") == "labnet":
            return "grad-cam", "Grad-CAM on the lab network's last convolutional stage" + member
        return "layer-cam", "LayerCAM over the network's cut layer and the two stages before it" + member

    def _cam(self):
        """(Grad-CAM network, the modules to hook, their names), built once."""
        if getattr(self, "_cam_cache", None) is None:
            import torch

            from ..backbones.pooling import pool
            from ..explain.gradcam import cam_net, explain_layers
            from ..training.models import LabNet

            net = self.nets[0].to(memory_format=torch.contiguous_format)

            class Wrap(torch.nn.Module):  # modules around the callables (holding the network, so that its
                def __init__(self, fn, owner):  # parameters are seen), for Grad-CAM to hook
                    super().__init__()
                    self.fn = fn
                    self.owner = owner

                def forward(self, x):
                    return self.fn(x)

            if isinstance(net, LabNet):
                def spatial(x):
                    if x.shape[1] != net.in_channels:
                        x = x.mean(dim=1, keepdim=True) if net.in_channels == 1 else x.expand(-1, net.in_channels,
                                                                                              -1, -1)
                    return net.features(x / 127.5 - 1.0)

                cnet = cam_net(Wrap(spatial, net), Wrap(net.classifier, net))
                self._cam_cache = (cnet, [cnet.at], ["features"])
            else:
                from ..backbones.build import create_backbone

                model = create_backbone(self.bundle.config["net"]["backbone"], random_init=True).model.eval()
                plain = net.plain(model)  # the trained weights in the backbone's own (hookable) modules
                names = explain_layers(model, plain.layer)
                cnet = cam_net(Wrap(plain.spatial, plain), Wrap(lambda a: net.fc(pool(a, "avg")), net))
                self._cam_cache = (cnet, [model.get_submodule(n) for n in names], names)
        return self._cam_cache

    def explain_pixels(self, pixels: np.ndarray, label: str | None = None):
        from ..explain.gradcam import grad_cam, layer_cam

        pred, k = self.explanation_target(pixels, label)
        if self.bundle.preprocessing.colour == "grey":
            pixels = pixels[..., :1]
        cnet, modules, names = self._cam()
        method, why = self.explain_method()
        if method == "grad-cam":
            mask, p, size = grad_cam(cnet, pixels, k)
            info = {"map_size": size}
        else:
            mask, p = layer_cam(cnet, modules, pixels, k)
            info = {"layers": names}
        info.update(method=method, probability=p, label=self.classes[k], why=why)
        return mask, pred, info

    def export_onnx(self, path=None, opset: int = 17) -> Path:
        """One ONNX file of the network(s): input ``images`` uint8 (N, H, W, 3) RGB at the input size; outputs
        ``label`` int64 (N,) and ``probabilities`` float32 (N, K) (an ensemble's mean)."""
        import onnx
        import torch

        from ..features.onnx_engine import export_module
        from .head import write_metadata

        nets = [n.to(memory_format=torch.contiguous_format) for n in self.nets]
        grey = self.bundle.preprocessing.colour == "grey"

        class Exported(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.members = torch.nn.ModuleList(nets)

            def forward(self, images):
                x = images.permute(0, 3, 1, 2).float()
                if grey:
                    x = x[:, :1]
                p = torch.stack([torch.softmax(m(x), dim=1) for m in self.members]).mean(0)
                return p.argmax(1), p

        pre = self.bundle.preprocessing
        out = Path(path) if path else self.bundle.path / "model.onnx"
        example = np.zeros((2, pre.height, pre.width, 3), np.uint8)
        export_module(Exported().eval(), example, out, output_names=("label", "probabilities"))
        m = onnx.load(str(out))
        write_metadata(m, self.bundle, {"method": self.bundle.config.get("method"),
                                        "backbone": (self.bundle.backbone or {}).get("name", "labnet")})
        onnx.checker.check_model(m)
        onnx.save(m, str(out))
        for n in self.nets:
            n.to(memory_format=torch.channels_last)
        return out


def save_cnn_bundle(out, nets: list, classes: list[str], net_meta: dict, mean, std, config: dict, metrics: dict,
                    training: dict) -> Bundle:
    """Write a ``cnn`` bundle: each network's weights as ``weights/member-K.safetensors``."""
    from safetensors.torch import save_file

    h, w = (int(v) for v in net_meta["input_size"])
    backbone = None
    pw = training.get("pretrained_weights") or {}
    if net_meta["kind"] == "backbone":
        backbone = {"name": net_meta["backbone"], "arch": net_meta.get("arch"), "layer": net_meta["layer"],
                    "pool": "avg", "weights_sha256": pw.get("sha256"), "weights_path": pw.get("path"),
                    "random_init": False}
    members = [f"weights/member-{m}.safetensors" for m in range(len(nets))]

    def writer(net):
        return lambda p: save_file({k: v.detach().contiguous() for k, v in net.state_dict().items()}, str(p))

    bundle = Bundle(
        task="classify", kind="cnn", classes=list(classes),
        preprocessing=Preprocessing(width=w, height=h, resize=net_meta["resize"],
                                    colour="grey" if net_meta["grey"] else "rgb", mean=tuple(mean), std=tuple(std),
                                    interpolation=net_meta["interpolation"]),
        backbone=backbone, config={**config, "net": net_meta, "members": members}, metrics=metrics,
        training=training)
    save_bundle(out, bundle, {f: writer(n) for f, n in zip(members, nets)})
    return bundle
