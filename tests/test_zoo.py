"""The model zoo: registry, shipped entries (hash, check batch, eval) and unsafe weight files."""
from __future__ import annotations

import dataclasses
from importlib import resources

from pathlib import Path

import lightning as L
import pytest
import torch

import convac
from convac.config import schema
from convac.model import CPConvAC, HTConvAC
from convac.training import ConvACModule
from convac.zoo import (
    ArchitectureMismatchError,
    CorruptWeightsError,
    HashMismatchError,
    UnsafeCheckpointError,
)
from convac.zoo import cards as cards_module
from convac.zoo.cards import README_BEGIN, README_END, load_cards, replace_readme_section
from convac.zoo.entries import ENTRIES, compose_train_config
from convac.zoo.pretrained import read_weights, save_weights, sha256_file

from tests.conftest import SHARED_DATA, run_zoo
CARDS = load_cards()
MODEL_CONFIGS = sorted(p.name.removesuffix(".yaml") for p in (resources.files("convac.configs") / "model").iterdir()
                       if p.name.endswith(".yaml"))
CONSTRUCTORS = {"ht": HTConvAC, "cp": CPConvAC}


def shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


# ------------------------------------------------------------------------------ registry
def test_registry_names_every_architecture_and_entry():
    assert {"ht", "cp", *ENTRIES} == set(convac.list_models())
    assert convac.list_models(pretrained=True) == sorted(ENTRIES) == sorted(CARDS)
    assert convac.list_models("ht_*") == sorted(n for n in ENTRIES if n.startswith("ht_"))
    with pytest.raises(ValueError, match="unknown model 'nope'; registered models: cp, cp_digits"):
        convac.create_model("nope")
    with pytest.raises(ValueError, match="'ht' ships no pretrained weights"):
        convac.create_model("ht", pretrained=True, in_shape=(1, 2, 2), leaf="bernoulli", num_components=2, channels=2)


@pytest.mark.parametrize("config", MODEL_CONFIGS)
def test_every_model_config_builds_through_the_registry(config):
    kwargs = schema.to_kwargs(compose_train_config([f"model={config}", "data.in_shape=[1,8,8]"]).model)
    name = kwargs.pop("name")
    assert shapes(convac.create_model(name, **kwargs)) == shapes(CONSTRUCTORS[name](**kwargs))


@pytest.mark.parametrize("name", sorted(ENTRIES))
def test_entry_architecture_is_its_experiment_config(name):
    """The experiment config, the card and the weights' metadata name one architecture."""
    card = CARDS[name]
    model_name, kwargs = ENTRIES[name].architecture()
    assert (card.model_name, card.model_kwargs) == (model_name, kwargs)
    weights = read_weights(card.weights_path)
    assert (weights.model_name, weights.model_kwargs) == (model_name, kwargs)
    assert shapes(convac.create_model(name)) == {k: tuple(v.shape) for k, v in weights.state_dict.items()}
    data = schema.to_kwargs(ENTRIES[name].config().data)
    # a data option added after the card was exported must be at its default, null
    assert all(v is None for k, v in data.items() if k not in card.data), data
    assert {k: v for k, v in data.items() if k != "root" and k in card.data} == {k: v for k, v in card.data.items() if k != "root"}


# ----------------------------------------------------------------------- shipped entries
@pytest.mark.parametrize("name", sorted(CARDS))
def test_entry_loads_verified_and_matches_its_check_batch(name):
    card = CARDS[name]
    assert sha256_file(card.weights_path) == card.sha256
    # a package-size budget per shipped entry (the largest, ht_pumsb_star's 4-tree ensemble, is 5.9 MB)
    assert card.size_bytes == card.weights_path.stat().st_size <= 8_000_000
    model = convac.create_model(name, pretrained=True).eval()
    x = torch.tensor(card.check["x"])
    with torch.no_grad():
        torch.testing.assert_close(model.log_prob(x), torch.tensor(card.check["log_prob"]), rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(convac.load_pretrained(card.weights_path).log_prob(x), model.log_prob(x))
    assert card.num_parameters == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(n for n, c in CARDS.items() if not c.needs_data_root))
def test_zoo_eval_reproduces_the_digits_cards(name, capsys):
    status, out = run_zoo(capsys, "eval", name)
    assert status == 0, out
    assert "DIFFERS" not in out and f"{CARDS[name].metrics['test/nll']:.6f}" in out


LOCAL_DATA = {"debd": SHARED_DATA / "debd", "mnist": SHARED_DATA / "mnist-t10k"}  # data config name -> folder


@pytest.mark.parametrize("name", sorted(n for n, c in CARDS.items() if c.needs_data_root))
def test_zoo_eval_reproduces_the_cards_of_local_data(name, capsys):
    root = LOCAL_DATA[CARDS[name].data["name"]]
    if not root.is_dir():
        pytest.skip(f"needs the data in {root}")
    status, out = run_zoo(capsys, "eval", name, "--data-root", str(root))
    assert status == 0, out


def test_zoo_eval_of_a_debd_entry_asks_for_the_data_root(capsys):
    status, out = run_zoo(capsys, "eval", "ht_nltcs")
    assert status == 2 and "pass --data-root PATH" in out and "debd/nltcs" in out


def test_the_local_data_of_a_card_is_a_folder_or_a_file():
    """An entry trained on an array or a table file stores its ``data.path`` as None, like a
    DEBD entry its ``data.root``, and is evaluated with it given again."""
    card = next(iter(CARDS.values()))
    folder = dataclasses.replace(card, data={"name": "debd", "root": None, "dataset": "plants"})
    file = dataclasses.replace(card, data={"name": "array", "path": None})
    bundled = dataclasses.replace(card, data={"name": "digits"})
    assert (folder.local_data_key, file.local_data_key, bundled.local_data_key) == ("root", "path", None)
    assert file.needs_data_root and not bundled.needs_data_root


def test_zoo_list_info_and_readme_table(capsys):
    status, out = run_zoo(capsys, "list")
    assert status == 0 and all(name in out for name in CARDS)
    status, out = run_zoo(capsys, "list", "--markdown")
    assert out.count("\n| `") == len(CARDS) and "experiment=zoo_ht_plants" in out
    section = replace_readme_section(f"# convac\n\n{README_BEGIN}\nold\n{README_END}\n\nmore\n", out)
    assert section == f"# convac\n\n{README_BEGIN}\n{out}{README_END}\n\nmore\n"
    status, out = run_zoo(capsys, "info", "ht_digits")
    assert status == 0 and CARDS["ht_digits"].sha256 in out and "experiment=zoo_ht_digits" in out
    status, out = run_zoo(capsys, "info", "nope")
    assert status == 2 and "no entry 'nope'" in out


def test_weight_files_are_byte_for_byte_reproducible(tmp_path):
    model = convac.create_model("ht_nltcs")
    digests = {save_weights(tmp_path / f"{i}.safetensors", model, *ENTRIES["ht_nltcs"].architecture()) for i in range(3)}
    assert len(digests) == 1


# ------------------------------------------------------------------------------ bad files
def test_a_file_with_a_wrong_hash_is_refused(tmp_path, monkeypatch):
    card = CARDS["ht_digits"]
    data = bytearray(card.weights_path.read_bytes())
    data[-1] ^= 0xFF  # one weight changes; the file still parses
    (tmp_path / card.weights).write_bytes(data)
    monkeypatch.setattr(cards_module, "WEIGHTS_DIR", tmp_path)
    with pytest.raises(HashMismatchError, match=f"differs from the pinned {card.sha256}"):
        convac.create_model("ht_digits", pretrained=True)


def test_a_truncated_file_is_refused(tmp_path):
    card = CARDS["ht_digits"]
    path = tmp_path / "truncated.safetensors"
    path.write_bytes(card.weights_path.read_bytes()[:-1000])
    with pytest.raises(CorruptWeightsError, match="truncated: the tensors need"):
        convac.load_pretrained(path)
    with pytest.raises(HashMismatchError):
        read_weights(path, sha256=card.sha256)
    path.write_bytes(card.weights_path.read_bytes()[:5])
    with pytest.raises(CorruptWeightsError, match="truncated: 5 bytes"):
        convac.load_pretrained(path)


def test_a_file_for_another_architecture_is_refused(tmp_path):
    with pytest.raises(ArchitectureMismatchError, match=r"does not fit ht_digits: .*expected shape"):
        convac.create_model("ht_digits", pretrained=CARDS["cp_digits"].weights_path)
    # metadata that lies about the tensors: the shapes are checked, not trusted
    path = tmp_path / "lying.safetensors"
    save_weights(path, convac.create_model("cp_digits"), *ENTRIES["ht_digits"].architecture())
    with pytest.raises(ArchitectureMismatchError, match="missing sums.1.logits"):
        convac.load_pretrained(path)


class _Payload:
    """Unpickling this runs ``exec``: it writes the file ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",)


def test_a_pickle_that_would_run_code_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"model_name": "ht"}, "x": _Payload(marker)}, path)
    with pytest.raises(UnsafeCheckpointError, match="nothing in it was executed"):
        convac.load_pretrained(path)
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the payload is real: an unsafe load runs it
    assert marker.read_text() == "pwned"


def test_a_lightning_checkpoint_loads_with_weights_only(tmp_path):
    module = ConvACModule("ht", {"in_shape": [1, 4, 4], "leaf": {"name": "categorical", "num_values": 3},
                                 "num_components": 2, "channels": 3})
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    x = torch.randint(0, 3, (8, 1, 4, 4))
    trainer.fit(module, torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, torch.zeros(8, dtype=torch.long)), batch_size=8))
    trainer.save_checkpoint(tmp_path / "run.ckpt")
    loaded = convac.load_pretrained(tmp_path / "run.ckpt")
    torch.testing.assert_close(loaded.log_prob(x), module.model.log_prob(x))
