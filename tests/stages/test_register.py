"""The gate: a new version becomes champion only if it beats every baseline, and then the champion,
on this run's test split; otherwise it stays challenger, with the reason."""

from mmsearch.register import decide

BASELINES = {"baseline_majority": {"macro_f1": 0.20}, "baseline_clip": {"macro_f1": 0.41}}


def scores(model: float, champion: float | None = None) -> dict:
    found = {"model": {"macro_f1": model}, **BASELINES}
    if champion is not None:
        found["champion"] = {"macro_f1": champion}
    return found


def test_no_champion_and_every_baseline_beaten_promotes():
    decision = decide("macro_f1", scores(0.45))
    assert decision.promote and decision.reason == "no champion yet; macro_f1 0.4500 beats every baseline"


def test_a_model_that_loses_to_a_baseline_stays_challenger_even_without_a_champion():
    decision = decide("macro_f1", scores(0.40))
    assert not decision.promote
    assert decision.reason == "macro_f1 0.4000 does not beat baseline_clip 0.4100"


def test_a_tie_with_a_baseline_is_not_a_win():
    assert not decide("macro_f1", scores(0.41)).promote


def test_better_than_baselines_and_champion_promotes():
    decision = decide("macro_f1", scores(0.61, champion=0.60), champion_version="3")
    assert decision.promote
    assert decision.reason == "macro_f1 0.6100 beats champion v3 0.6000"


def test_worse_than_the_champion_stays_challenger():
    decision = decide("macro_f1", scores(0.50, champion=0.60), champion_version="3")
    assert not decision.promote and "does not beat champion v3 0.6000" in decision.reason


def test_unscorable_champion_keeps_its_alias():
    decision = decide(
        "macro_f1",
        scores(0.99),
        champion_version="2",
        champion_error="this run's data has no column(s) ['product_text_embedding']",
    )
    assert not decision.promote
    assert decision.reason.startswith("champion v2 could not be scored on this data: ")
