"""The demos' pairs are picked by rule: the query judged with the most different labels, one
product of each label first."""

from mmsearch import paths, raw
from mmsearch.tools.sample_data import generate
from mmsearch.tools.sample_world import SampleSpec
from mmsearch.tools.serve_example import MODEL_INPUTS, example_pairs


def test_the_example_query_is_the_first_judged_with_the_most_labels(tmp_path):
    generate(tmp_path, SampleSpec(queries=40, products=300, dim=8, seed=3))
    frame = example_pairs(tmp_path, pairs=4)
    judged = raw.read_esci(tmp_path / paths.ESCI_FILE, ["query_id", "esci_label"]).to_pandas()
    judged = judged.astype({"query_id": str})  # the working set, as the demos read it
    labels = judged.groupby("query_id").esci_label.nunique()
    enough = judged.groupby("query_id").size() >= 4
    best = labels[enough].max()
    assert frame.query_id.nunique() == 1 and labels[frame.query_id[0]] == best
    assert frame.query_id[0] == min(labels[enough & (labels == best)].index, key=int)  # the first by id
    assert frame.esci_label.nunique() == min(best, 4)  # one of each label before a second of any
    assert all(len(vector) == 8 for column in MODEL_INPUTS for vector in frame[column])
