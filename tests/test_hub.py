"""Saved models in the Hugging Face Hub's layout (convac.zoo.hub), timm's registry conventions and
the zoo table of docs/zoo.md. Nothing reaches the network: the Hub tests fill a Hub cache folder
themselves and run with HF_HUB_OFFLINE=1, and the upload goes to a stand-in for HfApi."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import convac
from convac.errors import InvalidValueError, MissingFileError, UserError
from convac.model import ConvAC, HTConvAC
from convac.zoo import ArchitectureMismatchError, CorruptWeightsError, HashMismatchError, MissingExtraError
from convac.zoo.cards import README_BEGIN, README_END, load_cards
from convac.zoo.hub import CARD_FILE, CONFIG_FILE, WEIGHTS_FILE
from convac.zoo.pretrained import sha256_file

from tests.conftest import imported_script, run_zoo

CARDS = load_cards()
FILES = [CARD_FILE, CONFIG_FILE, WEIGHTS_FILE]
TINY = {"in_shape": [1, 4, 4], "leaf": {"name": "categorical", "num_values": 3}, "num_components": 2, "channels": 3}


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """Where huggingface_hub is installed, it runs offline for every test of this file (it reads
    HF_HUB_OFFLINE when imported, so its constant is set too)."""
    try:
        from huggingface_hub import constants
    except ImportError:
        return
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    """An empty Hub cache folder, which huggingface_hub uses (HF_HUB_CACHE)."""
    constants = pytest.importorskip("huggingface_hub").constants
    cache = tmp_path / "hub-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def fill_hub_cache(cache: Path, repo_id: str, folder: Path, revision: str = "0123456789abcdef" * 2 + "01234567") -> Path:
    """Put ``folder``'s files into ``cache`` as huggingface_hub stores a download of the
    repository ``repo_id`` at ``revision`` (its ``main``): ``blobs/<sha256>``, the snapshot's
    symbolic links to them and ``refs/main``. Returns the snapshot folder."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    for file in sorted(folder.iterdir()):
        blob = repo / "blobs" / sha256_file(file)
        shutil.copyfile(file, blob)
        (snapshot / file.name).symlink_to(os.path.relpath(blob, snapshot))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    return snapshot


@pytest.fixture(scope="module")
def ht_digits() -> torch.nn.Module:
    return convac.create_model("ht_digits", pretrained=True).eval()


@pytest.fixture(scope="module")
def saved(tmp_path_factory, ht_digits) -> Path:
    """``ht_digits`` saved with its card (read-only for the tests: copy it to change it)."""
    return ht_digits.save_pretrained(tmp_path_factory.mktemp("saved") / "ht_digits", card=CARDS["ht_digits"])


def copy_of(folder: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(folder, tmp_path / folder.name))


def check_batch(name: str = "ht_digits") -> torch.Tensor:
    """(8, C, H, W): the fixed batch of the entry's card."""
    return torch.tensor(CARDS[name].check["x"])


def front_matter(text: str) -> dict:
    match = re.match(r"---\n(.*?\n)---\n", text, re.DOTALL)
    assert match, text[:200]
    return yaml.safe_load(match.group(1))


def edit_config(folder: Path, **changes) -> None:
    path = folder / CONFIG_FILE
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


# ------------------------------------------------------------------------ round trips
def test_a_folder_round_trip_gives_the_same_log_likelihoods(saved, ht_digits):
    assert sorted(p.name for p in saved.iterdir()) == FILES
    config = json.loads((saved / CONFIG_FILE).read_text())
    card = CARDS["ht_digits"]
    assert (config["library_name"], config["architecture"], config["model_kwargs"]) == ("convac", "ht", card.model_kwargs)
    assert config["sha256"] == sha256_file(saved / WEIGHTS_FILE) == card.sha256  # the shipped bytes, unchanged
    assert config["card"]["metrics"] == card.metrics and config["card"]["entropy"] == card.entropy
    x = check_batch()
    with torch.no_grad():
        for loaded in (convac.create_model(f"local-dir:{saved}", pretrained=True),
                       convac.load_pretrained(f"local-dir:{saved}")):
            assert torch.equal(loaded.log_prob(x), ht_digits.log_prob(x))
            assert loaded.architecture == ht_digits.architecture
    fresh = convac.create_model(f"local-dir:{saved}")  # pretrained=False: the architecture only
    assert {k: v.shape for k, v in fresh.state_dict().items()} == {k: v.shape for k, v in ht_digits.state_dict().items()}


def test_an_offline_hub_cache_round_trip_gives_the_same_log_likelihoods(saved, ht_digits, hub_cache):
    fill_hub_cache(hub_cache, "someone/ht_digits", saved)
    x = check_batch()
    with torch.no_grad():
        loaded = convac.create_model("hf-hub:someone/ht_digits", pretrained=True)
        assert torch.equal(loaded.log_prob(x), ht_digits.log_prob(x))
    cfg = convac.zoo.pretrained_cfg("hf-hub:someone/ht_digits")
    assert cfg["hf_hub_id"] == "someone/ht_digits" and cfg["file"] is None
    assert cfg["metrics"] == CARDS["ht_digits"].metrics and cfg["input_size"] == (1, 8, 8) and cfg["license"] == "mit"


def test_hf_hub_offline_and_hf_hub_cache_work_from_the_environment(saved, ht_digits, tmp_path):
    """As a user runs it: a fresh interpreter with only the environment variables set (and
    ``import convac`` does not import huggingface_hub)."""
    pytest.importorskip("huggingface_hub")
    cache = tmp_path / "cache"
    fill_hub_cache(cache, "someone/ht_digits", saved)
    x = check_batch()
    pinned = {"shift": "amax", "exp": "exp", "log_add": "torch"}  # the same kernels in both processes: equal bits
    script = (
        "import json, sys, torch, convac\n"
        "assert 'huggingface_hub' not in sys.modules\n"
        f"convac.kernels.pin(**{pinned!r})\n"
        "model = convac.create_model('hf-hub:someone/ht_digits', pretrained=True)\n"
        "with torch.no_grad():\n"
        "    print(json.dumps(model.log_prob(torch.tensor(json.loads(sys.argv[1]))).tolist()))\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", script, json.dumps(x.tolist())], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    convac.kernels.pin(**pinned)
    try:
        with torch.no_grad():
            assert json.loads(result.stdout) == ht_digits.log_prob(x).tolist()
    finally:
        convac.kernels.pin(**{name: None for name in pinned})


def test_a_model_saved_without_a_card_round_trips(tmp_path):
    model = convac.create_model("ht", **{**TINY, "leaf": convac.Categorical(3)})  # a leaf spec is saved as its dict
    model.reset_logits(generator=torch.Generator().manual_seed(1))
    folder = model.save_pretrained(tmp_path / "tiny")
    config = json.loads((folder / CONFIG_FILE).read_text())
    assert config["card"] is None and config["model_kwargs"]["leaf"] == {"name": "categorical", "num_values": 3}
    meta = front_matter((folder / CARD_FILE).read_text())
    assert meta["library_name"] == "convac" and "metrics" not in meta and "model-index" not in meta
    x = model.sample(16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(convac.create_model(f"local-dir:{folder}", pretrained=True).log_prob(x), model.log_prob(x))
    assert convac.zoo.pretrained_cfg(f"local-dir:{folder}")["file"] == str(folder / WEIGHTS_FILE)


# ------------------------------------------------------------------------- the model card
def test_the_model_card_metadata_is_yaml_that_the_hub_reads(saved):
    text = (saved / CARD_FILE).read_text()
    meta = front_matter(text)
    card = CARDS["ht_digits"]
    assert meta["library_name"] == "convac" and meta["license"] == "mit" and "convac" in meta["tags"]
    assert meta["datasets"] == ["digits"] and meta["metrics"] == ["nll", "bits-per-dim"]
    assert card.entropy_chain() in text and card.command in text and f"local-dir:{saved}" in text
    assert "create_model(\"ht_digits\", pretrained=True)" in text  # the same weights ship with convac
    hub = pytest.importorskip("huggingface_hub")
    data = hub.ModelCard.load(saved / CARD_FILE).data
    assert (data.library_name, data.license) == ("convac", "mit")
    values = {r.metric_type: r.metric_value for r in data.eval_results}
    assert values == {"nll": round(card.metrics["test/nll"], 4), "bits-per-dim": round(card.metrics["test/bpd"], 4)}


def test_a_classifier_card_reports_its_accuracy(tmp_path):
    card = CARDS["ht_digits_classifier"]
    folder = convac.create_model(card.name, pretrained=True).save_pretrained(tmp_path / card.name, card=card,
                                                                             repo_id="someone/classifier")
    text = (folder / CARD_FILE).read_text()
    meta = front_matter(text)
    assert meta["metrics"] == ["nll", "bits-per-dim", "accuracy"] and "classification" in meta["tags"]
    results = meta["model-index"][0]["results"][0]
    assert results["metrics"][2]["value"] == round(card.metrics["test/acc"], 4)
    assert 'create_model("hf-hub:someone/classifier", pretrained=True)' in text


# ------------------------------------------------------------------------- refused input
def test_tampered_weights_are_refused(saved, tmp_path, hub_cache):
    folder = copy_of(saved, tmp_path)
    data = bytearray((folder / WEIGHTS_FILE).read_bytes())
    data[-1] ^= 0xFF  # one weight changes; the file still parses
    (folder / WEIGHTS_FILE).write_bytes(data)
    with pytest.raises(HashMismatchError, match=f"differs from the pinned {CARDS['ht_digits'].sha256}"):
        convac.create_model(f"local-dir:{folder}", pretrained=True)
    fill_hub_cache(hub_cache, "someone/tampered", folder)
    with pytest.raises(HashMismatchError):
        convac.create_model("hf-hub:someone/tampered", pretrained=True)


@pytest.mark.parametrize("changes,error,words", [
    ({"model_kwargs": {**CARDS["ht_digits"].model_kwargs, "channels": 16}}, ArchitectureMismatchError,
     "config.json describes ht"),
    ({"architecture": "cp"}, InvalidValueError, "do not fit the architecture 'cp'"),
    ({"architecture": "nope"}, InvalidValueError, "names the architecture 'nope', which is not registered"),
    ({"library_name": "timm"}, InvalidValueError, "expected the config of a convac model (library_name: convac)"),
    ({"sha256": None}, InvalidValueError, "found sha256: NoneType"),
    ({"card": {"name": "x"}}, InvalidValueError, "a model card needs the keys"),
])
def test_a_mismatched_config_is_refused(saved, tmp_path, changes, error, words):
    folder = copy_of(saved, tmp_path)
    edit_config(folder, **changes)
    with pytest.raises(error, match=re.escape(words)):
        convac.create_model(f"local-dir:{folder}", pretrained=True)


def test_a_config_of_the_same_shapes_but_another_architecture_is_refused(tmp_path):
    """Weights that would load (the same tensor shapes) under a ``config.json`` that describes
    other arguments: the metadata of the weights is compared with it."""
    folder = convac.create_model("ht", **TINY).save_pretrained(tmp_path / "tiny")
    edit_config(folder, model_kwargs={**TINY, "class_prior": "uniform"})
    with pytest.raises(ArchitectureMismatchError, match="was written for ht"):
        convac.create_model(f"local-dir:{folder}", pretrained=True)


def test_weights_in_another_format_are_never_read(saved, tmp_path, ht_digits):
    folder = copy_of(saved, tmp_path)
    (folder / WEIGHTS_FILE).unlink()
    torch.save(ht_digits.state_dict(), folder / "pytorch_model.bin")
    found = r"found \['README.md', 'config.json', 'pytorch_model.bin'\]"
    with pytest.raises(MissingFileError, match=r"expected model.safetensors \(convac reads safetensors .*" + found):
        convac.create_model(f"local-dir:{folder}", pretrained=True)
    # a pickle under the safetensors name: refused by its hash, and with a matching hash by its format
    (folder / "pytorch_model.bin").rename(folder / WEIGHTS_FILE)
    with pytest.raises(HashMismatchError):
        convac.create_model(f"local-dir:{folder}", pretrained=True)
    edit_config(folder, sha256=sha256_file(folder / WEIGHTS_FILE))
    with pytest.raises(CorruptWeightsError):
        convac.create_model(f"local-dir:{folder}", pretrained=True)


def test_a_hub_repository_without_safetensors_is_refused_unread(saved, tmp_path, hub_cache, ht_digits):
    folder = tmp_path / "pickled"
    folder.mkdir()
    shutil.copyfile(saved / CONFIG_FILE, folder / CONFIG_FILE)
    torch.save(ht_digits.state_dict(), folder / "pytorch_model.bin")
    fill_hub_cache(hub_cache, "someone/pickled", folder)
    with pytest.raises(MissingFileError, match="convac reads safetensors weights only"):
        convac.create_model("hf-hub:someone/pickled", pretrained=True)


@pytest.mark.parametrize("name,error,words", [
    ("hf-hub:ht_digits", InvalidValueError, "'ht_digits' names a shipped zoo entry, not a Hub repository"),
    ("hf-hub:/tmp/model", InvalidValueError, "expected a Hub repository ORG/NAME, found '/tmp/model'"),
    ("hf-hub:../model", InvalidValueError, "expected a Hub repository ORG/NAME, found '../model'"),
    ("hf-hub:someone/absent", MissingFileError, "not in the Hugging Face cache"),
    ("local-dir:no/such/folder", MissingFileError, "local-dir:no/such/folder: no such folder"),
])
def test_a_source_that_is_not_a_saved_model_is_refused(name, error, words, hub_cache):
    with pytest.raises(error, match=re.escape(words)):
        convac.create_model(name, pretrained=True)


def test_a_weight_file_is_not_a_folder(tmp_path):
    with pytest.raises(InvalidValueError, match="expected a folder written by save_pretrained, found a file"):
        convac.create_model(f"local-dir:{CARDS['ht_digits'].weights_path}", pretrained=True)
    with pytest.raises(InvalidValueError, match="expected a folder to save the model in, found a file"):
        convac.create_model("ht_digits").save_pretrained(CARDS["ht_digits"].weights_path)


def test_a_model_built_directly_saves_and_loads_and_only_with_its_own_card(tmp_path):
    """HTConvAC and CPConvAC record the arguments that rebuild them; a ConvAC that records none
    (built from the base class) is refused."""
    direct = HTConvAC(**TINY)
    x = direct.sample(5, generator=torch.Generator().manual_seed(0))
    loaded = convac.create_model(f"local-dir:{direct.save_pretrained(tmp_path / 'direct')}", pretrained=True)
    assert torch.equal(loaded.log_prob(x), direct.log_prob(x))
    bare = ConvAC((1, 1, 4), "bernoulli", 2, [2, 2], [(1, 2), (1, 2)])
    with pytest.raises(InvalidValueError, match="records no architecture"):
        bare.save_pretrained(tmp_path / "bare")
    untrained = convac.create_model("ht_digits")  # the entry's architecture, not its weights
    with pytest.raises(HashMismatchError, match="the card of ht_digits describes the weights with sha256"):
        untrained.save_pretrained(tmp_path / "untrained", card=CARDS["ht_digits"])
    assert not (tmp_path / "untrained").exists()


def test_without_huggingface_hub_the_hub_asks_for_the_extra_and_folders_still_work(saved, monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import huggingface_hub now fails
    with pytest.raises(MissingExtraError, match=re.escape('pip install "convac[hub]"')) as err:
        convac.create_model("hf-hub:someone/ht_digits", pretrained=True)
    assert isinstance(err.value, ImportError) and isinstance(err.value, UserError)
    assert convac.create_model(f"local-dir:{saved}", pretrained=True).architecture.name == "ht"


# ------------------------------------------------------------------------- convac-zoo push
class FakeHfApi:
    """Stands in for ``huggingface_hub.HfApi``: records the calls, keeps a copy of the folder."""

    calls: list = []
    uploaded: Path | None = None
    error: Exception | None = None

    def create_repo(self, repo_id, **kwargs):
        if self.error is not None:
            raise self.error
        self.calls.append(("create_repo", repo_id, kwargs))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        self.calls.append(("upload_folder", repo_id, kwargs))
        shutil.copytree(folder_path, FakeHfApi.uploaded)


@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    hub = pytest.importorskip("huggingface_hub")
    monkeypatch.setattr(hub, "HfApi", FakeHfApi)
    monkeypatch.setattr(FakeHfApi, "calls", [])
    monkeypatch.setattr(FakeHfApi, "uploaded", tmp_path / "uploaded")
    return FakeHfApi


def test_push_saves_the_entry_and_uploads_the_folder(fake_hub, capsys, ht_digits):
    status, out = run_zoo(capsys, "push", "ht_digits", "--repo", "someone/ht_digits")
    assert status == 0, out
    assert "https://huggingface.co/someone/ht_digits" in out and 'create_model("hf-hub:someone/ht_digits"' in out
    (create, repo, kwargs), (upload, upload_repo, _) = fake_hub.calls
    assert (create, repo, kwargs["exist_ok"], kwargs["private"]) == ("create_repo", "someone/ht_digits", True, False)
    assert (upload, upload_repo) == ("upload_folder", "someone/ht_digits")
    uploaded = fake_hub.uploaded
    assert sorted(p.name for p in uploaded.iterdir()) == FILES
    assert 'create_model("hf-hub:someone/ht_digits", pretrained=True)' in (uploaded / CARD_FILE).read_text()
    x = check_batch()
    with torch.no_grad():
        assert torch.equal(convac.create_model(f"local-dir:{uploaded}", pretrained=True).log_prob(x), ht_digits.log_prob(x))


def test_push_reports_a_bad_repository_or_a_refusal_in_one_line(fake_hub, capsys, monkeypatch):
    status, out = run_zoo(capsys, "push", "ht_digits", "--repo", "ht_digits")
    assert status == 2 and out.count("\n") == 1 and "expected a Hub repository ORG/NAME" in out
    assert fake_hub.calls == []  # refused before anything was sent
    from huggingface_hub.utils import HfHubHTTPError

    class Refused(HfHubHTTPError):
        def __init__(self, message: str):  # without the HTTP response the library's constructor asks for
            Exception.__init__(self, message)

    monkeypatch.setattr(FakeHfApi, "error", Refused("401 Client Error: Unauthorized"))
    status, out = run_zoo(capsys, "push", "ht_digits", "--repo", "someone/ht_digits")
    assert status == 2 and out.count("\n") == 1 and "the Hub refused the upload to someone/ht_digits (401" in out


# ------------------------------------------------------------------------ timm's conventions
def test_is_model_list_models_and_pretrained_cfg():
    assert convac.is_model("ht_digits") and convac.is_model("cp") and not convac.is_model("hf-hub:someone/ht_digits")
    assert convac.list_models("ht_*", pretrained=True) == sorted(n for n in CARDS if n.startswith("ht_"))
    assert convac.list_models(["cp_*", "*_classifier"]) == ["cp_digits", "ht_digits_classifier", "ht_mnist_classifier"]
    cfg = convac.zoo.pretrained_cfg("ht_digits_classifier")
    card = CARDS["ht_digits_classifier"]
    assert cfg["file"] == str(card.weights_path) and cfg["sha256"] == card.sha256 and cfg["hf_hub_id"] is None
    assert (cfg["input_size"], cfg["num_classes"], cfg["metrics"]) == ((1, 8, 8), 10, card.metrics)
    with pytest.raises(InvalidValueError, match="'ht' ships no pretrained weights"):
        convac.zoo.pretrained_cfg("ht")


def test_checkpoint_path_loads_a_safetensors_or_lightning_file(tmp_path, ht_digits):
    x = check_batch()
    ckpt = tmp_path / "run.ckpt"  # what a ConvACModule checkpoint holds
    torch.save({"hyper_parameters": {"model_name": "ht", "model_kwargs": CARDS["ht_digits"].model_kwargs},
                "state_dict": {f"model.{k}": v for k, v in ht_digits.state_dict().items()}}, ckpt)
    with torch.no_grad():
        for path in (CARDS["ht_digits"].weights_path, ckpt):
            loaded = convac.create_model("ht_digits", pretrained=True, checkpoint_path=path)
            assert torch.equal(loaded.log_prob(x), ht_digits.log_prob(x))
    with pytest.raises(ArchitectureMismatchError, match="does not fit cp_digits"):
        convac.create_model("cp_digits", checkpoint_path=ckpt)
    with pytest.raises(InvalidValueError, match="one weight file, not two"):
        convac.create_model("ht_digits", pretrained=ckpt, checkpoint_path=ckpt)


# ------------------------------------------------------------------------ the docs' zoo table
@pytest.fixture
def train_zoo():
    yield from imported_script("train_zoo")


def test_the_zoo_table_goes_into_docs_zoo_md(train_zoo, tmp_path, monkeypatch):
    pages = []
    with monkeypatch.context() as patch:
        patch.setattr(train_zoo, "update_zoo_table", pages.append)
        train_zoo.main(["--readme"])
    assert pages == [train_zoo.REPO / "docs" / "zoo.md"]
    page = tmp_path / "docs" / "zoo.md"
    train_zoo.main(["--readme", "--page", str(page)])  # no page yet: created with the marked section
    table = page.read_text()
    assert table.startswith(README_BEGIN) and table.rstrip().endswith(README_END) and table.count("\n| `") == len(CARDS)
    page.write_text("# The zoo\n\nSome prose.\n")  # a page without markers: the section is appended
    train_zoo.main(["--readme", "--page", str(page)])
    assert page.read_text() == "# The zoo\n\nSome prose.\n\n" + table
    page.write_text(f"# The zoo\n\n{README_BEGIN}\nold\n{README_END}\n\nMore prose.\n")  # replaced in place
    train_zoo.main(["--readme", "--page", str(page)])
    assert page.read_text() == f"# The zoo\n\n{table.rstrip()}\n\nMore prose.\n"
