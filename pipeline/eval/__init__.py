"""Evaluation of exported SISTA encoders: zero-shot, retrieval, linear probe, grounding."""
