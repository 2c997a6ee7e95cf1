"""Synthetic reports carry what the reader saw, in varied words, and are sometimes absent."""

import numpy as np
import pytest
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import cross_val_predict

from multimodal.synthetic_reports import REPORT_MISSING, draw_wmh_reading, radiology_report

N = 1500


@pytest.fixture(scope="module")
def corpus():
    rng = np.random.default_rng(0)
    infarct = np.exp(rng.normal(1.5, 1.8, N))
    wmh = np.exp(rng.normal(np.log(8), 1.0, N))
    atrophy = rng.uniform(0, 4, N)
    sides = rng.choice(["left", "right"], N)
    reports = [radiology_report(sides[i], infarct[i], wmh[i], atrophy[i], draw_wmh_reading(rng),
                                np.random.default_rng([0, i])) for i in range(N)]
    return infarct, wmh, sides, reports


def test_some_subjects_have_no_report(corpus):
    missing = np.mean([r is None for r in corpus[3]])
    assert abs(missing - REPORT_MISSING) < 0.03


def test_reports_vary_in_style_synonyms_and_negations(corpus):
    text = [r for r in corpus[3] if r is not None]
    joined = " ".join(text).lower()
    for word in ("wmh", "leukoaraiosis", "small-vessel", "mca", "middle cerebral artery", "no haemorrhage",
                 "no acute infarct"):
        assert word in joined, word
    structured = np.mean([t.startswith("FINDINGS:") for t in text])
    terse = np.mean(["." not in t for t in text])
    assert 0.2 < structured < 0.7 and 0.05 < terse < 0.4


def test_a_bag_of_words_reads_the_graded_findings_back(corpus):
    """A reader's grades are noisy but informative: TF-IDF + logistic regression recovers large
    infarcts and heavy white-matter load from the words alone (cross-validated)."""
    infarct, wmh, sides, reports = corpus
    keep = np.array([r is not None for r in reports])
    words = TfidfVectorizer(ngram_range=(1, 2)).fit_transform([r for r in reports if r is not None])
    for target in (infarct[keep] > 20, wmh[keep] > 15):
        score = cross_val_predict(LogisticRegression(max_iter=1000), words, target, cv=5,
                                  method="predict_proba")[:, 1]
        assert roc_auc_score(target, score) > 0.85
    # the side of an infarct the reader reports is the true side
    seen = [i for i in np.flatnonzero(keep) if "acute left" in reports[i] or "acute right" in reports[i]]
    assert seen and all(f"acute {sides[i]}" in reports[i] for i in seen)
