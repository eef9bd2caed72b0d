"""Diagnosis from the files alone: `inspect` (what a checkpoint holds) and `doctor` (what is wrong with it).

Headers only, never tensor data beyond a few norms: a 27B checkpoint in well under a second, torch-free.
"""
