"""Understanding a run: embedding export (``embed``) and embedding-space analysis (``analysis``).

``strokessl embed RUN --cohort C --out DIR`` and ``strokessl explain RUN --cohort C`` read a
pretraining run (its encoders and projection heads: the shared embedding space) or a fine-tuning
run (its first fold model's encoders, identical across folds when the encoders were frozen).
Captum attributions come next (issue 10, items 3-6).
"""
