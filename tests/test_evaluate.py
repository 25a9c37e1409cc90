import torch
from _train_helpers import colour_dataset

import segcls.evaluate
from segcls.core.description import ModelDescription
from segcls.data.folder import open_dataset
from segcls.evaluate import evaluate_images, evaluate_pairs, load_pairs
from segcls.model import build_model
from segcls.train import TrainConfig, train


def test_cached_pairs_score_exactly_like_decoding_each_time(tmp_path):
    ds = open_dataset(colour_dataset(tmp_path / "ds"))
    description = ModelDescription(classes=ds.classes, colors=ds.colors, mpp=ds.mpp, tile_size=32)
    torch.manual_seed(0)
    model = build_model(description.num_classes, None)
    with torch.no_grad():  # a random decoder bias so that the prediction is not one class everywhere
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    names = ds.split["val"] + ds.split["test"]
    pairs = load_pairs(ds, names)
    cached = evaluate_pairs(model, pairs, description, torch.device("cpu"))
    again = evaluate_pairs(model, pairs, description, torch.device("cpu"))  # a list, reusable
    uncached = evaluate_images(model, ds, names, description, torch.device("cpu"))
    assert cached == uncached == again
    assert cached.pixels == sum(int((m != 255).sum()) for _, m in pairs)
    assert 0 < cached.micro_f1 < 1  # not one class everywhere, so the comparison means something


def test_training_decodes_validation_images_once_per_run(tmp_path, monkeypatch):
    dataset = colour_dataset(tmp_path / "ds")
    decoded = []
    real = segcls.evaluate.load_pair

    def counting(ds, name):
        decoded.append(name)
        return real(ds, name)

    monkeypatch.setattr(segcls.evaluate, "load_pair", counting)
    config = TrainConfig(str(dataset), str(tmp_path / "run"), epochs=3, steps_per_epoch=1, tile=32, batch_size=4)
    train(config, progress=False)
    val, test = open_dataset(dataset).split["val"], open_dataset(dataset).split["test"]
    assert sorted(decoded) == sorted(val + test)  # 3 validations, one decode; the test split once at the end
