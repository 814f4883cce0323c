"""Train every zoo entry with ``convac-train experiment=zoo_<name>`` and export it into the package.

    python scripts/train_zoo.py --data-root debd=/path/to/debd mnist=/path/to/mnist   # all entries
    python scripts/train_zoo.py --only ht_digits cp_digits       # some entries
    python scripts/train_zoo.py --readme                         # only regenerate the zoo table of docs/zoo.md

For each entry: one fresh ``convac-train`` run (in ``--runs-dir/<name>``, emptied first; one
CPU thread by default: oversubscribed threads slow PyTorch down badly on a shared machine),
then its best checkpoint is exported to ``convac/zoo/weights/<name>.safetensors`` with a
measured model card ``convac/zoo/cards/<name>.json`` (see :mod:`convac.zoo.export`). The zoo
table of the docs page ``docs/zoo.md`` (between the ``convac-zoo:begin`` / ``convac-zoo:end``
markers, appended at its end when the page has none yet) is regenerated from the cards at the
end. Entries whose data is read from a local folder get it from ``--data-root DATA=DIR``
(``DATA`` the data config name: the DEBD entries read ``NAME.{train,valid,test}.data`` from
``debd=DIR`` or its ``NAME/`` subfolders, the MNIST entry the t10k IDX files from
``mnist=DIR``); a bare ``DIR`` serves every such entry.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from convac.zoo.cards import load_cards, markdown_table, replace_readme_section
from convac.zoo.entries import ENTRIES, ZooEntry
from convac.zoo.export import export_run

REPO = Path(__file__).resolve().parents[1]


def data_root(entry: ZooEntry, roots: list[str]) -> str | None:
    """The folder of ``entry``'s data from the ``--data-root`` values (``DATA=DIR`` or a bare
    ``DIR`` for every entry); None for data that needs none."""
    if not entry.needs_data_root:
        return None
    data = entry.config().data.name
    given = dict(r.split("=", 1) if "=" in r else ("", r) for r in roots)
    if data not in given and "" not in given:
        raise SystemExit(f"train_zoo: {entry.name} reads its data from a local folder; pass --data-root {data}=DIR")
    return given.get(data, given.get(""))


def train(name: str, runs_dir: Path, root: str | None, threads: int) -> float:
    """Run ``convac-train`` for entry ``name`` in a fresh ``runs_dir/name`` (its local data
    folder or file ``root`` when given); returns its wall time in seconds."""
    entry = ENTRIES[name]
    shutil.rmtree(runs_dir / name, ignore_errors=True)  # a reused folder would mix checkpoints
    command = [
        sys.executable, "-m", "convac.cli.train", f"experiment={entry.experiment}",
        f"hydra.run.dir={runs_dir / name}", "trainer.enable_progress_bar=false",
    ]
    if root is not None:
        command.append(f"data.{entry.local_data_key}={root}")
    print("$ convac-train", " ".join(command[3:]), flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def update_zoo_table(path: Path) -> None:
    """Regenerate the zoo table of the markdown page ``path`` from the shipped cards (the page
    is created, or the marked section appended, when missing)."""
    text = path.read_text() if path.exists() else ""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(replace_readme_section(text, markdown_table(load_cards())))
    print(f"updated the zoo table in {path}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=sorted(ENTRIES), help="entries to train (default: all)")
    parser.add_argument("--data-root", nargs="+", default=[], metavar="[DATA=]DIR",
                        help="data folders of the entries trained on local files: debd=DIR (ht_nltcs, ht_plants, ht_pumsb_star), "
                             "mnist=DIR (ht_mnist_classifier); a bare DIR for all")
    parser.add_argument("--runs-dir", type=Path, default=REPO / "outputs" / "zoo", help="where the runs go")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per training run (default 1)")
    parser.add_argument("--readme", action="store_true", help="only regenerate the zoo table (of --page)")
    parser.add_argument("--page", type=Path, default=REPO / "docs" / "zoo.md",
                        help="the markdown page holding the zoo table (default docs/zoo.md)")
    args = parser.parse_args(argv)
    if not args.readme:
        total = 0.0
        for name in args.only or sorted(ENTRIES):
            root = data_root(ENTRIES[name], args.data_root)
            seconds = train(name, args.runs_dir, root, args.threads)
            card = export_run(ENTRIES[name], args.runs_dir / name, root, seconds)
            total += seconds
            print(f"  {name}: {seconds:.0f} s, test NLL {card.metrics['test/nll']:.4f} nats, {card.weights_path}")
        print(f"trained in {total:.0f} s")
    update_zoo_table(args.page)


if __name__ == "__main__":
    main()
