"""Weight files, read safely: ``.safetensors`` (the zoo's format) and Lightning ``.ckpt``.

Nothing here runs code from a file. A ``.safetensors`` file is a JSON header plus raw tensor
bytes; its metadata names the architecture (``convac.model_name``: a registry builder such
as ``"ht"``) and its constructor kwargs (``convac.model_kwargs``, JSON), so the file alone
rebuilds the model. A ``.ckpt`` (a ``ConvACModule`` checkpoint written by ``convac-train``) is
unpickled with ``torch.load(weights_only=True)``, which only rebuilds tensors and plain
containers and refuses any other global. When a sha256 is given (the zoo pins one per
entry), the bytes are hashed before they are parsed, and the parsed bytes are the hashed ones.
"""
from __future__ import annotations

import hashlib
import io
import json
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes
from torch import nn

from convac.errors import InvalidValueError, MissingFileError
from convac.model import Architecture

FORMAT = "convac-weights-1"  # the ``format`` metadata value this module writes and expects
SUFFIXES = (".safetensors", ".ckpt")


class PretrainedError(InvalidValueError):
    """A weight file that cannot be trusted or used (the subclasses say why)."""


class HashMismatchError(PretrainedError):
    """The file's sha256 differs from the pinned one."""


class CorruptWeightsError(PretrainedError):
    """The file is truncated, malformed, or lacks the convac metadata."""


class ArchitectureMismatchError(PretrainedError):
    """The tensors do not fit the architecture (missing, unexpected or mis-shaped entries)."""


class UnsafeCheckpointError(PretrainedError):
    """A pickle that asks for objects outside torch's weights-only allowlist (it was not run)."""


@dataclass(frozen=True)
class Weights:
    """The content of a weight file: the architecture and the model's ``state_dict``."""

    model_name: str
    model_kwargs: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    path: Path
    sha256: str

    @property
    def architecture(self) -> Architecture:
        """``(model_name, model_kwargs)``: what the weights were saved for."""
        return Architecture(self.model_name, self.model_kwargs)


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def read_weights(path: str | Path, sha256: str | None = None) -> Weights:
    """Read a ``.safetensors`` or ``.ckpt`` weight file, verifying ``sha256`` first if given.

    Raises :class:`HashMismatchError`, :class:`CorruptWeightsError` or
    :class:`UnsafeCheckpointError` (all :class:`PretrainedError`) with the reason.
    """
    path = Path(path)
    if path.suffix not in SUFFIXES:
        raise PretrainedError(f"{path}: expected a {' or '.join(SUFFIXES)} file, found suffix {path.suffix!r}")
    if not path.is_file():
        raise MissingFileError(f"{path}: no such weight file")
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if sha256 is not None and digest != sha256:
        raise HashMismatchError(
            f"{path}: sha256 {digest} differs from the pinned {sha256}; the file is corrupt or "
            "not the published one, so it was not loaded"
        )
    parse = _parse_safetensors if path.suffix == ".safetensors" else _parse_checkpoint
    model_name, model_kwargs, state_dict = parse(data, path)
    return Weights(model_name, model_kwargs, state_dict, path, digest)


def save_weights(path: str | Path, model: nn.Module, model_name: str, model_kwargs: dict[str, Any]) -> str:
    """Write ``model``'s state as ``.safetensors`` with its architecture in the metadata
    (:func:`weights_bytes`); returns the file's sha256."""
    data = weights_bytes(model, model_name, model_kwargs)
    Path(path).write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def weights_bytes(model: nn.Module, model_name: str, model_kwargs: dict[str, Any]) -> bytes:
    """``model``'s state dict (on the CPU) as the bytes of a ``.safetensors`` file whose metadata
    names the architecture (``model_name``, ``model_kwargs`` as JSON); the same tensors and
    architecture always give the same bytes (:func:`_canonical_header`)."""
    metadata = {
        "format": FORMAT,
        "convac.model_name": model_name,
        "convac.model_kwargs": json.dumps(model_kwargs, sort_keys=True),
    }
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return _canonical_header(save_safetensors_bytes(tensors, metadata=metadata))


def _canonical_header(data: bytes) -> bytes:
    """``data`` (a safetensors byte string) with its JSON header's keys sorted, padded with
    spaces to the same length, so that the same tensors and metadata give the same bytes (the
    library writes the metadata map in no fixed order). Tensor offsets are relative to the end
    of the header, so they stay valid."""
    (size,) = struct.unpack("<Q", data[:8])
    header = json.dumps(json.loads(data[8 : 8 + size]), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    return data[:8] + header.ljust(size, b" ") + data[8 + size:]


def load_into(model: nn.Module, weights: Weights, architecture: str) -> nn.Module:
    """Copy ``weights`` into ``model`` (an instance of ``architecture``), strictly: every
    tensor must be present with the model's shape, or :class:`ArchitectureMismatchError`
    lists the differences."""
    expected = model.state_dict()
    found = weights.state_dict
    problems = [f"missing {k} {tuple(expected[k].shape)}" for k in sorted(expected.keys() - found.keys())]
    problems += [f"unexpected {k} {tuple(found[k].shape)}" for k in sorted(found.keys() - expected.keys())]
    problems += [
        f"{k}: expected shape {tuple(expected[k].shape)}, found {tuple(found[k].shape)}"
        for k in sorted(expected.keys() & found.keys())
        if expected[k].shape != found[k].shape
    ]
    if problems:
        raise ArchitectureMismatchError(
            f"{weights.path} (written for {weights.model_name} {weights.model_kwargs}) does not fit "
            f"{architecture}: " + "; ".join(problems)
        )
    model.load_state_dict(found, strict=True)
    return model


def _parse_safetensors(data: bytes, path: Path) -> tuple[str, dict[str, Any], dict[str, torch.Tensor]]:
    """Metadata and tensors of a ``.safetensors`` byte string."""
    header = _safetensors_header(data, path)
    try:
        tensors = load_safetensors_bytes(data)
    except SafetensorError as err:
        raise CorruptWeightsError(f"{path}: not a valid safetensors file ({err})") from None
    metadata = header.get("__metadata__") or {}
    if metadata.get("format") != FORMAT or "convac.model_name" not in metadata:
        raise CorruptWeightsError(
            f"{path}: expected convac metadata (format={FORMAT!r}, convac.model_name, "
            f"convac.model_kwargs), found {sorted(metadata)}"
        )
    try:
        kwargs = json.loads(metadata.get("convac.model_kwargs", ""))
    except json.JSONDecodeError as err:
        raise CorruptWeightsError(f"{path}: convac.model_kwargs is not valid JSON ({err})") from None
    return metadata["convac.model_name"], kwargs, tensors


def _safetensors_header(data: bytes, path: Path) -> dict[str, Any]:
    """The JSON header of a safetensors byte string, checking that the file is complete."""
    if len(data) < 8:
        raise CorruptWeightsError(f"{path}: truncated: {len(data)} bytes, less than the 8-byte header length")
    (size,) = struct.unpack("<Q", data[:8])
    if 8 + size > len(data):
        raise CorruptWeightsError(f"{path}: truncated: the header announces {size} bytes, the file has {len(data) - 8}")
    try:
        header = json.loads(data[8 : 8 + size])
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CorruptWeightsError(f"{path}: the safetensors header is not valid JSON ({err})") from None
    end = max((int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__"), default=0)
    if 8 + size + end > len(data):
        raise CorruptWeightsError(
            f"{path}: truncated: the tensors need {8 + size + end} bytes, the file has {len(data)}"
        )
    return header


def load_checkpoint_dict(data: bytes, where: str) -> dict[str, Any]:
    """The dict of a ``convac-train`` (``ConvACModule``) Lightning checkpoint, unpickled with
    ``weights_only=True``; ``where`` names the file in the messages. A pickle that asks for
    anything outside torch's allowlist raises :class:`UnsafeCheckpointError` (nothing runs);
    an unreadable file or another kind of checkpoint, :class:`CorruptWeightsError`."""
    try:
        ckpt = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError, ... on bad files
        lines = [line.strip() for line in str(err).splitlines() if line.strip()] or [type(err).__name__]
        reason = next((line for line in lines if "GLOBAL" in line or "Unsupported" in line), lines[0])
        if isinstance(err, pickle.UnpicklingError) and "GLOBAL" in str(err):  # it would import code
            raise UnsafeCheckpointError(
                f"{where}: refused: the pickle asks for objects outside torch's weights-only allowlist "
                f"({reason}); nothing in it was executed. Load only checkpoints you trust, or use .safetensors"
            ) from None
        raise CorruptWeightsError(f"{where}: not a readable checkpoint (truncated or another format): {reason}") from None
    hparams = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    if not isinstance(hparams, dict) or "model_name" not in hparams or "state_dict" not in ckpt:
        found = sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CorruptWeightsError(
            f"{where}: not a convac-train checkpoint (expected a ConvACModule checkpoint with "
            f"hyper_parameters.model_name, model_kwargs and state_dict, e.g. checkpoints/last.ckpt of a run); "
            f"found keys {found}"
        )
    return ckpt


def _parse_checkpoint(data: bytes, path: Path) -> tuple[str, dict[str, Any], dict[str, torch.Tensor]]:
    """Architecture and model tensors of a ``ConvACModule`` Lightning checkpoint."""
    ckpt = load_checkpoint_dict(data, str(path))
    hparams = ckpt["hyper_parameters"]
    prefix = "model."
    state = {k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    return hparams["model_name"], dict(hparams.get("model_kwargs") or {}), state
