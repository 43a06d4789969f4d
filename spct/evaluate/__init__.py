"""Evaluation: `python -m spct.evaluate` (the command: spct.evaluate.command) and the evaluation
run it shares with the eval phase of `spct.train` (spct.evaluate.tables: sampling orders,
scoring by each benchmark's rule, tables, plots, saved generations; no Ray).

Importing this package imports neither, so the eval phase's recipe reads the tables without the
command."""
