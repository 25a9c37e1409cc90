"""Pretrained encoder weights: where `--pretrained` finds them and how their layouts map onto segcls's encoder.

Sources (`resolve`):
- `imagenet`: torchvision's ResNet-18 ImageNet-1k weights (IMAGENET1K_V1), the initialisation of the paper,
  from IMAGENET_URL. torchvision publishes the first 8 hex digits of the file's SHA-256 in its name
  (`resnet18-f37072fd.pth`; torch.hub's `check_hash` compares the same prefix); that is what is verified.
  Downloaded once into the cache: `$TORCH_HOME/hub/checkpoints/` when TORCH_HOME is set (where torchvision
  keeps it too), else `~/.cache/segcls/` (`$XDG_CACHE_HOME/segcls`); a copy already in torch's own hub
  cache is used as is. Offline, the error names the URL and the path to put the file at.
- an `https://`, `http://` or `file://` URL: fetched into the same cache under its file name; a torch.hub
  style name (`name-<hex>.ext`) is checked against its hash prefix, other names cannot be checked.
- a file path.

Layouts (`encoder_state`): the file's tensors are found in a plain state dict, or under `state_dict` (PyTorch
Lightning and timm training checkpoints), `model` (segcls checkpoints, some timm exports) or
`state_dict_ema`; `.safetensors` files (timm's Hugging Face weights) are read without the safetensors
package. The ResNet backbone is located by its key names, wherever it sits: `conv1.weight` (torchvision,
timm resnet18), `module.conv1.weight` (DataParallel), `model.resnet.conv1.weight` (the PyTorch Lightning
checkpoint of Ciga, Xu & Martel's self-supervised histology ResNet-18, `tenpercent_resnet18.ckpt`; its
README strips `model.` and `resnet.`), `encoder.conv1.weight` (a segcls checkpoint). Under that prefix,
layer4 and fc are not part of segcls's encoder and are dropped; every other key must map one to one, with
the same shape (a missing `num_batches_tracked` counter is allowed), or the file is refused with an error
that names the keys. Keys outside the backbone (an SSL projection head, a segcls decoder) are left out and
counted in the summary line.

Reading: `torch.load(weights_only=True)` first. Lightning checkpoints also pickle Lightning classes (the
hyper-parameters' AttributeDict: the "No module named 'pytorch_lightning'" of that repository's issue #1),
which weights_only refuses; those are read again with an unpickler that gives torch's weights-only allowlist
its real classes and every other class an inert stand-in that takes its arguments and state and runs no code.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

from segcls.core.atomic import atomic_path
from segcls.core.errors import CheckpointError

IMAGENET_URL = "https://download.pytorch.org/models/resnet18-f37072fd.pth"
NAMED = {"imagenet": IMAGENET_URL}
UNUSED = ("layer4.", "fc.")  # ResNet-18 parts the encoder (up to layer3) does not have
WRAPPERS = ("state_dict", "model", "state_dict_ema")
_HASH_IN_NAME = re.compile(r"-([a-f0-9]{8,64})\.")  # torch.hub's naming: name-<sha256 prefix>.ext
_URL_SCHEMES = ("https://", "http://", "file://")
_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


# -- where the file is --------------------------------------------------------------------------------------
def cache_dir() -> Path:
    """Where downloads go: $TORCH_HOME/hub/checkpoints if TORCH_HOME is set, else $XDG_CACHE_HOME/segcls."""
    if os.environ.get("TORCH_HOME"):
        return Path(os.environ["TORCH_HOME"]) / "hub" / "checkpoints"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "segcls"


def resolve(source: str | Path, cache: Path | None = None, progress: bool = True, named: dict | None = None) -> Path:
    """The local file of `source` (a name in `named`, default NAMED; a URL; a path), downloading it into
    `cache` (default `cache_dir()`) if needed."""
    text = str(source)
    url = (NAMED if named is None else named).get(text.lower(), text)
    if not url.lower().startswith(_URL_SCHEMES):
        path = Path(text).expanduser()
        if not path.is_file():
            names = ", ".join(NAMED)
            raise CheckpointError(f"pretrained weights not found: {path} (a file, a URL, or one of: {names})")
        return path
    return download(url, cache or cache_dir(), progress=progress)


def download(url: str, cache: Path, progress: bool = True) -> Path:
    """`cache`/<the URL's file name>, fetched once and checked against a hash prefix in the name, if any."""
    from tqdm import tqdm

    name = Path(urllib.parse.urlparse(url).path).name
    if not name:
        raise CheckpointError(f"{url} names no file")
    path = cache / name
    # A copy torch.hub already downloaded (torchvision users have one) is as good as ours.
    for candidate in (path, Path(torch.hub.get_dir()) / "checkpoints" / name):
        if candidate.is_file():
            check_hash(candidate, name)
            return candidate
    try:
        cache.mkdir(parents=True, exist_ok=True)
        with urllib.request.urlopen(url, timeout=60) as response, atomic_path(path) as tmp, open(tmp, "wb") as f:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=name, disable=not progress) as bar:
                while chunk := response.read(1 << 20):
                    f.write(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        reason = getattr(e, "reason", None) or getattr(e, "strerror", None) or e
        raise CheckpointError(
            f"cannot download {url} ({reason}); offline, download it elsewhere and put it at {path}"
        ) from None
    try:
        check_hash(path, name)
    except CheckpointError:
        path.unlink(missing_ok=True)
        raise
    return path


def check_hash(path: Path, name: str) -> None:
    """A file whose name carries a SHA-256 prefix (torch.hub's `name-<hex>.ext`) must match it."""
    match = _HASH_IN_NAME.search(name)
    if not match:
        return
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    if not digest.hexdigest().startswith(match[1]):
        raise CheckpointError(
            f"{path}: SHA-256 {digest.hexdigest()[:16]}... does not start with {match[1]}, the hash in its name "
            "(a broken or different file: delete it and try again)"
        )


# -- reading it -------------------------------------------------------------------------------------------
class _StandIn(dict):
    """Replaces a class a checkpoint names that its weights do not need: accepts any arguments, items and
    state, and runs no code of the original."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__()

    def __setstate__(self, state) -> None:
        self.__dict__["pickled_state"] = state


class _TolerantUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        allowed = torch._weights_only_unpickler._get_allowed_globals()
        full = f"{module}.{name}"
        if full in allowed:
            return allowed[full]
        return type(name, (_StandIn,), {"__module__": f"segcls.pretrained.stand_in.{module}"})


_TOLERANT = SimpleNamespace(Unpickler=_TolerantUnpickler, __name__="segcls.pretrained.tolerant_pickle")


def read_file(path: Path) -> object:
    """The object stored in a torch file (weights_only, else with stand-ins) or a .safetensors file."""
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        pass  # classes outside the weights-only allowlist (a Lightning checkpoint's hyper-parameters)
    except Exception as e:  # zip, EOF and unpickling errors of a file that is not a torch checkpoint
        raise CheckpointError(f"cannot read pretrained weights {path}: {type(e).__name__}") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_TOLERANT)
    except Exception as e:
        raise CheckpointError(f"cannot read pretrained weights {path}: {type(e).__name__}: {e}") from None


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a .safetensors file: an 8-byte little-endian header length, a JSON header of
    {name: {dtype, shape, data_offsets}}, then the raw little-endian data."""
    data = path.read_bytes()
    try:
        n = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + n])
        tensors = {}
        for key, info in header.items():
            if key == "__metadata__":
                continue
            start, end = info["data_offsets"]
            dtype = _SAFETENSORS_DTYPES[info["dtype"]]
            raw = bytearray(data[8 + n + start : 8 + n + end])
            flat = torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype)
            tensors[key] = flat.reshape(info["shape"])
    except (ValueError, KeyError, TypeError, RuntimeError) as e:
        raise CheckpointError(f"{path} is not a readable .safetensors file ({type(e).__name__}: {e})") from None
    return tensors


def _tensors(obj: object) -> dict[str, torch.Tensor] | None:
    if isinstance(obj, dict) and obj and all(isinstance(k, str) and torch.is_tensor(v) for k, v in obj.items()):
        return dict(obj)
    return None


def state_of(payload: object, path: Path) -> tuple[dict[str, torch.Tensor], str]:
    """(the tensors, where they were found) of a loaded file."""
    state = _tensors(payload)
    if state is not None:
        return state, "a state dict"
    if isinstance(payload, dict):
        for key in WRAPPERS:
            state = _tensors(payload.get(key))
            if state is not None:
                lightning = any("lightning" in str(k) for k in payload)
                return state, f"a {'PyTorch Lightning ' if lightning else ''}checkpoint's '{key}'"
        found = ", ".join(sorted(map(str, payload))[:6])
        raise CheckpointError(f"pretrained weights {path}: no state dict in the file (top-level keys: {found})")
    raise CheckpointError(f"pretrained weights {path} hold a {type(payload).__name__}, not a state dict")


def backbone_prefix(state: dict[str, torch.Tensor], path: Path) -> str:
    """The key prefix under which the ResNet sits: '' for torchvision / timm, 'model.resnet.' for the
    Lightning SSL checkpoint, ..."""
    prefixes = sorted(
        k[: -len("conv1.weight")]
        for k in state
        if k.endswith("conv1.weight") and f"{k[: -len('conv1.weight')]}layer1.0.conv1.weight" in state
    )
    if not prefixes:
        some = ", ".join(sorted(state)[:4])
        raise CheckpointError(
            f"pretrained weights {path}: no ResNet in the file (no '...conv1.weight' with layer1; keys: {some}, ...)"
        )
    if len(prefixes) > 1:
        raise CheckpointError(
            f"pretrained weights {path}: several ResNets in the file (under {', '.join(map(repr, prefixes))})"
        )
    return prefixes[0]


@dataclass
class Loaded:
    path: Path
    where: str  # e.g. "a PyTorch Lightning checkpoint's 'state_dict'"
    prefix: str
    tensors: int
    dropped_unused: int  # layer4, fc
    left_out: int  # keys outside the backbone

    def __str__(self) -> str:
        at = f", backbone under '{self.prefix}'" if self.prefix else ""
        out = f"; {self.left_out} keys outside the backbone left out" if self.left_out else ""
        return (
            f"pretrained encoder: {self.tensors} tensors from {self.path.name} ({self.where}{at}); "
            f"{self.dropped_unused} of layer4/fc not used{out}"
        )


def encoder_state(path: Path, expected: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], Loaded]:
    """The encoder's state dict from `path`, checked key by key and shape by shape against `expected`."""
    state, where = state_of(read_file(path), path)
    prefix = backbone_prefix(state, path)
    inside = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    mapped = {k: v for k, v in inside.items() if not k.startswith(UNUSED)}
    missing = sorted(k for k in set(expected) - set(mapped) if not k.endswith("num_batches_tracked"))
    unexpected = sorted(set(mapped) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"pretrained weights {path} do not map onto a ResNet-18 encoder ({where}, backbone prefix "
            f"'{prefix}'): {len(missing)} missing {missing[:4]}, {len(unexpected)} not in the encoder "
            f"{[prefix + k for k in unexpected[:4]]}"
        )
    bad = [
        f"{prefix}{k} {tuple(v.shape)} (encoder: {tuple(expected[k].shape)})"
        for k, v in mapped.items()
        if v.shape != expected[k].shape
    ]
    if bad:
        raise CheckpointError(f"pretrained weights {path} have other shapes than ResNet-18's: {', '.join(bad[:3])}")
    info = Loaded(path, where, prefix, len(mapped), len(inside) - len(mapped), len(state) - len(inside))
    return mapped, info


def load_encoder(encoder: nn.Module, source: str | Path, cache: Path | None = None, progress: bool = True) -> Loaded:
    """Load `source` (see `resolve`) into `encoder`; returns what was loaded, for one summary line."""
    path = resolve(source, cache, progress)
    expected = encoder.state_dict()
    state, info = encoder_state(path, expected)
    state = {k: v.to(expected[k].dtype) for k, v in state.items()}
    encoder.load_state_dict(state, strict=False)  # strict on every key but num_batches_tracked (checked above)
    return info
