"""One shared tester; each registered model's test is a few lines (tiny random configs, no download)."""

import pytest
import torch
from transformers import Dinov2Model, SegformerForSemanticSegmentation

from ssl_seg.models import MODELS, ModelLoadError, Segmenter, build_model, model_from_spec, model_spec
from ssl_seg.models.dinov2 import Dinov2Segmenter, tiny_dinov2_config
from ssl_seg.models.segformer import SegformerSegmenter, tiny_segformer_config


class ModelTester:
    name: str
    sizes = [(64, 64), (50, 77)]  # odd sizes: models pad internally and return full resolution

    def build(self):
        torch.manual_seed(0)
        return build_model(self.name).eval()

    @pytest.mark.parametrize("size", sizes)
    def test_logits_at_full_resolution(self, size):
        logits = self.build()(torch.rand(2, 3, *size))
        assert logits.shape == (2, 4, *size) and torch.isfinite(logits).all()

    def test_backward_reaches_every_trainable_parameter(self):
        model = self.build().train()
        model(torch.rand(2, 3, 64, 64)).logsumexp(1).mean().backward()
        missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
        assert missing == []

    def test_spec_rebuilds_the_same_network(self):
        model = self.build()
        clone = model_from_spec(model_spec(model)).eval()
        clone.load_state_dict(model.state_dict())
        x = torch.rand(1, 3, 64, 64)
        torch.testing.assert_close(clone(x), model(x))

    @pytest.mark.parametrize("size", sizes)
    def test_forward_is_decode_of_encode(self, size):
        model, x = self.build(), torch.rand(2, 3, *size)
        assert isinstance(model, Segmenter)
        torch.testing.assert_close(model.decode(model.encode(x), x.shape[-2:]), model(x))

    def test_parameter_groups_cover_every_parameter_once(self):
        model = self.build()
        grouped = [id(p) for group in model.parameter_groups(1e-3, 0.1) for p in group["params"]]
        assert sorted(grouped) == sorted(id(p) for p in model.parameters())


class TestSegformerTiny(ModelTester):
    name = "segformer-tiny"


class TestDinov2Tiny(ModelTester):
    name = "dinov2-tiny"


class TestUNetSmall(ModelTester):
    name = "unet-small"


def test_registry_lists_every_model():
    assert set(MODELS) == {"segformer", "segformer-tiny", "dinov2", "dinov2-tiny", "unet-small", "unet", "unet-large"}


def test_a_new_family_is_one_class_and_one_builder(monkeypatch, tmp_path):
    """A toy family registered from outside: checkpoints name it and rebuild it from the registry."""
    from torch import nn

    from ssl_seg.models import base
    from ssl_seg.train.checkpoint import load_model, save_checkpoint

    monkeypatch.setattr(base, "FAMILIES", dict(base.FAMILIES))
    monkeypatch.setattr(base, "MODEL_BUILDERS", dict(base.MODEL_BUILDERS))

    @base.register_family("toy")
    class Toy(nn.Module):
        def __init__(self, width: int, num_classes: int):
            super().__init__()
            self.width, self.num_classes = width, num_classes
            self.encoder, self.decoder = nn.Conv2d(3, width, 3, padding=1), nn.Conv2d(width, num_classes, 1)

        def encode(self, images):
            return self.encoder(images)

        def decode(self, features, size):
            return self.decoder(features)

        def forward(self, images):
            return self.decode(self.encode(images), images.shape[-2:])

        def parameter_groups(self, lr, backbone_lr_scale=0.1):
            return [{"params": list(self.parameters()), "lr": lr}]

        def spec(self):
            return {"width": self.width, "num_classes": self.num_classes}

        @classmethod
        def from_spec(cls, spec):
            return cls(spec["width"], spec["num_classes"])

    base.register_model("toy-3")(lambda num_classes, pretrained, local_files_only: Toy(3, num_classes))
    model = base.build_model("toy-3")
    assert model_spec(model) == {"family": "toy", "width": 3, "num_classes": 4}
    save_checkpoint(tmp_path / "toy.pth", {"model": model.state_dict(), "model_spec": model_spec(model)})
    loaded, _ = load_model(tmp_path / "toy.pth")
    assert type(loaded) is Toy and loaded.width == 3
    x = torch.rand(1, 3, 16, 16)
    torch.testing.assert_close(loaded(x), model.eval()(x))
    with pytest.raises(ValueError, match="registered twice"):
        base.register_family("toy")(Toy)


def test_a_checkpoint_of_an_unknown_family_says_so():
    with pytest.raises(ModelLoadError, match="family 'mystery' is not known"):
        model_from_spec({"family": "mystery"})


@pytest.mark.parametrize("name", ["segformer", "dinov2"])
def test_pretrained_models_say_what_they_need(name):
    with pytest.raises(ModelLoadError, match="--pretrained"):
        build_model(name)


def test_unknown_model_lists_the_choices():
    with pytest.raises(ModelLoadError, match="segformer-tiny"):
        build_model("unet-huge")


@pytest.mark.parametrize("name, save", [
    ("segformer", lambda d: SegformerForSemanticSegmentation(tiny_segformer_config(4)).save_pretrained(d)),
    ("dinov2", lambda d: Dinov2Model(tiny_dinov2_config()).save_pretrained(d)),
])
def test_local_folder_loads_offline(name, save, tmp_path):
    save(tmp_path / "weights")
    model = build_model(name, pretrained=str(tmp_path / "weights"), local_files_only=True)
    assert isinstance(model, SegformerSegmenter if name == "segformer" else Dinov2Segmenter)
    assert model(torch.rand(1, 3, 32, 32)).shape == (1, 4, 32, 32)


def test_missing_weights_give_one_line(tmp_path):
    with pytest.raises(ModelLoadError) as info:
        build_model("dinov2", pretrained=str(tmp_path / "nowhere"), local_files_only=True)
    assert "\n" not in str(info.value) and "nowhere" in str(info.value)


def test_hub_id_offline_says_how_to_get_it():
    with pytest.raises(ModelLoadError, match="download it once"):
        build_model("segformer", pretrained="nvidia/mit-b0-not-cached", local_files_only=True)



@pytest.mark.parametrize("offline", [False, True])
def test_a_hub_load_names_the_offline_switches_unless_set(monkeypatch, offline):
    from huggingface_hub import constants

    from ssl_seg.models.hub import load_pretrained

    class Unreachable:
        @classmethod
        def from_pretrained(cls, name, **kwargs):
            raise OSError("We couldn't connect to the hub")

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
    with pytest.raises(ModelLoadError, match="download it once") as info:
        load_pretrained(Unreachable, "facebook/dinov2-small")
    assert ("--local-files-only or HF_HUB_OFFLINE=1 skip the hub's retries" in str(info.value)) is not offline

def _tiny_registers_dinov2():
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    config = tiny_dinov2_config().to_dict()
    config.pop("model_type", None)
    return Dinov2WithRegistersModel(Dinov2WithRegistersConfig(**config, num_register_tokens=4))


def test_dinov2_with_registers_keeps_its_registers(tmp_path):
    torch.manual_seed(0)
    backbone = _tiny_registers_dinov2().eval()
    backbone.save_pretrained(tmp_path / "weights")
    model = build_model("dinov2", pretrained=str(tmp_path / "weights"), local_files_only=True).eval()
    torch.testing.assert_close(model.backbone.embeddings.register_tokens, backbone.embeddings.register_tokens)
    clone = model_from_spec(model_spec(model)).eval()  # a checkpoint rebuilds the same backbone offline
    clone.load_state_dict(model.state_dict())
    x = torch.rand(1, 3, 64, 64)
    torch.testing.assert_close(clone(x), model(x))


def test_half_precision_weights_train_in_float32(tmp_path):
    Dinov2Model(tiny_dinov2_config()).to(torch.bfloat16).save_pretrained(tmp_path / "weights")
    model = build_model("dinov2", pretrained=str(tmp_path / "weights"), local_files_only=True)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert model(torch.rand(1, 3, 32, 32)).dtype == torch.float32


@pytest.mark.parametrize("name, save", [
    ("dinov2", lambda d: SegformerForSemanticSegmentation(tiny_segformer_config(4)).save_pretrained(d)),
    ("segformer", lambda d: Dinov2Model(tiny_dinov2_config()).save_pretrained(d)),
])
def test_folder_of_another_family_gives_one_line(name, save, tmp_path):
    save(tmp_path / "weights")
    with pytest.raises(ModelLoadError) as info:
        build_model(name, pretrained=str(tmp_path / "weights"), local_files_only=True)
    assert "\n" not in str(info.value) and "weights" in str(info.value)


def test_truncated_weights_give_one_line(tmp_path):
    Dinov2Model(tiny_dinov2_config()).save_pretrained(tmp_path / "weights")
    weights = tmp_path / "weights" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # a copy cut short
    with pytest.raises(ModelLoadError) as info:
        build_model("dinov2", pretrained=str(tmp_path / "weights"), local_files_only=True)
    assert "\n" not in str(info.value) and "save_pretrained" in str(info.value)


def test_tiny_dinov2_refuses_pretrained_weights(tmp_path):
    with pytest.raises(ModelLoadError, match="--model dinov2"):
        build_model("dinov2-tiny", pretrained=str(tmp_path))
