"""``report/explain.md`` and ``report/explain.html``: one list of blocks, two renderings.

A block is ``("h1" | "h2" | "p", text)``, ``("table", header, rows)`` or ``("img", relative path,
caption)``; ``sections`` turns the explain results (``analysis.analyse`` plus the attribution and
the saliency gallery that ``explain.run`` adds) into blocks, ``markdown`` and ``html`` render them.
The HTML is one self-contained file (PNGs inlined, no script, no network); the Markdown links the
PNGs beside it.
"""

from __future__ import annotations

import base64
import html as html_escape
import math
from pathlib import Path
from typing import Any

from multimodal.checkpoint import atomic_write_json, atomic_write_text
from multimodal.run_folder import run_paths

Block = tuple


def _fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def space_blocks(space: dict[str, Any]) -> list[Block]:
    if "alignment" not in space:
        return []
    n = int(space["n"])
    names = {"image_to_table": "image → record", "table_to_image": "record → image"}
    rows = [[names[direction]] +
             [_fmt(space[f"recall@{k}_{direction}"]) for k in (1, 5, 10)] + [f"{space[f'median_rank_{direction}']:.0f}"]
             for direction in ("image_to_table", "table_to_image")]
    rows.append([f"chance ({n} subjects)", *(_fmt(space[f"chance_recall@{k}"]) for k in (1, 5, 10)), f"{(n + 1) / 2:.0f}"])
    uniformity = ", ".join(f"{k.split('_', 1)[1]} {v:.3f}" for k, v in space.items() if k.startswith("uniformity_"))
    return [("h2", "Cross-modal retrieval (image ↔ clinical record, shared projection space)"),
            ("table", ["direction", "recall@1", "recall@5", "recall@10", "median rank"], rows),
            ("p", f"Alignment {space['alignment']:.3f} (mean squared distance of a subject's two embeddings; 0 = "
                  f"identical, 2 = unrelated), modality gap {space['modality_gap']:.3f} (distance between the two "
                  f"modalities' centroids), uniformity {uniformity} (lower = more spread out).")]


def probe_blocks(analysis: dict[str, Any]) -> list[Block]:
    blocks: list[Block] = []
    if analysis["label_probe"]:
        blocks += [("h2", "What each embedding says about the label"),
                   ("p", "Cross-validated linear-probe AUROC of the label from each modality's embedding alone."),
                   ("table", ["modality", "AUROC", "subjects", "positives"],
                    [[m, _fmt(v["auroc"]), str(v["n"]), str(v["positives"])] for m, v in analysis["label_probe"].items()])]
    if analysis["decoded_from_image"]:
        ranked = sorted(analysis["decoded_from_image"].items(),
                        key=lambda kv: -max(kv[1].get("r2", -math.inf), 2 * kv[1].get("auroc", -math.inf) - 1))
        rows = [[c, "–", "–", f"skipped: {v['skipped']}"] if "skipped" in v else
                [c, _fmt(v.get("r2")) if "r2" in v else "", _fmt(v.get("auroc")) if "auroc" in v else "", str(v["n"])]
                for c, v in ranked]
        blocks += [("h2", "Which clinical facts the MRI encoder learned"),
                   ("p", "How well each clinical feature is decoded from the image embedding (cross-validated linear "
                         "probe: R² for continuous features, AUROC for binary and categorical ones; R² ≤ 0 or AUROC "
                         "≈ 0.5 = not in the image embedding)."),
                   ("table", ["feature", "R²", "AUROC", "subjects"], rows)]
    return blocks


def attribution_blocks(attribution: dict[str, Any], second: bool = False) -> list[Block]:
    what = attribution["what"]
    if second:  # the other baseline: a second view, no repeat of the method
        rows = [[r["feature"], f"{r['mean_abs']:.3f} [{r['lower']:.3f}, {r['upper']:.3f}]", f"{r['mean_signed']:+.3f}"]
                for r in attribution["ranking"]]
        return [("h2", f"The same against a baseline with {attribution['baseline_text']}"),
                ("p", "A second view: here a feature's attribution is its effect relative to another reference, "
                      "so a feature can rank high for being known at all rather than for its value."),
                ("img", attribution["figure"], f"feature attribution, baseline {attribution['baseline']}"),
                ("table", ["feature", "mean absolute attribution [95 % CI]", "mean signed"], rows)]
    rows = [[r["feature"], f"{r['mean_abs']:.3f} [{r['lower']:.3f}, {r['upper']:.3f}]", f"{r['mean_signed']:+.3f}"]
            for r in attribution["ranking"]]
    return [("h2", f"Which clinical features drive the {what}"),
            ("p", f"Integrated Gradients of the {what}, from a baseline with {attribution['baseline_text']} "
                  f"({attribution['n_steps']} steps; the largest convergence delta was "
                  f"{attribution['max_abs_convergence_delta']:.2g} against score changes up to "
                  f"{attribution['max_abs_score_gap']:.2g}). Mean |attribution| over {attribution['subjects']} "
                  "subjects with a 95 % bootstrap interval; the sign column says which way the feature pushes on "
                  "average (+ raises the score). Against the training-median baseline (the default) a feature's "
                  "attribution is its effect relative to a typical patient; `--baseline missing` leads with its effect "
                  "relative to its being unknown (shown below as a second view either way)."),
            ("img", attribution["figure"], "global feature attribution"),
            ("p", f"Every subject's attributions: `{attribution.get('table', 'explain_attributions.csv')}` (rows in "
                  "cohort order; subject ids only with `strokessl explain --with-ids`)."),
            ("table", ["feature", "mean absolute attribution [95 % CI]", "mean signed"], rows)]


def word_blocks(words: dict[str, Any]) -> list[Block]:
    rows = [[r["feature"], f"{r['mean_abs']:.3f} [{r['lower']:.3f}, {r['upper']:.3f}]", f"{r['mean_signed']:+.3f}",
             str(r["reports"])] for r in words["ranking"]]
    shown = ("every word (`--with-ids`)" if words["every_word"] else
             f"words in at least {words['min_reports']} reports and {words['min_share']:.0%} of them, without digits "
             "(names, dates and identifiers stay out; `--with-ids` shows every word)")
    return [("h2", f"Which report words drive the {words['what']}"),
            ("p", f"Occlusion over {words['reports']} subjects with a report: each word is removed from the subject's "
                  f"report and the {words['what']} recomputed, everything else unchanged; a word's effect is the score "
                  f"with it minus without it (+ raises the score). Mean |effect| over the reports holding the word, with "
                  f"a 95 % bootstrap interval. Shown: {shown}."),
            ("img", words["figure"], "report words by occlusion"),
            ("table", ["word", "mean absolute effect [95 % CI]", "mean signed", "reports"], rows)]


def gallery_blocks(gallery: dict[str, Any]) -> list[Block]:
    blocks: list[Block] = [("h2", gallery["title"]), ("p", gallery["text"])]
    for entry in gallery["subjects"]:
        blocks.append(("img", entry["figure"], entry["caption"]))
    return blocks


def sections(analysis: dict[str, Any]) -> list[Block]:
    """Every block of the report, in reading order."""
    blocks: list[Block] = [("h1", f"Explaining this {analysis['kind']} run"),
                           ("p", f"{analysis['n']} subjects of the cohort given to `strokessl explain`; wall-clock "
                                 f"{analysis.get('seconds', 0):.0f} s.")]
    blocks += space_blocks(analysis["space"])
    if analysis.get("projection_figure"):
        blocks += [("h2", "The embedding space in two dimensions"),
                   ("p", "Each modality's embedding by PCA and t-SNE, coloured by the outcome (grey: unlabeled)."),
                   ("img", analysis["projection_figure"], "PCA and t-SNE of the embeddings")]
    blocks += probe_blocks(analysis)
    if analysis.get("attribution"):
        blocks += attribution_blocks(analysis["attribution"])
    if analysis.get("attribution_second"):
        blocks += attribution_blocks(analysis["attribution_second"], second=True)
    if analysis.get("words"):
        blocks += word_blocks(analysis["words"])
    if analysis.get("gallery"):
        blocks += gallery_blocks(analysis["gallery"])
    return blocks


def markdown(blocks: list[Block]) -> str:
    lines: list[str] = []
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2"):
            lines += [("# " if kind == "h1" else "## ") + block[1], ""]
        elif kind == "p":
            lines += [block[1], ""]
        elif kind == "table":
            header, rows = block[1], block[2]
            lines += ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
            lines += ["| " + " | ".join(row) + " |" for row in rows] + [""]
        elif kind == "img":
            lines += [f"![{block[2]}]({block[1]})", ""]
    return "\n".join(lines)


_STYLE = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
          "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;font-size:90%}"
          "th{background:#f3f3f3}img{max-width:100%;margin:0.5em 0}figcaption{font-size:85%;color:#555}")


def html(blocks: list[Block], folder: Path | None = None) -> str:
    """The blocks as one HTML page; pictures found under ``folder`` are inlined (base64 PNG), so the
    page is a single file to share, others are linked by their relative path."""
    escape = html_escape.escape
    title = next((b[1] for b in blocks if b[0] == "h1"), "explain")
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{escape(title)}</title>"
             f"<style>{_STYLE}</style></head><body>"]
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2", "p"):
            parts.append(f"<{kind}>{escape(block[1])}</{kind}>")
        elif kind == "table":
            head = "".join(f"<th>{escape(h)}</th>" for h in block[1])
            body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in block[2])
            parts.append(f"<table><tr>{head}</tr>{body}</table>")
        elif kind == "img":
            source = escape(block[1])
            if folder is not None and (folder / block[1]).is_file():
                source = "data:image/png;base64," + base64.b64encode((folder / block[1]).read_bytes()).decode("ascii")
            parts.append(f"<figure><img src='{source}' alt='{escape(block[2])}'>"
                         f"<figcaption>{escape(block[2])}</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(run_dir: str | Path, analysis: dict[str, Any]) -> Path:
    """``RUN/report/explain.json``, ``explain.md`` and ``explain.html``; returns the Markdown path."""
    report = run_paths(run_dir).report
    blocks = sections(analysis)
    atomic_write_json(report / "explain.json", analysis)
    atomic_write_text(report / "explain.md", markdown(blocks) + "\n")
    atomic_write_text(report / "explain.html", html(blocks, report) + "\n")
    return report / "explain.md"
