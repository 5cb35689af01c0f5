"""Evaluation: the benchmark a run evaluates on (`benchmark`), splits and scoring one split (`protocol`), every
scored method on every split (`runner`) and the tables and plots (`report`)."""
