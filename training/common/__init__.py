"""Helpers every step uses, and no step owns: binary metrics with bootstrap CIs (`metrics`), report figures
(`plots`), the training device and bf16 choice (`device`), the git commit a model records (`provenance`)
and the shared on-disk cache (`cache`). Nothing here imports a step."""
