"""The promotion rule: a challenger becomes champion only if there is none, or it is strictly better."""

from mmsearch.register import decide


def test_no_champion_promotes():
    decision = decide("macro_f1", 0.4, None)
    assert decision.promote and decision.reason == "no champion yet"


def test_better_challenger_promotes():
    decision = decide("macro_f1", 0.61, 0.60, champion_version="3")
    assert decision.promote
    assert decision.reason == "challenger macro_f1 0.6100 beats champion v3 0.6000"


def test_worse_challenger_stays_challenger():
    decision = decide("macro_f1", 0.50, 0.60, champion_version="3")
    assert not decision.promote and "does not beat champion v3" in decision.reason


def test_equal_challenger_stays_challenger():
    assert not decide("ndcg", 0.9, 0.9, champion_version="1").promote


def test_unscorable_champion_keeps_its_alias():
    decision = decide("macro_f1", 0.99, None, champion_error="no column product_text_embedding", champion_version="2")
    assert not decision.promote
    assert decision.reason == "champion v2 could not be scored on this data: no column product_text_embedding"
