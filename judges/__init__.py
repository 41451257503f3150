"""judges: scoring answers and turning scores into training data.

Verifiers (pure functions), the code sandbox, LLM-as-a-judge, and synthesis of SFT
examples and preference pairs. Every scorer has one call shape:
`(prompts, completions, **columns) -> list[float | None]`, None meaning "abstain".
It never opens a database session and never imports `daemon/`.
"""
