"""Evaluation: TREC runs, metrics (ir-measures / trec_eval), baseline comparison, exports, regressions, plots."""
