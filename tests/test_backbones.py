"""The bundled weights are really ImageNet weights: sane top-5 classes on real photos."""

import pytest
import torch

from conftest import PHOTOS, need
from vinspect.backbones import create_backbone, layer_shapes, list_backbones
from vinspect.data import load_rgb
from vinspect.errors import BadInputError, WeightsUnavailableError

# ImageNet-1k indices: 151-268 dog breeds; 22 bald eagle (21 kite, 23 vulture); 340 zebra
EXPECTED = {"dog.jpg": set(range(151, 269)), "eagle.jpg": {22}, "giraffe.jpg": {340}}


@pytest.mark.parametrize("name", [s.name for s in list_backbones()])
def test_builtin_weights_are_imagenet(name):
    photos = need(PHOTOS)
    b = create_backbone(name)
    pre = b.spec.preprocessing
    mean = torch.tensor(pre.mean).view(1, 3, 1, 1)
    std = torch.tensor(pre.std).view(1, 3, 1, 1)
    for fname, expected in EXPECTED.items():
        x = torch.from_numpy(load_rgb(photos / fname, pre.input_size, pre.interpolation)).permute(2, 0, 1)[None]
        with torch.inference_mode():
            probs = b.model((x.float() / 255 - mean) / std).softmax(-1)[0]
        top5 = set(probs.topk(5).indices.tolist())
        assert top5 & expected, f"{name} on {fname}: top-5 {sorted(top5)}"
        assert probs.max() > 0.05  # far above a random network's ~0.001
    assert len(b.weights_sha256) == 64 and b.weights_source.startswith("package:")


def test_other_timm_architectures_need_weights_and_never_download(tmp_path):
    with pytest.raises(WeightsUnavailableError, match="--weights PATH"):
        create_backbone("resnet18")
    rnd = create_backbone("resnet18", random_init=True)
    assert rnd.weights_sha256 is None
    torch.save(rnd.model.state_dict(), tmp_path / "r18.pth")
    b = create_backbone("resnet18", weights=tmp_path / "r18.pth")
    assert b.weights_source == "file"
    for k, v in rnd.model.state_dict().items():
        assert torch.equal(v, b.model.state_dict()[k])
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(BadInputError, match="cannot read weights"):
        create_backbone("resnet18", weights=tmp_path / "junk.pth")
    with pytest.raises(BadInputError, match="do not fit"):
        create_backbone("efficientnet_lite0", weights=tmp_path / "r18.pth")
    with pytest.raises(BadInputError, match="unknown backbone"):
        create_backbone("resnet_does_not_exist")


def test_layers_have_shapes_in_forward_order():
    b = create_backbone("efficientnet_lite0")
    shapes = dict(layer_shapes(b.model, 224))
    assert shapes["bn2"] == (1280, 7, 7)
    assert shapes["blocks.6"] == (320, 7, 7)
    assert shapes["blocks.1"] == (24, 56, 56)
    assert "classifier" not in shapes
