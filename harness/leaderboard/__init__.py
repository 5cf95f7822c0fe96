"""Leaderboards, regression tracking and reports, rebuilt from run folders (never hand-edited).

- :mod:`harness.leaderboard.table`: one row per (model, language) from ``<eval>/<lang>/metrics.json`` and
  ``annotations.json``, the comparability key, the Table-2-shaped view and its CSV / Markdown / HTML files, the
  paper's published rows, AlpacaEval-format CSVs, ``history.jsonl``.
- :mod:`harness.leaderboard.compare`: paired bootstrap of the WR and LC change between two models per language,
  Benjamini-Hochberg across languages, improved / regressed / within noise.
- :mod:`harness.leaderboard.report`: plots and the HTML report of one run.

This layer sits above the loop: it reads run folders and writes ``leaderboards/`` (or ``<run>/report``), and
nothing in the loop imports it.
"""
