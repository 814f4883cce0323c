"""The paper-claims report: holds on real models, fails when a claim is broken; Thms 1-2 are
identities (true for every input), labelled as such and never counted as evidence."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from convac import Categorical, Gaussian, HTConvAC
from convac.cli.claims import main as claims_main
from convac.entropy import Estimate, probe
from convac.entropy.claims import IDENTITY, MEASURED, check_claims, format_claims, tally


def model(leaf=Categorical(5)):
    torch.manual_seed(0)
    return HTConvAC((1, 4, 4), leaf, 4, 4).double()


def test_every_claim_holds_on_a_discrete_model():
    m = model()
    claims = check_claims(m, probe(m, num_samples=1000), num_samples=500)
    assert [c.name.split(" (")[0] for c in claims] == ["Thm 1", "Thm 2", "Def 4", "Thm 3", "Assumption 1", "Thm 4", "Thm 5"]
    assert all(c.holds for c in claims), format_claims(claims)


def test_thms_1_and_2_are_labelled_identities_and_the_rest_measured():
    m = model()
    claims = check_claims(m, probe(m, num_samples=500), num_samples=200)
    kinds = {c.name.split(" (")[0]: c.kind for c in claims}
    assert kinds == {"Thm 1": IDENTITY, "Thm 2": IDENTITY, "Def 4": MEASURED, "Thm 3": MEASURED,
                     "Assumption 1": MEASURED, "Thm 4": MEASURED, "Thm 5": MEASURED}
    text = format_claims(claims).splitlines()
    for claim in claims:  # every claim is two lines: its mark and statement, then what was computed
        head = next(i for i, line in enumerate(text) if f"] {claim.name}:" in line)
        if claim.kind == IDENTITY:
            assert text[head].startswith("[identity]") and "holds" not in text[head].split("]")[0]
            assert "identity (holds by definition), not a measurement on the model" in text[head + 1]
        else:
            assert text[head].startswith("[   holds]") and text[head + 1].strip().startswith("measured:")
    assert text[-1] == "measured claims: 5 hold, 0 fail, 0 n/a; 2 identities hold by definition and are not counted"


def test_identities_are_not_counted_as_evidence():
    m = model()
    claims = check_claims(m, probe(m, num_samples=500), num_samples=100)
    assert tally(claims) == {"holds": 5, "fails": 0, "n/a": 0, "identities": 2}
    # a failed arithmetic check of an identity (a numerical bug) is flagged but still not counted
    broken = [dataclasses.replace(c, holds=False) if c.kind == IDENTITY else c for c in claims]
    assert tally(broken) == tally(claims)
    assert "(CHECK FAILED)" in format_claims(broken) and "FAILS" not in format_claims(broken)
    # and without the measured claims nothing is left to count
    assert tally([c for c in claims if c.kind == IDENTITY]) == {"holds": 0, "fails": 0, "n/a": 0, "identities": 2}


def test_ratio_law_is_not_applicable_to_differential_entropies():
    m = model(Gaussian(min_std=0.1))
    claims = {c.name: c for c in check_claims(m, probe(m, num_samples=500), num_samples=500)}
    assert claims["Thm 5 (ratio law)"].holds is None and "bin_width" in claims["Thm 5 (ratio law)"].measured
    assert claims["Thm 1 (sigmoid)"].holds and claims["Thm 3 (monotone chain)"].holds
    assert tally(list(claims.values()))["n/a"] == 1


def test_a_broken_chain_is_reported():
    m = model()
    report = probe(m, num_samples=500)
    levels = list(report.levels)
    levels[1] = Estimate(levels[0].value - 10.0, levels[1].se)  # H^1 far below H^0
    claims = {c.name: c for c in check_claims(m, dataclasses.replace(report, levels=levels), num_samples=100)}
    assert claims["Thm 3 (monotone chain)"].holds is False
    assert "FAILS" in format_claims(list(claims.values()))
    assert tally(list(claims.values()))["fails"] >= 1


def test_cli_prints_the_claims_and_rejects_unknown_keys(tmp_path, capsys):
    import lightning as L

    from convac.training import ConvACModule

    module = ConvACModule(model_name="ht", model_kwargs=dict(in_shape=[1, 4, 4], leaf={"name": "categorical", "num_values": 5},
                                                             num_components=3, channels=3))
    trainer = L.Trainer(max_epochs=0, logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.strategy.connect(module)
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    claims_main([f"ckpt={path}", "num_samples=200"])
    out = capsys.readouterr().out
    assert "Thm 3 (monotone chain)" in out and "entropy chain" in out
    assert "[identity] Thm 1 (sigmoid)" in out and "[identity] Thm 2 (ReLU)" in out
    assert "measured: chain" in out and "2 identities hold by definition and are not counted" in out
    with pytest.raises(SystemExit, match="nm"):
        claims_main([f"ckpt={path}", "nm=3"])


def test_cli_reports_a_missing_model_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        claims_main([f"ckpt={tmp_path / 'absent.safetensors'}"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("convac-claims: error:") and err.count("\n") == 1
