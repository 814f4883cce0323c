"""Save and load models the way the Hugging Face Hub lays them out (DESIGN section 8).

A saved model is a folder of three files:

* ``model.safetensors``: the state dict, with the architecture in its metadata
  (:func:`convac.zoo.pretrained.weights_bytes`);
* ``config.json``: ``library_name: "convac"``, the ``architecture`` (a registry name, ``"ht"`` or
  ``"cp"``) and its constructor arguments ``model_kwargs`` (enough to rebuild the model), the
  ``sha256`` of ``model.safetensors``, the ``license`` and, for a zoo entry, the fields of its
  model card (``card``: metrics, entropy chain, recipe; :class:`convac.zoo.cards.ModelCard`);
* ``README.md``: the model card, YAML metadata (``library_name``, ``license``, ``tags``,
  ``datasets``, ``metrics``, ``model-index``) and the card in prose.

:func:`convac.create_model` reads one from ``"local-dir:PATH"`` or from ``"hf-hub:ORG/NAME"``,
through huggingface_hub's cache (``snapshot_download``: ``HF_HUB_OFFLINE=1`` and ``HF_HUB_CACHE``
work as for any Hub library), with the safety of the shipped zoo: only ``config.json`` and
``model.safetensors`` are downloaded and read (never a pickle), the weights' bytes are hashed
and checked against the sha256 of ``config.json`` before they are parsed, the architecture in
their metadata must be the one ``config.json`` names, and every tensor must fit the model built
from it. The sha256 catches a corrupt download or a ``config.json`` of other weights; it does not
vouch for the publisher.

huggingface_hub is optional (``pip install "convac[hub]"``) and imported only for the Hub
(``hf-hub:`` names and :func:`push_to_hub`); saving and ``local-dir:`` work without it.
"""
from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml
from torch import nn

from convac.errors import InvalidValueError, MissingFileError, UserError
from convac.zoo.cards import ModelCard, count_parameters, format_number, load_cards
from convac.model import Architecture
from convac.zoo.pretrained import (
    ArchitectureMismatchError,
    HashMismatchError,
    Weights,
    read_weights,
    weights_bytes,
)

HUB_PREFIX = "hf-hub:"
LOCAL_PREFIX = "local-dir:"
PREFIXES = (HUB_PREFIX, LOCAL_PREFIX)
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
CARD_FILE = "README.md"
LIBRARY = "convac"
LICENSE = "mit"  # the Hub id of the license convac and the weights it ships are under (pyproject.toml)
INSTALL = 'pip install "convac[hub]"'
# the card's fields that config.json states at its top level (model_name as ``architecture``) or fixes (the file name)
_CONFIG_OWN_FIELDS = ("model_name", "model_kwargs", "sha256", "weights")
# (card metric, model-index metric type, label): what the model card reports, in this order
_METRICS = (("test/nll", "nll", "Test NLL (nats)"), ("test/bpd", "bits-per-dim", "Bits/dim"),
            ("test/acc", "accuracy", "Test accuracy"))


class MissingExtraError(UserError, ImportError):
    """An optional dependency is not installed (the message names the ``pip install`` that adds it)."""


def huggingface_hub() -> ModuleType:
    """The ``huggingface_hub`` module; :class:`MissingExtraError` (an ImportError) naming
    ``pip install "convac[hub]"`` when it is not installed."""
    try:
        import huggingface_hub as hub
        from huggingface_hub import utils  # noqa: F401  (loads hub.utils: validate_repo_id, the error classes)
    except ImportError:
        raise MissingExtraError(f"the Hugging Face Hub needs the package huggingface_hub, which is not installed: "
                                f"{INSTALL}") from None
    return hub


@dataclass(frozen=True)
class SavedConfig:
    """The content of a saved model's ``config.json``.

    Attributes:
        architecture: what rebuilds the model: ``Architecture(name, kwargs)``, ``kwargs`` plain
            JSON values (the registry builder's constructor arguments).
        sha256: hex sha256 of the bytes of ``model.safetensors``.
        license: the Hub license id of the weights (``"mit"``).
        card: the zoo card of these weights (its ``weights`` is ``"model.safetensors"``), None
            for a model saved without one.
    """

    architecture: Architecture
    sha256: str
    license: str
    card: ModelCard | None

    def to_json(self) -> dict[str, Any]:
        """The JSON object of ``config.json``."""
        from convac import __version__  # convac imports this module

        card = None if self.card is None else {
            k: v for k, v in asdict(self.card).items() if k not in _CONFIG_OWN_FIELDS
        }
        return {
            "library_name": LIBRARY,
            "convac_version": __version__,
            "architecture": self.architecture.name,
            "model_kwargs": self.architecture.kwargs,
            "sha256": self.sha256,
            "license": self.license,
            "card": card,
        }

    @classmethod
    def read(cls, folder: Path) -> "SavedConfig":
        """The ``config.json`` of ``folder``; MissingFileError when it is absent, InvalidValueError
        when it is not a convac model's (the message names the file and what it holds)."""
        path = folder / CONFIG_FILE
        if not path.is_file():
            raise MissingFileError(f"{folder}: no {CONFIG_FILE}; expected a folder written by save_pretrained "
                                   f"({WEIGHTS_FILE}, {CONFIG_FILE}, {CARD_FILE}), found {_file_names(folder)}")
        try:
            content = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise InvalidValueError(f"{path}: not valid JSON ({err})") from None
        if not isinstance(content, dict) or content.get("library_name") != LIBRARY:
            found = content.get("library_name") if isinstance(content, dict) else type(content).__name__
            raise InvalidValueError(f"{path}: expected the config of a convac model (library_name: {LIBRARY}), "
                                    f"found {found!r}")
        types = {"architecture": str, "model_kwargs": dict, "sha256": str, "license": str, "card": (dict, type(None))}
        wrong = [f"{key}: {type(content.get(key)).__name__}"
                 for key, kind in types.items() if not isinstance(content.get(key), kind)]
        if wrong:
            raise InvalidValueError(f"{path}: expected architecture (a string), model_kwargs (an object), sha256, "
                                    f"license (strings) and card (an object or null); found {', '.join(wrong)}")
        architecture = Architecture(content["architecture"], content["model_kwargs"])
        card = content.get("card")
        if card is not None:
            own = {"model_name": architecture.name, "model_kwargs": architecture.kwargs, "sha256": content["sha256"],
                   "weights": WEIGHTS_FILE}
            card = ModelCard.from_dict({**card, **own}, f"{path} (card)")
        return cls(architecture, content["sha256"], content["license"], card)

    def pretrained_cfg(self, name: str, hf_hub_id: str | None = None, file: Path | None = None) -> dict[str, Any]:
        """timm's pretrained config of these weights (:func:`convac.zoo.pretrained_cfg`): ``name``
        (what ``create_model(name, pretrained=True)`` loads), ``architecture``, ``model_kwargs``,
        ``input_size`` (``(C, H, W)``), ``num_classes``, ``hf_hub_id``, ``file`` (a local weight
        file), ``sha256``, ``license`` and the card's ``description``, ``dataset``, ``metrics``
        (``test/nll`` in nats, ``test/bpd``, ``test/acc``, ``num_test``) and ``recipe`` (the
        ``convac-train`` command); None (``{}`` for ``metrics``) where no card says."""
        kwargs, card = self.architecture.kwargs, self.card
        return {
            "name": name,
            "architecture": self.architecture.name,
            "model_kwargs": kwargs,
            "input_size": None if kwargs.get("in_shape") is None else tuple(kwargs["in_shape"]),
            "num_classes": kwargs.get("num_classes", 1),
            "hf_hub_id": hf_hub_id,
            "file": None if file is None else str(file),
            "sha256": self.sha256,
            "license": self.license,
            "description": card.description if card else None,
            "dataset": card.dataset if card else None,
            "metrics": dict(card.metrics) if card else {},
            "recipe": card.command if card else None,
        }


def architecture_of(model: nn.Module) -> Architecture:
    """The architecture recorded on ``model`` (``model.architecture``: by :class:`HTConvAC`,
    :class:`CPConvAC` and :func:`convac.create_model`),
    its arguments as plain JSON values (a leaf spec such as ``Categorical(17)`` as its dict).

    Raises:
        InvalidValueError: the model records none (a ConvAC subclass of your own that does not
            set ``architecture``), or an argument has no JSON form.
    """
    architecture = getattr(model, "architecture", None)
    if not isinstance(architecture, Architecture):
        raise InvalidValueError(f"this {type(model).__name__} records no architecture: build it with convac.create_model "
                                f"(e.g. create_model('ht', in_shape=..., ...)), which records the arguments that rebuild it")

    def plain(value: Any) -> Any:
        if callable(getattr(value, "to_dict", None)):
            return value.to_dict()
        raise TypeError(f"{value!r} ({type(value).__name__}) has no JSON form")

    try:
        kwargs = json.loads(json.dumps(architecture.kwargs, default=plain))
    except (TypeError, ValueError) as err:
        raise InvalidValueError(f"the arguments of {architecture.name} are not plain values: {err}") from None
    return Architecture(architecture.name, kwargs)


def save_pretrained(model: nn.Module, folder: str | Path, card: ModelCard | None = None, *,
                    repo_id: str | None = None, license: str = LICENSE) -> Path:
    """Write ``model`` into ``folder`` as the Hub lays a model out: ``model.safetensors``,
    ``config.json`` and ``README.md`` (the module docstring says what each holds).

    Args:
        model: a model that records its architecture (``model.architecture``: an ``HTConvAC`` or
            ``CPConvAC``, or anything :func:`convac.create_model` builds).
        folder: created if needed; the three files are overwritten, other files are left alone.
        card: the zoo card of these exact weights (``convac.zoo.cards.load_cards()[name]``): its
            metrics, entropy chain and recipe go into ``config.json`` and ``README.md``.
        repo_id: the Hub repository ``ORG/NAME`` the folder is meant for, shown in the card's
            loading snippet (default: ``local-dir:<folder>``).
        license: the Hub license id written into the metadata.

    Returns:
        ``folder``, as a Path.

    Raises:
        InvalidValueError: ``model`` records no architecture or has arguments without a JSON
            form; ``folder`` is a file; :class:`~convac.zoo.pretrained.HashMismatchError`:
            ``card`` describes other weights (its sha256 is not the one of the weights written).
    """
    architecture = architecture_of(model)
    data = weights_bytes(model, *architecture)
    sha256 = hashlib.sha256(data).hexdigest()
    if card is not None and card.sha256 != sha256:
        raise HashMismatchError(f"the card of {card.name} describes the weights with sha256 {card.sha256}, but this model's "
                                f"weights hash to {sha256} (changed since they were loaded?); save it without card=")
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise InvalidValueError(f"{folder}: expected a folder to save the model in, found a file")
    folder.mkdir(parents=True, exist_ok=True)
    config = SavedConfig(architecture, sha256, license, card)
    name = card.name if card is not None else (repo_id or folder.resolve().name).rsplit("/", 1)[-1]
    num_parameters = count_parameters(model)
    load_as = HUB_PREFIX + repo_id if repo_id else LOCAL_PREFIX + str(folder)
    (folder / WEIGHTS_FILE).write_bytes(data)
    (folder / CONFIG_FILE).write_text(json.dumps(config.to_json(), indent=1) + "\n")
    (folder / CARD_FILE).write_text(model_card(config, name, num_parameters, len(data), load_as))
    return folder


def model_card(config: SavedConfig, name: str, num_parameters: int, size_bytes: int, load_as: str) -> str:
    """The ``README.md`` of a saved model: YAML front matter (the Hub's model-card metadata) and
    the card: what the model is, how to load it (``create_model(load_as, pretrained=True)``),
    its test metrics, entropy chain and training recipe when ``config.card`` is given, its
    architecture and files."""
    card, architecture = config.card, config.architecture
    classifier = architecture.kwargs.get("num_classes", 1) > 1
    task, task_name = ("classification", "Classification") if classifier else ("density-estimation", "Density estimation")
    meta: dict[str, Any] = {
        "library_name": LIBRARY,
        "license": config.license,
        "tags": [LIBRARY, "convolutional-arithmetic-circuit", "probabilistic-circuit", task],
    }
    description = card.description.rstrip(".") if card else f"A convac model ({architecture.name})"
    sections = [f"# {name}\n\n{description}.\n\n"
                "A Convolutional Arithmetic Circuit of the convac library: a tractable probabilistic model that computes "
                "exact log-likelihoods `log P(x)` (and `log P(y | x)` for a classifier), marginalizes missing "
                "variables exactly, samples and inpaints exactly.\n"]
    in_shape = architecture.kwargs.get("in_shape")
    shape = f"(4, {', '.join(map(str, in_shape))})" if in_shape else "(4, C, H, W)"
    entry = load_cards().get(card.name) if card is not None else None
    shipped = (f"\nThe same weights ship with convac: `convac.create_model(\"{entry.name}\", pretrained=True)`.\n"
               if entry is not None and entry.sha256 == config.sha256 else "")
    extra = '  # pip install "convac[hub]"' if load_as.startswith(HUB_PREFIX) else ""
    sections.append(
        f"## How to load it\n\n```python\nimport convac{extra}\n\n"
        f"model = convac.create_model({json.dumps(load_as)}, pretrained=True)\n"
        f"x = model.sample(4)  # {shape}\nlog_p = model.log_prob(x)  # (4,), nats\n```\n{shipped}\n"
        f"Loading reads only `{CONFIG_FILE}` and `{WEIGHTS_FILE}` (no pickle): the weights' sha256 is checked "
        f"against `{CONFIG_FILE}` before they are parsed, and the architecture in their metadata against it too.\n"
    )
    if card is not None:
        results = [{"type": kind, "value": round(float(card.metrics[key]), 4), "name": label}
                   for key, kind, label in _METRICS if key in card.metrics]
        meta["datasets"] = [card.dataset]
        meta["metrics"] = [r["type"] for r in results]
        meta["model-index"] = [{"name": card.name, "results": [{
            "task": {"type": task, "name": task_name},
            "dataset": {"type": card.dataset, "name": card.dataset, "split": "test"},
            "metrics": results,
        }]}]
        sections += _card_sections(card)
    kwargs = json.dumps(architecture.kwargs)
    sections.append(f"## Architecture\n\n`{architecture.name}` with `{kwargs}`: {num_parameters:,} parameters.\n")
    sections.append(
        "## Files\n\n| File | Content |\n|---|---|\n"
        f"| `{WEIGHTS_FILE}` | the weights, {size_bytes:,} bytes, sha256 `{config.sha256}` |\n"
        f"| `{CONFIG_FILE}` | the architecture, its constructor arguments, the weights' sha256 and license"
        f"{', and the fields of the model card' if card else ''} |\n"
        f"| `{CARD_FILE}` | this card |\n"
    )
    front = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True)
    return f"---\n{front}---\n\n" + "\n".join(sections)


def _card_sections(card: ModelCard) -> list[str]:
    """The metrics, entropy chain and recipe sections of a model card (markdown)."""
    m, e, t = card.metrics, card.entropy, card.training
    last = e["last_epoch"]
    metrics = (
        f"## Metrics\n\nOn the test split of {card.dataset} ({m['num_test']:,} examples), measured from these weights "
        f"(`convac-zoo eval {card.name}` recomputes them):\n\n"
        "| Test NLL (nats) | Bits/dim | Test accuracy |\n|---:|---:|---:|\n"
        f"| {m['test/nll']:.3f} | {m['test/bpd']:.4f} | {format_number(m.get('test/acc'), '.4f')} |\n"
    )
    entropy = (
        "## Entropy chain\n\nThe level entropies H⁰ ≤ H¹ ≤ … ≤ H(X) of the model's latent tree (nats; "
        f"{e['num_samples']:,} exact samples, seed {e['seed']}; `convac.entropy.probe`):\n\n"
        f"**{card.entropy_chain()}**\n\nH(X) = {e['H_X']:.3f} ± {e['H_X_se']:.3f} nats = {e['H_X_bpd']:.4f} bits/dim; "
        f"C_max = {format_number(e['C_max'], '.4f')}, β_max = {format_number(e['beta_max'], '.4f')}. "
        f"The training's entropy probe logged {card.entropy_chain(last_epoch=True)} at its last epoch ({last['epoch']}).\n"
    )
    recipe = (
        f"## Training recipe\n\n```bash\n{card.command}\n```\n\n"
        f"The config `configs/experiment/{card.experiment}.yaml` (in convac: `convac.configs`): at most {t['epochs']} "
        f"epochs; these are the weights of epoch {t['best_epoch']} (the lowest validation loss), seed {t['seed']}, "
        f"{t['seconds']} s of training.\n\n"
        f"- module: `{json.dumps(card.module)}`\n- data: `{json.dumps(card.data)}`\n"
    )
    return [metrics, entropy, recipe]


def hub_repo_id(repo_id: str) -> str:
    """``repo_id`` checked as a Hub repository ``ORG/NAME`` (huggingface_hub's
    ``validate_repo_id``). A path, or a bare name such as a zoo entry, raises
    :class:`InvalidValueError`; without huggingface_hub, :class:`MissingExtraError`."""
    hub = huggingface_hub()
    hint = f" ({repo_id!r} names a shipped zoo entry, not a Hub repository)" if repo_id in load_cards() else ""
    if repo_id.count("/") != 1:
        raise InvalidValueError(f"expected a Hub repository ORG/NAME, found {repo_id!r}{hint}")
    try:
        hub.utils.validate_repo_id(repo_id)
    except hub.utils.HFValidationError as err:
        raise InvalidValueError(f"expected a Hub repository ORG/NAME, found {repo_id!r} ({err})") from None
    return repo_id


def source_folder(source: str, weights: bool = True) -> Path:
    """The local folder of the saved model ``source``: ``"local-dir:PATH"`` (``PATH`` itself) or
    ``"hf-hub:ORG/NAME"`` (its snapshot in huggingface_hub's cache, where ``config.json`` and,
    when ``weights``, ``model.safetensors`` are downloaded unless they are there already or
    ``HF_HUB_OFFLINE=1``; nothing else is downloaded).

    Raises:
        MissingFileError: no such folder; a repository that does not exist, or is not cached
            while offline.
        InvalidValueError: ``PATH`` is a file; a Hub id that is not ``ORG/NAME``.
        MissingExtraError: an ``hf-hub:`` source without huggingface_hub.
    """
    if source.startswith(LOCAL_PREFIX):
        folder = Path(source[len(LOCAL_PREFIX):]).expanduser()
        if folder.is_file():
            raise InvalidValueError(f"{source}: expected a folder written by save_pretrained, found a file; "
                                    "load a weight file with convac.load_pretrained(PATH)")
        if not folder.is_dir():
            raise MissingFileError(f"{source}: no such folder")
        return folder
    if not source.startswith(HUB_PREFIX):
        raise InvalidValueError(f"expected a saved model {HUB_PREFIX}ORG/NAME or {LOCAL_PREFIX}PATH, found {source!r}")
    repo_id = hub_repo_id(source[len(HUB_PREFIX):])
    hub = huggingface_hub()
    files = [CONFIG_FILE, WEIGHTS_FILE] if weights else [CONFIG_FILE]
    try:  # huggingface_hub's cache (HF_HUB_CACHE) and, read now, its offline mode (HF_HUB_OFFLINE)
        return Path(hub.snapshot_download(repo_id, allow_patterns=files, library_name=LIBRARY,
                                          local_files_only=hub.constants.HF_HUB_OFFLINE))
    except hub.utils.RepositoryNotFoundError:
        raise MissingFileError(f"{source}: no such repository on the Hub, or a private or gated one this token "
                               "cannot read") from None
    except hub.utils.LocalEntryNotFoundError:
        raise MissingFileError(f"{source}: not in the Hugging Face cache ({hub.constants.HF_HUB_CACHE}) and not "
                               "downloadable (offline: HF_HUB_OFFLINE=1, or no connection)") from None


def read_saved_weights(folder: Path, config: SavedConfig) -> Weights:
    """The ``model.safetensors`` of ``folder``, its sha256 checked against ``config`` before
    it is parsed and its architecture compared with ``config``'s.

    Raises:
        MissingFileError: no ``model.safetensors`` (weights in another format are never read);
        :class:`~convac.zoo.pretrained.HashMismatchError`, ``CorruptWeightsError`` or
        :class:`~convac.zoo.pretrained.ArchitectureMismatchError` (all InvalidValueError).
    """
    path = folder / WEIGHTS_FILE
    if not path.is_file():
        raise MissingFileError(f"{folder}: expected {WEIGHTS_FILE} (convac reads safetensors weights only, never a "
                               f"pickle), found {_file_names(folder)}")
    weights = read_weights(path, sha256=config.sha256)
    if weights.architecture != config.architecture:
        raise ArchitectureMismatchError(
            f"{path} was written for {weights.model_name} {weights.model_kwargs}, but {CONFIG_FILE} describes "
            f"{config.architecture.name} {config.architecture.kwargs}"
        )
    return weights


def push_to_hub(model: nn.Module, repo_id: str, card: ModelCard | None = None, *, private: bool = False,
                commit_message: str | None = None, license: str = LICENSE) -> str:
    """Save ``model`` with :func:`save_pretrained` into a temporary folder and upload it to the
    Hub repository ``repo_id`` (``ORG/NAME``, created when missing) with
    ``HfApi().upload_folder``; returns the repository's URL. Needs the network and a token with
    write access (``hf auth login`` or ``HF_TOKEN``).

    Raises:
        what :func:`save_pretrained` and :func:`hub_repo_id` raise (before anything is sent), and
        :class:`InvalidValueError` when the Hub refuses the upload (an ``HfHubHTTPError`` of
        huggingface_hub: no token, no write access, ...).
    """
    hub = huggingface_hub()
    repo_id = hub_repo_id(repo_id)
    with tempfile.TemporaryDirectory() as tmp:
        save_pretrained(model, tmp, card, repo_id=repo_id, license=license)
        api = hub.HfApi()
        message = commit_message or f"Upload {card.name if card else repo_id} with convac"
        try:
            url = api.create_repo(repo_id, private=private, exist_ok=True)
            api.upload_folder(repo_id=repo_id, folder_path=tmp, commit_message=message)
        except hub.utils.HfHubHTTPError as err:
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise InvalidValueError(f"the Hub refused the upload to {repo_id} ({reason}); set HF_TOKEN, or log in with "
                                    "the Hugging Face CLI, with a token that can write to it") from None
    return str(url)


def _file_names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())
