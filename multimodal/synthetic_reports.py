"""Synthetic radiology reports worth learning from: what a reader saw, in a site's own words.

``radiology_report`` writes one report from a subject's latent image quantities the way real
reports differ: each of three site styles (structured FINDINGS / IMPRESSION, narrative sentences,
terse comma lists) has its own wording; synonyms and abbreviations name the same finding
(WMH, leukoaraiosis, small-vessel disease; MCA / middle cerebral artery); negations state what
is absent ("no haemorrhage", "no acute infarct"); the reader grades infarct size, white-matter
disease and atrophy from a noisy impression of the truth (reader disagreement); irrelevant
phrases (sinus disease, motion, clinical details) sit beside the findings; and
``REPORT_MISSING`` of subjects have no report at all (an empty cell, a missing modality).

The white-matter grade keeps the one draw of the subject's stream that the first reports made
(``draw_wmh_reading``), so images written from the same seed stay byte-identical; every other
draw comes from the report's own stream.
"""

from __future__ import annotations

import numpy as np

REPORT_MISSING = 0.15  # share of subjects without a report
STYLES = ("structured", "narrative", "terse")  # one per site
STYLE_SHARES = (0.45, 0.35, 0.20)
WMH_BINS_ML = (3.0, 10.0, 25.0)  # none / mild / moderate / severe (Fazekas 0-3, roughly)
INFARCT_BINS_ML = (0.5, 5.0, 50.0)  # none / small / moderate / large

_INFARCT_SIZE = {1: ("small", "small", "punctate", "lacunar-sized"), 2: ("moderate", "moderate", "medium-sized"),
                 3: ("large", "large", "extensive")}
_TERRITORY = ("MCA territory", "middle cerebral artery territory", "MCA")
_NO_INFARCT = ("no acute infarct", "no restricted diffusion", "no evidence of acute ischaemia",
               "no acute infarct on DWI")
_WMH = {
    0: ("no significant white matter disease", "no WMH", "no leukoaraiosis",
        "no significant small-vessel disease"),
    1: ("mild white matter disease", "mild leukoaraiosis", "scattered WMH, Fazekas 1",
        "mild small-vessel disease"),
    2: ("moderate white matter disease", "moderate leukoaraiosis", "confluent WMH, Fazekas 2",
        "moderate small-vessel ischaemic change"),
    3: ("severe white matter disease", "severe leukoaraiosis", "extensive confluent WMH, Fazekas 3",
        "severe small-vessel disease"),
}
_ATROPHY = ("generalised volume loss", "global atrophy", "prominent sulci and ventricles for age")
_NO_ATROPHY = ("no atrophy", "age-appropriate brain volume", "volume normal for age")
_NEGATIONS = ("no haemorrhage", "no intracranial haemorrhage", "no haemorrhagic transformation",
              "no mass effect", "no midline shift")
_IRRELEVANT = ("mucosal thickening in the maxillary sinuses", "mild motion artefact",
               "incidental pineal cyst", "clinical details: ?stroke", "no prior imaging for comparison",
               "mastoid air cells clear")


def draw_wmh_reading(rng: np.random.Generator) -> float:
    """The reader's log-scale error on the white-matter load (one draw of the subject's stream)."""
    return float(rng.normal(0, 0.3))


def grade(value: float, bins: tuple[float, ...]) -> int:
    """0 .. len(bins): how many cut points ``value`` reaches."""
    return int(np.digitize(value, bins))


def radiology_report(side: str, infarct_ml: float, wmh_ml: float, atrophy_mm: float, wmh_reading: float,
                     rng: np.random.Generator, style: str | None = None) -> str | None:
    """One subject's report, or None for a subject without one.

    ``wmh_reading`` is ``draw_wmh_reading``'s error; ``rng`` the report's own stream; ``style`` one
    of ``STYLES`` (None: drawn, as a subject's site would be)."""
    if rng.random() < REPORT_MISSING:
        return None
    style = style or STYLES[int(rng.choice(len(STYLES), p=STYLE_SHARES))]
    pick = lambda options: options[int(rng.integers(len(options)))]  # noqa: E731 - local shorthand
    infarct_grade = grade(infarct_ml * np.exp(rng.normal(0, 0.25)), INFARCT_BINS_ML)
    if infarct_grade == 0:
        lesion = pick(_NO_INFARCT)
    else:
        size, territory = pick(_INFARCT_SIZE[infarct_grade]), pick(_TERRITORY)
        lesion = (f"{size} acute {side} {territory} infarct" if style != "terse"
                  else f"acute {side} {territory} infarct ({size})")
    findings = [lesion, pick(_WMH[grade(wmh_ml * np.exp(wmh_reading), WMH_BINS_ML)])]
    if atrophy_mm + rng.normal(0, 0.3) > 2.0:
        findings.append(pick(_ATROPHY))
    elif rng.random() < 0.4:
        findings.append(pick(_NO_ATROPHY))
    negations = [n for n in _NEGATIONS if rng.random() < 0.25]
    others = [p for p in _IRRELEVANT if rng.random() < 0.12]
    if style == "structured":
        details = "; ".join([*findings[1:], *negations, *others])
        return f"FINDINGS: {_first_upper(details)}. IMPRESSION: {_first_upper(lesion)}."
    if style == "narrative":
        article = "an" if lesion[0] in "aeiou" else "a"
        sentences = [f"There is {article} {lesion}" if infarct_grade else lesion, *findings[1:], *negations,
                     *others]
        return " ".join(_first_upper(s) + "." for s in sentences)
    return ", ".join([*findings, *negations, *others])


def _first_upper(text: str) -> str:
    return text[:1].upper() + text[1:]
