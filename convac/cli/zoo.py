"""``convac-zoo list | info NAME | eval NAME | push NAME --repo ORG/NAME``: the pretrained entries of the model zoo.

* ``list``: one row per shipped entry (test NLL, bits/dim, accuracy, parameters, size, the
  entropy chain and the config that trained it); ``--markdown`` prints the zoo table of
  ``docs/zoo.md``.
* ``info NAME``: the full model card.
* ``eval NAME``: recompute the numbers of the entry's row from the shipped weights
  (sha256-verified): test metrics, parameters, size and entropy chain; exits with status 1
  if one differs by more than its tolerance. Entries trained on local data (DEBD) need
  ``--data-root``.
* ``push NAME --repo ORG/NAME``: save the entry (sha256-verified weights, ``config.json`` and
  a model card ``README.md``: :func:`convac.zoo.save_pretrained`) and upload it to that Hub
  repository (created if missing); then ``convac.create_model("hf-hub:ORG/NAME",
  pretrained=True)`` loads it. Needs ``pip install "convac[hub]"``, the network and a token
  with write access (``HF_TOKEN``, or the Hugging Face CLI's login).
"""
from __future__ import annotations

import argparse
import json

from convac.errors import InvalidValueError, UserError
from convac.zoo.cards import ModelCard, load_cards, markdown_table, with_local_data


def _list(cards: dict[str, ModelCard], markdown: bool) -> None:
    if markdown:
        print(markdown_table(cards), end="")
        return
    print(f"{'name':<22} {'data':<13} {'test NLL':>9} {'bits/dim':>8} {'acc':>7} {'params':>8} {'size':>8}  config")
    for c in cards.values():
        acc = c.metrics.get("test/acc")
        print(
            f"{c.name:<22} {c.dataset:<13} {c.metrics['test/nll']:>9.4f} {c.metrics['test/bpd']:>8.4f} "
            f"{'-' if acc is None else format(acc, '.4f'):>7} {c.num_parameters:>8,} "
            f"{c.size_bytes / 1024:>6.0f}Ki  experiment={c.experiment}"
        )
        print(f"{'':<22} entropy chain H^0 <= ... <= H(X) (nats): {c.entropy_chain()}")


def _info(card: ModelCard) -> None:
    e = card.entropy
    lines = [
        f"{card.name}: {card.description}",
        f"  trained by:   {card.command}  (config configs/experiment/{card.experiment}.yaml)",
        f"  architecture: {card.model_name} {json.dumps(card.model_kwargs)}",
        f"  data:         {json.dumps(card.data)}",
        f"  module:       {json.dumps(card.module)}",
        f"  training:     {json.dumps(card.training)}",
        f"  weights:      {card.weights_path} ({card.size_bytes:,} bytes, {card.num_parameters:,} parameters)",
        f"  sha256:       {card.sha256}",
        "  test metrics: " + ", ".join(f"{k}={v:.6g}" for k, v in card.metrics.items()),
        f"  entropy chain H^0 <= ... <= H^L <= H(X) (nats, shipped weights, {e['num_samples']} samples, seed {e['seed']}):",
        f"                {card.entropy_chain()}  (H(X) = {e['H_X']:.3f} ± {e['H_X_se']:.3f} nats = {e['H_X_bpd']:.4f} bits/dim)",
        f"                C_max={e['C_max']:.4f}  beta_max={e['beta_max']:.4f}",
        f"  entropy chain logged at the last training epoch ({e['last_epoch']['epoch']}): {card.entropy_chain(last_epoch=True)}",
        f"  load:         convac.create_model({card.name!r}, pretrained=True)",
    ]
    print("\n".join(lines))


def _eval(card: ModelCard, data_root: str | None, rtol: float) -> bool:
    """Recompute and print the numbers of ``card``'s table row; True when they all match."""
    from convac.data import create_datamodule
    from convac.zoo.evaluate import reproduce
    from convac.zoo.registry import create_model

    data = with_local_data(card.data, data_root)
    if data is None:
        sub = card.data.get("dataset")
        holding = f"{sub}.test.data, or its {sub}/ subfolder" if sub else f"the {card.data['name']} files"
        raise InvalidValueError(f"{card.name} was trained on {card.dataset}, read from a local folder or file: pass "
                         f"--data-root PATH (the data.{card.local_data_key} it was trained with: {holding})")
    datamodule = create_datamodule(**data)
    rows = reproduce(card, create_model(card.name, pretrained=True), datamodule, rtol)
    print(f"{card.name} on the {card.dataset} test split ({len(datamodule.split('test')[0])} examples), sha256 verified")
    print(f"  {'':<10} {'card':>14} {'measured':>14}")
    for row in rows:
        card_value, measured = (format(v, ",d" if isinstance(v, int) else ".6f") for v in (row.card, row.measured))
        print(f"  {row.name:<10} {card_value:>14} {measured:>14}  {'ok' if row.ok else 'DIFFERS'}")
    return all(row.ok for row in rows)


def _push(card: ModelCard, repo: str, private: bool) -> None:
    """Upload ``card``'s entry to the Hub repository ``repo`` (:func:`convac.zoo.push_to_hub`)."""
    from convac.zoo.hub import push_to_hub
    from convac.zoo.registry import create_model

    url = push_to_hub(create_model(card.name, pretrained=True), repo, card, private=private)
    print(f"pushed {card.name} to {url}\n  load it: convac.create_model(\"hf-hub:{repo}\", pretrained=True)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="convac-zoo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    list_parser = commands.add_parser("list", help="the shipped entries and their metrics")
    list_parser.add_argument("--markdown", action="store_true", help="print the model-card table of docs/zoo.md")
    commands.add_parser("info", help="the model card of an entry").add_argument("name")
    eval_parser = commands.add_parser("eval", help="recompute the numbers of an entry")
    eval_parser.add_argument("name")
    eval_parser.add_argument("--data-root", help="data folder of entries trained on local files (DEBD, MNIST)")
    eval_parser.add_argument("--rtol", type=float, default=1e-4, help="relative tolerance (default 1e-4)")
    push_parser = commands.add_parser("push", help="upload an entry to a Hugging Face Hub repository")
    push_parser.add_argument("name")
    push_parser.add_argument("--repo", required=True, metavar="ORG/NAME", help="the Hub repository (created if missing)")
    push_parser.add_argument("--private", action="store_true", help="create the repository private")
    args = parser.parse_args(argv)

    cards = load_cards()
    if args.command == "list":
        _list(cards, args.markdown)
        return
    if args.name not in cards:
        parser.exit(2, f"convac-zoo: error: no entry {args.name!r}; entries: {', '.join(cards)}\n")
    if args.command == "info":
        _info(cards[args.name])
        return
    try:
        if args.command == "push":
            _push(cards[args.name], args.repo, args.private)
            return
        ok = _eval(cards[args.name], args.data_root, args.rtol)
    except UserError as err:
        parser.exit(2, f"convac-zoo: error: {err}\n")
    parser.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
