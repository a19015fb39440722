"""The generator writes the public files' names and schemas, with a learnable, pair-level structure."""

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mmsearch import paths
from mmsearch.tools.sample_data import TRUTH_FILE, SampleSpec, generate
from tests.helpers import SMALL, small_config


def test_files_have_the_contract_schemas(small_raw):
    esci = pq.read_schema(small_raw / paths.ESCI_FILE)
    assert esci.names == [
        "example_id",
        "query",
        "query_id",
        "product_id",
        "product_locale",
        "esci_label",
        "small_version",
        "large_version",
        "split",
    ]
    assert esci.field("query_id").type == pa.int64()  # ESCI: integer
    queries = pq.read_schema(small_raw / paths.QUERY_FEATURES_FILE)
    assert queries.field("query_id").type == pa.string()  # SQID: string
    assert queries.field("clip_text_features").type == pa.list_(pa.float32())
    products = pq.read_schema(small_raw / paths.PRODUCT_FEATURES_FILE)
    assert products.names == ["product_id", "clip_text_features", "clip_image_features"]
    lengths = pq.read_table(small_raw / paths.PRODUCT_FEATURES_FILE).column("clip_image_features").combine_chunks()
    assert set(pa.compute.list_value_length(lengths).to_pylist()) == {SMALL.dim}


def test_working_set_and_rows_outside_it(small_raw):
    esci = pq.read_table(small_raw / paths.ESCI_FILE).to_pandas()
    working = esci[(esci.product_locale == "us") & (esci.small_version == 1) & (esci.split == "test")]
    assert 0 < len(working) < len(esci)
    sqid_ids = set(pq.read_table(small_raw / paths.QUERY_FEATURES_FILE).column("query_id").to_pylist())
    assert set(working.query_id.astype(str)) <= sqid_ids
    assert not set(esci[esci.product_locale != "us"].query_id.astype(str)) & sqid_ids


def test_labels_vary_within_queries_with_esci_like_frequencies():
    # the bundled sample's size, so the frequencies are those users see
    spec = SampleSpec(dim=8)
    esci = _esci(spec)
    working = esci[esci.small_version.eq(1) & esci.product_locale.eq("us") & esci.split.eq("test")]
    share = working.esci_label.value_counts(normalize=True)
    assert share["E"] > share["S"] > share["I"] > share["C"] > 0.01
    labels_per_query = working.groupby("query_id").esci_label.nunique()
    assert (labels_per_query > 1).mean() > 0.8


def test_truth_is_a_distribution_for_every_working_set_judgement_and_labels_follow_it(tmp_path):
    generate_dir = tmp_path / "raw"
    generate(generate_dir, SampleSpec(dim=8))
    esci = pq.read_table(generate_dir / paths.ESCI_FILE).to_pandas()
    truth = pq.read_table(generate_dir / TRUTH_FILE).to_pandas().set_index("example_id")
    working = esci[esci.small_version.eq(1) & esci.product_locale.eq("us") & esci.split.eq("test")]
    assert set(truth.index) == set(working.example_id)
    columns = ["p_E", "p_S", "p_I", "p_C"]
    np.testing.assert_allclose(truth[columns].sum(axis=1), 1.0, atol=1e-9)
    # the drawn labels agree with the known distribution: the mean p of the label drawn is what
    # a draw from p gives in expectation (sum of p squared), within sampling noise
    drawn = truth.loc[working.example_id, columns].to_numpy()
    picked = drawn[np.arange(len(working)), working.esci_label.map({"E": 0, "S": 1, "I": 2, "C": 3}).to_numpy()]
    assert picked.mean() == pytest.approx((drawn**2).sum(axis=1).mean(), abs=0.02)


@pytest.mark.ml
def test_ceiling_scores_the_true_distribution_on_a_merged_split(small_raw, tmp_path):
    from mmsearch.stages import merge
    from mmsearch.tools.ceiling import ceiling

    merge.merge(small_raw, tmp_path / "merged", small_config())
    best = ceiling(small_raw, tmp_path / "merged", "test")
    assert best["rows"] == merge.read_merged(tmp_path / "merged", "test").num_rows
    assert 0.5 < best["accuracy"] <= 1.0 and 0.0 < best["macro_f1"] <= best["accuracy"] + 0.3
    assert 0.0 < best["ndcg"] <= 1.0
    # the bound on the expectation: the test labels are one draw, their nDCG near it
    assert 0.0 < best["ndcg_expected"] <= 1.0 and abs(best["ndcg_expected"] - best["ndcg"]) < 0.05


def test_same_seed_same_bytes_other_seed_other_data(tmp_path):
    spec = SampleSpec(queries=10, products=60, topics=4, values=2, dim=8)
    generate(tmp_path / "a", spec)
    generate(tmp_path / "b", spec)
    generate(tmp_path / "c", SampleSpec(**{**spec.__dict__, "seed": 99}))
    read = lambda d: pq.read_table(d / paths.PRODUCT_FEATURES_FILE)  # noqa: E731
    assert read(tmp_path / "a").equals(read(tmp_path / "b"))
    assert not read(tmp_path / "a").equals(read(tmp_path / "c"))


def test_legacy_csv_has_f_columns_and_timestamp(small_raw):
    frame = pd.read_csv(small_raw / paths.LEGACY_QUERY_CSV)
    assert list(frame.columns) == ["query_id"] + [f"f{i}" for i in range(SMALL.dim)] + ["event_timestamp"]
    parquet = pq.read_table(small_raw / paths.QUERY_FEATURES_FILE).to_pandas()
    first = parquet.iloc[0]
    row = frame[frame.query_id.astype(str) == first.query_id].iloc[0]
    np.testing.assert_allclose(
        row[[f"f{i}" for i in range(SMALL.dim)]].to_numpy(float), first.clip_text_features, rtol=1e-6
    )


def _esci(spec):
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp) / "raw", spec)
        return pq.read_table(Path(tmp) / "raw" / paths.ESCI_FILE).to_pandas()


@pytest.fixture(scope="module")
def clip_wide(tmp_path_factory) -> pd.DataFrame:
    """Working-set judgements of a sample at CLIP's width, with each pair's relation (the most
    probable label of its true p) and its query-text and query-image cosines."""
    out = tmp_path_factory.mktemp("clip") / "raw"
    generate(out, SampleSpec(queries=120, products=700, seed=5))
    esci = pq.read_table(out / paths.ESCI_FILE).to_pandas()
    truth = pq.read_table(out / TRUTH_FILE).to_pandas()
    judged = esci.merge(truth, on="example_id")
    queries = pq.read_table(out / paths.QUERY_FEATURES_FILE).to_pandas().set_index("query_id")
    products = pq.read_table(out / paths.PRODUCT_FEATURES_FILE).to_pandas().set_index("product_id")
    query = np.stack(queries.loc[judged.query_id.astype(str), "clip_text_features"].to_numpy())
    for side in ("text", "image"):
        product = np.stack(products.loc[judged.product_id, f"clip_{side}_features"].to_numpy())
        judged[f"cos_{side}"] = np.sum(query * product, axis=1)  # unit vectors
    judged["relation"] = judged[["p_E", "p_S", "p_I", "p_C"]].to_numpy().argmax(axis=1)
    judged["relation"] = judged.relation.map(dict(enumerate("ESIC")))
    return judged


def test_cosines_sit_in_clips_high_band_and_still_order_the_relations_within_a_query(clip_wide):
    inside = clip_wide.cos_text.between(0.5, 0.9).mean()
    assert inside > 0.8, inside  # a common direction lifts every cosine
    # within a query: pooled over queries, one naming two attribute values lifts every cosine it has
    by_query = clip_wide.groupby(["query_id", "relation"])
    text, image = (by_query[f"cos_{side}"].mean().unstack() for side in ("text", "image"))
    assert (image.E - image.S).median() > 0 and (image.S - image.I).median() > 0
    # the text of an irrelevant product may read as the query's type (a lexical hard negative)
    assert (text.E - text.S).median() > 0 and (text.E - text.I).median() > 0


def test_lexical_hard_negatives_look_close_in_text_and_far_in_image(clip_wide):
    substitutes = clip_wide[clip_wide.relation == "S"]
    irrelevant = clip_wide[clip_wide.relation == "I"]
    close = irrelevant[irrelevant.cos_text > substitutes.cos_text.median()]
    assert len(close) / len(irrelevant) > 0.15  # a title that shares the query's words
    assert close.cos_image.mean() < substitutes.cos_image.mean()  # a photo of something else


def test_complements_run_one_way_between_types_of_other_families():
    from mmsearch.tools.sample_world import accessory_graph

    for topics in (4, 12, 24):
        accessory = accessory_graph(topics, np.random.default_rng(topics))
        kinds = np.arange(topics)
        assert (accessory // 2 != kinds // 2).all()  # never a sibling, never itself
        assert (accessory[accessory] != kinds).all()  # a case complements a phone, not the reverse
