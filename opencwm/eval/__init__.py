"""Evaluation: world-modeling metrics on traces (next frame, rollout, output prediction), CruxEval-O."""
