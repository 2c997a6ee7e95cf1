"""The report modality: hashed n-gram counts, TF-IDF fitted on training rows, empty = missing."""

import numpy as np
import pytest
import torch
from conftest import write_cohort, write_nifti
from sklearn.feature_extraction.text import TfidfTransformer

from multimodal.cohort import load_cohort
from multimodal.config import load_cohort_config
from multimodal.encoders import create_encoder
from multimodal.errors import ConfigError
from multimodal.text import hashed_counts, read_reports, sparse_counts

REPORTS = ["Small acute left MCA infarct. No haemorrhage.", "", None, "no acute infarct, mild WMH",
           "FINDINGS: moderate leukoaraiosis. IMPRESSION: large right MCA infarct."]


@pytest.fixture
def cohort(tmp_path):
    rows = []
    for i, (report, note) in enumerate(zip(REPORTS, ["", "seen by registrar", "", "", ""], strict=True)):
        write_nifti(tmp_path / "img" / f"s{i}.nii.gz", np.ones((4, 4, 4), np.float32))
        rows.append({"subject_id": f"s{i}", "flair": f"img/s{i}.nii.gz", "recurrence_12m": i % 2, "age": 60 + i,
                     "report": f'"{report}"' if report else None, "note": note or None})
    config = write_cohort(tmp_path, rows, {"text": ["report", "note"]})
    return load_cohort(load_cohort_config(config))


def test_an_empty_report_is_a_missing_modality(cohort):
    counts, present = read_reports(cohort, cohort.ids, {"columns": ["report"], "features": 64})
    assert present.tolist() == [True, False, False, True, True]
    dense = counts.to_dense()
    assert counts.shape == (5, 64) and dense[~present].abs().sum() == 0 and (dense[present].sum(1) > 0).all()
    # kept sparse; each subject's row comes out dense, as the dataset's items and batches need it
    assert counts.matrix.nnz == int((dense > 0).sum()) < dense.numel()
    assert torch.equal(counts[3], dense[3]) and torch.equal(counts[present].to_dense(), dense[present])
    torch.testing.assert_close(counts.document_frequency(), (dense > 0).sum(0).float())
    # both text columns by default: the second subject's note makes it a report
    _, present = read_reports(cohort, cohort.ids, {"features": 64})
    assert present.tolist() == [True, True, False, True, True]
    with pytest.raises(ConfigError, match=r"'findings'.*declares"):
        read_reports(cohort, cohort.ids, {"columns": ["findings"]})


def test_tfidf_matches_scikit_learn_and_ignores_terms_unseen_in_training():
    train = ["small left infarct", "no infarct no haemorrhage", "moderate leukoaraiosis", "small vessel disease"]
    counts = hashed_counts(train, 256)
    encoder = create_encoder("tfidf_projection", features=256, dim=8)
    encoder.fit_to_data(counts, torch.ones(4, dtype=torch.bool))
    reference = TfidfTransformer(smooth_idf=True, norm="l2").fit_transform(counts.numpy()).toarray()
    np.testing.assert_allclose(encoder.tfidf(counts).numpy(), reference, rtol=1e-5, atol=1e-6)
    from_sparse = create_encoder("tfidf_projection", features=256, dim=8)  # the reader's sparse rows fit alike
    from_sparse.fit_to_data(sparse_counts(train, 256), torch.ones(4, dtype=torch.bool))
    torch.testing.assert_close(from_sparse.idf, encoder.idf)
    # a test report's words that no training report holds weigh nothing (wide enough not to collide)
    wide = create_encoder("tfidf_projection", features=2**16, dim=8)
    wide.fit_to_data(hashed_counts(train, 2**16), torch.ones(4, dtype=torch.bool))
    tfidf = wide.tfidf(hashed_counts(["small infarct", "small infarct zzzqqq"], 2**16))
    torch.testing.assert_close(tfidf[0], tfidf[1])
    with pytest.raises(ConfigError, match="features must match"):
        encoder(hashed_counts(["x"], 128))
