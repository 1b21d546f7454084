"""Evaluation: world-modeling figures on traces (next frame, rollout, output prediction: ``trace_eval``), CruxEval-O
(``cruxeval``), random-token copying (``copying``) and learning-curve points during training (``curve``)."""
