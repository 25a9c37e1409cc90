"""--pretrained: small synthetic checkpoints in each supported layout (torchvision, timm, the self-supervised
histology PyTorch Lightning checkpoint, a segcls checkpoint), downloads from file:// URLs (no network), and
one clear error for each way a file can be wrong."""

import argparse
import hashlib
import json
import sys
import types

import pytest
import torch
from _train_helpers import colour_dataset
from click.testing import CliRunner

from segcls.checkpoint import save_checkpoint
from segcls.cli.train import main as train_main
from segcls.core.description import ModelDescription
from segcls.core.errors import CheckpointError
from segcls.model import ResNet18Encoder, build_model
from segcls.pretrained import IMAGENET_URL, load_encoder, read_file, resolve


def torchvision_state(seed: int = 0, batches_tracked: bool = True) -> dict:
    """A resnet18 state dict as torchvision writes it: the encoder's keys plus layer4 and fc, random values."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for k, v in ResNet18Encoder().state_dict().items():
        if k.endswith("num_batches_tracked"):
            if batches_tracked:
                state[k] = torch.tensor(7)
            continue
        state[k] = torch.rand(v.shape, generator=g) + 0.1  # positive: valid running variances too
    state["layer4.0.conv1.weight"] = torch.rand(512, 256, 3, 3, generator=g)
    state["layer4.1.bn2.running_var"] = torch.rand(512, generator=g)
    state["fc.weight"] = torch.rand(1000, 512, generator=g)
    state["fc.bias"] = torch.rand(1000, generator=g)
    return state


def assert_loaded(encoder: torch.nn.Module, state: dict, prefix: str = "") -> None:
    got = encoder.state_dict()
    for k in ("conv1.weight", "bn1.running_var", "layer2.0.downsample.0.weight", "layer3.1.bn2.bias"):
        torch.testing.assert_close(got[k], state[prefix + k])


def write_safetensors(path, tensors: dict) -> None:
    """The .safetensors format by hand: 8-byte header length, JSON header, raw little-endian data."""
    names = {torch.float32: "F32", torch.int64: "I64"}
    header, blobs, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for k, v in tensors.items():
        raw = v.contiguous().numpy().tobytes()
        header[k] = {"dtype": names[v.dtype], "shape": list(v.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header).encode()
    path.write_bytes(len(text).to_bytes(8, "little") + text + b"".join(blobs))


def lightning_checkpoint(path, state: dict) -> None:
    """The layout of Ciga et al.'s tenpercent_resnet18.ckpt: a PyTorch Lightning checkpoint whose
    'state_dict' holds the ResNet under 'model.resnet.' (next to a projection head), and whose
    hyper-parameters are pickled Lightning and argparse objects, which weights_only refuses."""
    names = ("pytorch_lightning", "pytorch_lightning.utilities", "pytorch_lightning.utilities.parsing")
    module = types.ModuleType(names[-1])

    class AttributeDict(dict):
        pass

    AttributeDict.__module__, AttributeDict.__qualname__ = module.__name__, "AttributeDict"
    module.AttributeDict = AttributeDict
    fakes = {name: types.ModuleType(name) for name in names[:-1]} | {names[-1]: module}
    sys.modules.update(fakes)  # only while saving: the loading side has no Lightning
    try:
        hparams = AttributeDict(batch_size=512, args=argparse.Namespace(lr=1.0, optimizer="lars"))
        weights = {f"model.resnet.{k}": v for k, v in state.items()}
        weights["model.fc1.weight"] = torch.zeros(128, 512)  # the SimCLR projection head
        weights["model.fc1.bias"] = torch.zeros(128)
        payload = {
            "epoch": 1000,
            "global_step": 123,
            "pytorch-lightning_version": "0.7.6",
            "state_dict": weights,
            "optimizer_states": [{"state": {}, "param_groups": [{"lr": 1.0}]}],
            "hparams": hparams,
        }
        torch.save(payload, path)
    finally:
        for name in fakes:
            del sys.modules[name]


def test_torchvision_layout(tmp_path):
    state = torchvision_state()
    torch.save(state, tmp_path / "resnet18.pth")
    model = build_model(3, pretrained=tmp_path / "resnet18.pth")
    assert_loaded(model.encoder, state)


def test_torchvision_file_without_batch_counters(tmp_path):
    state = torchvision_state(batches_tracked=False)
    torch.save(state, tmp_path / "old.pth")
    encoder = ResNet18Encoder()
    info = load_encoder(encoder, tmp_path / "old.pth")
    assert_loaded(encoder, state)
    assert "from old.pth (a state dict)" in str(info) and "4 of layer4/fc not used" in str(info)


def test_dataparallel_prefix(tmp_path):
    state = torchvision_state()
    torch.save({f"module.{k}": v for k, v in state.items()}, tmp_path / "dp.pth")
    encoder = ResNet18Encoder()
    info = load_encoder(encoder, tmp_path / "dp.pth")
    assert_loaded(encoder, state)
    assert info.prefix == "module."


def test_timm_training_checkpoint(tmp_path):
    """timm's train.py saves {'epoch', 'arch', 'state_dict', 'optimizer', 'version', 'args', ...}; resnet18 keys
    are torchvision's."""
    state = torchvision_state(seed=1)
    ema = torchvision_state(seed=2)
    payload = {"epoch": 99, "arch": "resnet18", "state_dict": state, "state_dict_ema": ema, "version": 2}
    torch.save(payload, tmp_path / "timm.pth.tar")
    encoder = ResNet18Encoder()
    info = load_encoder(encoder, tmp_path / "timm.pth.tar")
    assert_loaded(encoder, state)  # the plain weights, as timm's load_checkpoint(use_ema=False)
    assert "checkpoint's 'state_dict'" in str(info)


def test_timm_safetensors(tmp_path):
    state = torchvision_state(seed=3)
    write_safetensors(tmp_path / "model.safetensors", state)
    assert set(read_file(tmp_path / "model.safetensors")) == set(state)
    encoder = ResNet18Encoder()
    load_encoder(encoder, tmp_path / "model.safetensors")
    assert_loaded(encoder, state)


def test_self_supervised_histology_lightning_checkpoint(tmp_path):
    state = torchvision_state(seed=4)
    lightning_checkpoint(tmp_path / "tenpercent_resnet18.ckpt", state)
    with pytest.raises(Exception, match=r"(?i)weights only"):  # the plain safe load cannot read it
        torch.load(tmp_path / "tenpercent_resnet18.ckpt", weights_only=True)
    encoder = ResNet18Encoder()
    info = load_encoder(encoder, tmp_path / "tenpercent_resnet18.ckpt")
    assert_loaded(encoder, state)
    text = str(info)
    assert "PyTorch Lightning checkpoint's 'state_dict'" in text and "backbone under 'model.resnet.'" in text
    assert "2 keys outside the backbone left out" in text


def test_stand_ins_run_no_code(tmp_path):
    """A class the unpickler does not know is replaced, never imported or called."""
    payload = read_file(_pickle_with_os_system(tmp_path))
    assert type(payload["state_dict"]).__name__ == "system"  # an inert stand-in for os.system
    assert torch.equal(payload["w"], torch.zeros(1))
    assert not (tmp_path / "pwned").exists()


def _pickle_with_os_system(tmp_path):
    """A torch file whose pickle would call os.system('touch pwned') if its globals were trusted."""
    import os

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    path = tmp_path / "evil.pt"
    torch.save({"state_dict": Evil(), "w": torch.zeros(1)}, path)
    return path


def test_segcls_checkpoint_encoder(tmp_path):
    model = build_model(3)
    with torch.no_grad():
        model.encoder.conv1.weight.fill_(0.5)
    save_checkpoint(tmp_path / "best.pt", model, ModelDescription(classes=("a", "b", "c")))
    encoder = ResNet18Encoder()
    info = load_encoder(encoder, tmp_path / "best.pt")
    assert torch.all(encoder.conv1.weight == 0.5)
    assert info.prefix == "encoder." and info.left_out > 0  # the decoder


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        ("missing", r"1 missing \['layer2.0.downsample.0.weight'\]"),
        ("resnet34", r"not in the encoder \['layer1.2.bn1.bias'"),
        ("shape", r"other shapes than ResNet-18's: conv1.weight \(64, 4, 7, 7\)"),
        ("resnet18d", "no ResNet in the file"),
        ("two", "several ResNets in the file"),
        ("no_state", "no state dict in the file"),
        ("garbage", "cannot read pretrained weights"),
        ("absent", "pretrained weights not found"),
    ],
)
def test_wrong_files_are_one_clear_error(tmp_path, breakage, message):
    state = torchvision_state()
    path = tmp_path / "w.pth"
    if breakage == "missing":
        del state["layer2.0.downsample.0.weight"]
    elif breakage == "resnet34":  # three blocks in layer1
        state.update({f"layer1.2.{k[len('layer1.1.') :]}": v for k, v in state.items() if k.startswith("layer1.1.")})
    elif breakage == "shape":
        state["conv1.weight"] = torch.zeros(64, 4, 7, 7)
    elif breakage == "resnet18d":  # timm's deep-stem variant: conv1 is a Sequential
        state = {k.replace("conv1.weight", "conv1.0.weight") if k == "conv1.weight" else k: v for k, v in state.items()}
    elif breakage == "two":  # a momentum encoder next to the online one
        state = {**{f"online.{k}": v for k, v in state.items()}, **{f"target.{k}": v for k, v in state.items()}}
    elif breakage == "no_state":
        state = {"epoch": 3, "note": "no tensors"}
    if breakage == "garbage":
        path.write_bytes(b"not a checkpoint at all")
    elif breakage != "absent":
        torch.save(state, path)
    with pytest.raises(CheckpointError, match=message):
        load_encoder(ResNet18Encoder(), path)


def hashed_copy(tmp_path, state) -> tuple:
    """A torch.hub-named file `resnet18-<sha256[:8]>.pth` and its file:// URL."""
    raw = tmp_path / "raw.pth"
    torch.save(state, raw)
    digest = hashlib.sha256(raw.read_bytes()).hexdigest()
    served = tmp_path / "server" / f"resnet18-{digest[:8]}.pth"
    served.parent.mkdir()
    raw.rename(served)
    return served, served.as_uri()


def test_download_caches_and_checks_the_hash_in_the_name(tmp_path):
    state = torchvision_state(seed=5)
    served, url = hashed_copy(tmp_path, state)
    cache = tmp_path / "cache"
    path = resolve(url, cache=cache, progress=False)
    assert path == cache / served.name and path.read_bytes() == served.read_bytes()
    served.unlink()  # the second time it comes from the cache
    assert resolve(url, cache=cache, progress=False) == path
    encoder = ResNet18Encoder()
    load_encoder(encoder, url, cache=cache)
    assert_loaded(encoder, state)


def test_download_with_a_wrong_hash_leaves_nothing(tmp_path):
    served, _ = hashed_copy(tmp_path, torchvision_state())
    wrong = served.with_name("resnet18-00000000.pth")
    served.rename(wrong)
    cache = tmp_path / "cache"
    with pytest.raises(CheckpointError, match="does not start with 00000000"):
        resolve(wrong.as_uri(), cache=cache, progress=False)
    assert not any(cache.iterdir())


def test_imagenet_offline_names_the_url_and_the_path(tmp_path):
    """`imagenet` stands for torchvision's URL; here it points at a file:// URL that does not exist, as an
    offline machine sees download.pytorch.org."""
    assert IMAGENET_URL == "https://download.pytorch.org/models/resnet18-f37072fd.pth"
    missing = (tmp_path / "offline" / "resnet18-f37072fd.pth").as_uri()
    cache = tmp_path / "cache"
    with pytest.raises(CheckpointError) as e:
        resolve("imagenet", cache=cache, progress=False, named={"imagenet": missing})
    text = str(e.value)
    assert text.startswith(f"cannot download {missing}") and str(cache / "resnet18-f37072fd.pth") in text
    assert "\n" not in text


def test_cli_pretrained_file_and_errors(tmp_path):
    dataset = colour_dataset(tmp_path / "ds")
    torch.save(torchvision_state(), tmp_path / "resnet18.pth")
    args = [str(dataset), "--tile", "32", "--batch-size", "4", "--epochs", "1", "--steps-per-epoch", "1"]
    args += ["--device", "cpu"]
    r = CliRunner().invoke(
        train_main, [*args, "-o", str(tmp_path / "run"), "--pretrained", str(tmp_path / "resnet18.pth")]
    )
    assert r.exit_code == 0, r.output
    assert "pretrained encoder: " in r.output
    r = CliRunner().invoke(
        train_main, [*args, "-q", "-o", str(tmp_path / "r2"), "--pretrained", str(tmp_path / "nope.pth")]
    )
    assert r.exit_code == 2 and r.output.startswith("Error: pretrained weights not found") and r.output.count("\n") == 1
    # `imagenet` with a bad file already in the cache: refused by its hash, no download tried
    home = tmp_path / "torch_home"
    (home / "hub" / "checkpoints").mkdir(parents=True)
    (home / "hub" / "checkpoints" / "resnet18-f37072fd.pth").write_bytes(b"truncated")
    r = CliRunner(env={"TORCH_HOME": str(home)}).invoke(
        train_main, [*args, "-q", "-o", str(tmp_path / "r3"), "--pretrained", "imagenet"]
    )
    assert r.exit_code == 2 and "does not start with f37072fd" in r.output and r.output.count("\n") == 1
