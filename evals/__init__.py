"""evals: the lm-eval regression gate, drift measurement and drift reports.

- `evals.tasks`: lm-eval task folders from the arith world's held-out prompts (plus user
  task folders), with a content hash per suite and per task.
- `evals.run`: runs a suite through `lm_eval.simple_evaluate` (hf or vLLM backend, LoRA
  adapters) into typed per-item results.
- `evals.evaluation`: those results (`Evaluation`, `TaskScore`) and `EvalSettings`.
- `evals.cache`: the JSON cache of each task's results and the hashes that key it.
- `evals.gate`: the paired, per-task promotion rule (bootstrap interval, exact McNemar).
- `evals.drift`: KL divergence between policies and drift snapshots per version.
- `evals.drift_report` / `evals.drift_charts`: the HTML/JSON drift report and its charts.

It takes plain inputs (paths, lists) and returns frozen records; it never imports `daemon/`
and never opens a database session. Importing this package imports nothing heavy.
"""

from __future__ import annotations
