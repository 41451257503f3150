"""The embedded "arith" world: a tiny, download-free setting for tutord's whole pipeline.

It provides a character-level tokenizer (`tokenizer`), a small Llama (`model`), task
families with prompts, reference answers and a verifier (`tasks`, `verify`), a stable
train/held-out split (`split`), a release schedule of families over cycles (`schedule`),
interaction logs in the ingest format (`logs`), a plain-text pretraining corpus (`corpus`),
the cached CPU pretraining of a base model (`pretrain.bootstrap`), that model as shipped in
`world/base/` and checked by hash (`shipped`), and quick accuracy probes (`probe`). It does
not touch the database, the adapter registry or the daemon. The package imports nothing
itself: import the submodule you need (`world.tasks`, `world.pretrain`, ...), so
that torch loads only where the model is built or trained.
"""

from __future__ import annotations
