"""Efficiency: cost measurement (FLOPs, time, memory; `measure`) and the efficiency record and its table
(`record`)."""
