import torch

from vinspect import _torchvision_guard as guard


def test_guard_makes_torchvision_and_timm_importable():
    guard.ensure_torchvision()
    import timm
    import torchvision

    assert torchvision.__version__
    assert hasattr(torch.ops.torchvision, "nms")  # schema declared (or the real kernel loaded)
    assert timm.create_model("tf_efficientnet_lite0", pretrained=False) is not None


def test_guard_does_nothing_when_the_extension_loads(monkeypatch):
    monkeypatch.setattr(guard, "_state", {"checked": False, "patched": False})
    monkeypatch.setattr(guard, "_extension_loads", lambda: True)
    monkeypatch.delitem(__import__("sys").modules, "torchvision", raising=False)
    assert guard.ensure_torchvision() is False
    assert guard._state == {"checked": True, "patched": False}


def test_guard_patches_only_a_broken_extension(monkeypatch):
    monkeypatch.setattr(guard, "_state", {"checked": False, "patched": False})
    monkeypatch.setattr(guard, "_extension_loads", lambda: False)
    monkeypatch.delitem(__import__("sys").modules, "torchvision", raising=False)
    assert guard.ensure_torchvision() is True
    assert hasattr(torch.ops.torchvision, "nms") and hasattr(torch.ops.torchvision, "qnms")
