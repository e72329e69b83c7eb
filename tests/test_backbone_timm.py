"""Any timm network as a backbone: features of CNNs, ViTs and Swin-style models at 112x112 into the face
embedding layer, weights from a local file (never a download), one-line errors for unknown names."""
from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import save_file

from facetrain.backbones import build_backbone
from facetrain.errors import ConfigError, ModelError
from facetrain.untrusted import UnsafeFileError
from tests.conftest import SMOKE, only_run_dir

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize(("model", "channels", "positions"), [
    ("resnet18", 512, 16),  # CNN: [N, C, 4, 4]
    ("vit_tiny_patch16_224", 192, 50),  # ViT at 112: 7x7 patches + the class token, [N, L, C]
    ("swin_tiny_patch4_window7_224", 768, 16),  # Swin: an NHWC map
])
def test_features_of_every_layout_feed_the_embedding_layer(model, channels, positions):
    backbone = build_backbone("timm", 128, model=model)
    assert backbone.output.bn.num_features == channels and backbone.output.fc.in_features == channels * positions
    embedding = backbone.train()(torch.randn(2, 3, 112, 112))
    assert embedding.shape == (2, 128)
    embedding.sum().backward()
    assert all(p.grad is not None for p in backbone.body.parameters() if p.requires_grad)


def test_weights_from_a_local_file_load_into_the_body(tmp_path):
    source = timm.create_model("resnet18", num_classes=1000)  # as timm ships it, classifier included
    save_file(source.state_dict(), str(tmp_path / "model.safetensors"))
    torch.save(source.state_dict(), tmp_path / "model.pth")
    for name in ("model.safetensors", "model.pth"):
        body = build_backbone("timm", 64, model="resnet18", weights=str(tmp_path / name)).body
        for key, value in body.state_dict().items():
            assert torch.equal(value, source.state_dict()[key]), key
    # a ViT made for 224 pixels: timm's filter resamples its position embedding to 112 (7x7 patches + class token)
    vit = timm.create_model("vit_tiny_patch16_224", num_classes=1000)
    save_file(vit.state_dict(), str(tmp_path / "vit.safetensors"))
    body = build_backbone("timm", 64, model="vit_tiny_patch16_224", weights=str(tmp_path / "vit.safetensors")).body
    assert body.pos_embed.shape == (1, 50, 192) and vit.pos_embed.shape == (1, 197, 192)
    assert torch.equal(body.blocks[3].attn.qkv.weight, vit.blocks[3].attn.qkv.weight)


def test_bad_weight_files_are_one_line(tmp_path):
    with pytest.raises(ConfigError, match="backbone.weights=.*missing.pth does not exist"):
        build_backbone("timm", 64, model="resnet18", weights=str(tmp_path / "missing.pth"))
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(ModelError, match="is not a state dict of tensors"):
        build_backbone("timm", 64, model="resnet18", weights=str(tmp_path / "list.pth"))
    marker = tmp_path / "marker"

    class Payload:
        def __reduce__(self):
            import os

            return os.system, (f"touch {marker}",)

    torch.save({"conv1.weight": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(UnsafeFileError, match="refused: it would import posix.system"):
        build_backbone("timm", 64, model="resnet18", weights=str(tmp_path / "evil.pth"))
    assert not marker.exists()


def test_activation_checkpointing_keeps_outputs_and_gradients():
    torch.manual_seed(0)
    plain = build_backbone("timm", 32, model="resnet18").train()
    checkpointed = build_backbone("timm", 32, model="resnet18", activation_checkpointing=True).train()
    checkpointed.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 112, 112)
    outputs = [model(x) for model in (plain, checkpointed)]
    torch.testing.assert_close(outputs[0], outputs[1])
    for out in outputs:
        out.square().sum().backward()
    for (name, a), b in zip(plain.named_parameters(), checkpointed.parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=name)


def test_unknown_model_is_one_line_with_close_matches(run_cli):
    with pytest.raises(ConfigError, match="backbone.model=convnext_tiy is not a timm model; did you mean one of: convnext_tiny"):
        build_backbone("timm", 64, model="convnext_tiy")
    result = run_cli(*SMOKE, "backbone=timm", "backbone.model=convnext_tiy")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("facetrain: error: backbone.model=convnext_tiy is not a timm model")


def test_a_timm_backbone_trains_from_the_command_line(run_cli, tmp_path):
    result = run_cli(*SMOKE, "backbone=timm", "backbone.model=resnet10t", "trainer.max_steps=3", "trainer.batch_size=4",
                     "eval.at_start=false", "embedding_size=64", "optimizer.no_decay_norm_bias=true")
    assert result.returncode == 0, result.stderr
    import facetrain

    backbone = facetrain.load_backbone(only_run_dir(tmp_path / "outputs"))
    with torch.no_grad():
        assert backbone(torch.zeros(1, 3, 112, 112)).shape == (1, 64)


def test_no_decay_norm_bias_exempts_1d_weights_and_the_position_embedding():
    from facetrain.engine.model import FaceModel
    from facetrain.engine.optim import build_optimizer
    from facetrain.heads import build_head

    model = FaceModel(build_backbone("timm", 32, model="vit_tiny_patch16_224"), build_head("arcface", 32, 10))
    names = {id(p): name for name, p in model.named_parameters()}
    optimizer = build_optimizer(model, "adamw", lr=1e-3, weight_decay=0.1, betas=[0.9, 0.999], eps=1e-8,
                                no_decay_norm_bias=True)
    by_decay = {group["weight_decay"]: {names[id(p)] for p in group["params"]} for group in optimizer.param_groups}
    assert sorted(by_decay) == [0.0, 0.1]
    decayed, exempt = by_decay[0.1], by_decay[0.0]
    assert {"backbone.body.pos_embed", "backbone.body.cls_token", "backbone.body.blocks.0.norm1.weight",
            "backbone.body.blocks.0.attn.qkv.bias", "backbone.output.features.bias"} <= exempt
    assert {"backbone.body.blocks.0.attn.qkv.weight", "backbone.output.fc.weight", "head.weight"} <= decayed
    assert decayed | exempt == set(names.values()) and not decayed & exempt
