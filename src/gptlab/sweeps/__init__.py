"""Sweeps: many training runs over one search space (an Optuna study), compared in one table.

space.py    the --param specs and their checks; study.py    the study, its trials and processes;
summary.py  the table, pictures and train command (also `gptlab compare` for any runs)
"""
