"""clipood: CLIP out-of-distribution detection methods behind one adapter interface."""
__version__ = "0.1.0"
