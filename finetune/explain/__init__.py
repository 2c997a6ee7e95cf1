"""Understanding a run: ``strokessl embed`` and ``strokessl explain``.

``embed`` (embedding export) → ``analysis`` (what the embedding space holds) → ``scorer`` (what is
explained: a fine-tuning run's fold-ensemble logit or a pretraining run's image–record similarity)
→ ``attribution`` (Integrated Gradients of the clinical features) and ``saliency`` (occlusion,
Grad-CAM, slice attributions; maps back on the subject's own grid) → ``figures`` and ``report``
(``report/explain.md`` / ``.html``); ``run`` ties the steps together for the CLI.
"""
