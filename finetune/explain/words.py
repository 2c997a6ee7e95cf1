"""Which report words drive a fine-tuning run's score: occlusion of each word of each report.

For every subject with a report, each distinct word is removed from the report (every occurrence,
so its n-grams go with it) and the fold ensemble re-scores the subject with everything else as it
was; the word's effect is ``score(report) − score(report without the word)`` on the run's logit
(positive: the word raises the predicted risk). Occlusion rather than Integrated Gradients because
the report is read as hashed n-gram counts: removing a word is the change a reader understands, and
each word maps to many hashed columns.

Reports can hold names, dates and identifiers. Without ``with_ids`` only the cohort's common
vocabulary is ever shown: words in at least ``MIN_REPORTS`` reports and ``MIN_SHARE`` of them, with
no digit (``shown_words``); per-subject lists follow the same rule.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import torch
from sklearn.feature_extraction.text import CountVectorizer
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from finetune.explain.scorer import Scorer
from multimodal.cohort import Cohort
from multimodal.data import table_present, to_device
from multimodal.text import DEFAULT_FEATURES, hashed_counts, run_documents

MIN_REPORTS = 5  # a word shown without --with-ids is in at least this many reports ...
MIN_SHARE = 0.01  # ... and this share of them
_WORDS = CountVectorizer().build_analyzer()  # scikit-learn's word tokens (lowercased, 2+ characters)


def report_words(document: str) -> list[str]:
    """The distinct words of ``document``, in order of first appearance."""
    return list(dict.fromkeys(_WORDS(document)))


def without_word(document: str, word: str) -> str:
    """``document`` with every occurrence of ``word`` (a whole word, any case) blanked."""
    return re.sub(rf"(?<!\w){re.escape(word)}(?!\w)", " ", document, flags=re.IGNORECASE)


@torch.no_grad()
def word_effects(scorer: Scorer, cohort: Cohort, batch_size: int = 16) -> dict[str, Any] | None:
    """``{"rows": (N,) cohort positions, "words": [[word, ...] per row], "effects": [(W_i,) per row]}``
    for the subjects with a report; None when the run reads no report."""
    if "report" not in scorer.modalities:
        return None
    args = scorer.others["report"]
    features = int(args.get("features", DEFAULT_FEATURES))
    documents = run_documents(cohort, list(cohort.ids), scorer.others)
    cache = scorer.cache(cohort)
    if cache is not None:
        cache.warm(cohort.records())
    # As in attribution.tabular_attributions: the image (and other inputs) read once, each member's
    # table from its own preprocessor, an encoder shared by several members run once.
    dataset = scorer.dataset(cohort, scorer.members[0], cache=cache)
    tables = ([member.preprocessor.transform_tensors(cohort.features) for member in scorer.members]
              if "table" in scorer.modalities else None)
    shared = {m: scorer.shared(m) for m in scorer.modalities if m not in ("table", "report")}
    rows, words, effects = [], [], []
    for batch in tqdm(DataLoader(dataset, batch_size=batch_size), desc="report words", unit="batch"):
        positions = batch["index"]
        batch = to_device(batch, scorer.device)
        fixed: list[dict[str, torch.Tensor]] = [{} for _ in scorer.members]
        present = [dict(batch["present"]) for _ in scorer.members]
        for m, groups in shared.items():
            for encoder, indices in groups:
                embedded = encoder(batch[m])
                for i in indices:
                    fixed[i][m] = embedded
        for i, member in enumerate(scorer.members):
            if tables is not None:
                table = {key: value[positions].to(scorer.device) for key, value in tables[i].items()}
                fixed[i]["table"] = member.encoders["table"](table)
                present[i]["table"] = table_present(table)
        for k, position in enumerate(positions.tolist()):
            document = documents[position]
            vocabulary = report_words(document) if document is not None else []
            if not vocabulary:
                continue
            variants = hashed_counts([document, *(without_word(document, w) for w in vocabulary)], features)
            variants, count = variants.to(scorer.device), len(vocabulary) + 1
            scores = []
            for member, embeddings, flags in zip(scorer.members, fixed, present, strict=True):
                inputs = {m: e[k:k + 1].expand(count, -1) for m, e in embeddings.items()}
                inputs["report"] = member.encoders["report"](variants)
                scores.append(member.head(inputs, {m: p[k:k + 1].expand(count) for m, p in flags.items()}))
            score = torch.stack(scores).mean(dim=0).cpu().numpy()
            rows.append(position)
            words.append(vocabulary)
            effects.append(score[0] - score[1:])
    return {"rows": np.array(rows, dtype=int), "words": words, "effects": effects}


def shown_words(result: dict[str, Any], with_ids: bool) -> set[str] | None:
    """The words a report may show: the common vocabulary (see the module docstring), or every word
    (None) ``with_ids``."""
    if with_ids:
        return None
    reports = len(result["words"])
    counts: dict[str, int] = {}
    for vocabulary in result["words"]:
        for word in vocabulary:
            counts[word] = counts.get(word, 0) + 1
    needed = max(MIN_REPORTS, MIN_SHARE * reports)
    return {w for w, n in counts.items() if n >= needed and not any(c.isdigit() for c in w)}


def common_vocabulary(cohort: Cohort, scorer: Scorer) -> set[str]:
    """The words ``shown_words`` allows, counted over every report of ``cohort``."""
    documents = run_documents(cohort, list(cohort.ids), scorer.others)
    return shown_words({"words": [report_words(d) for d in documents if d]}, with_ids=False) or set()


def word_ranking(result: dict[str, Any], allowed: set[str] | None, n_resamples: int = 1000,
                 seed: int = 0) -> list[dict[str, Any]]:
    """Words by mean |effect| over the reports holding them, each with a 95 % bootstrap interval (those
    reports resampled), its mean signed effect and report count; largest first (the shape of
    ``attribution.global_ranking``, so one figure draws both)."""
    per_word: dict[str, list[float]] = {}
    for vocabulary, effect in zip(result["words"], result["effects"], strict=True):
        for word, value in zip(vocabulary, effect, strict=True):
            if allowed is None or word in allowed:
                per_word.setdefault(word, []).append(float(value))
    rng = np.random.default_rng(seed)
    ranking = []
    for word, values in per_word.items():
        values = np.array(values)
        draws = np.abs(values)[rng.integers(0, len(values), (n_resamples, len(values)))].mean(axis=1)
        lower, upper = np.percentile(draws, [2.5, 97.5])
        ranking.append({"feature": word, "mean_abs": float(np.abs(values).mean()), "lower": float(lower),
                        "upper": float(upper), "mean_signed": float(values.mean()), "reports": len(values)})
    return sorted(ranking, key=lambda r: -r["mean_abs"])


def subject_words(result: dict[str, Any], position: int, allowed: set[str] | None, top: int = 10) -> list[dict[str, Any]]:
    """One subject's words by |effect|, largest first (only ``allowed`` ones; None: all)."""
    found = np.flatnonzero(result["rows"] == position)
    if not len(found):
        return []
    vocabulary, effect = result["words"][found[0]], result["effects"][found[0]]
    pairs = [(w, float(e)) for w, e in zip(vocabulary, effect, strict=True) if allowed is None or w in allowed]
    return [{"word": w, "effect": e} for w, e in sorted(pairs, key=lambda p: -abs(p[1]))[:top]]
