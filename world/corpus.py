"""The pretraining corpus: an endless, seeded stream of plain arithmetic text.

Lines are equations ("3+4=7"), spelled-out facts ("3 plus 4 is 7.", "The sum of 3 and 4 is
7."), bare questions in the tasks' phrasings ("Compute 3 plus 4.") and questions followed by
their equation ("Compute 3 plus 4. 3+4=7"), questions only from the train side of the
split, comparisons of two numbers ("32 vs 32: same.", "32 vs 23: different."), and
answers checked ("Compute 3 plus 4. The answer is 9. 3+4=7 vs 9: different."). They
are packed into fixed-length blocks that start with `<|bos|>`, each line ended by the
tokenizer's end-of-text token (`<|end|>`) and a newline, as a real base model has
seen its end-of-text token close documents. There is no chat markup, so a model pretrained
on it knows the world's facts and text but has never answered in a chat: its chat answers
score near 0 until tutord's cycles teach it. It does not train anything.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch.utils.data import IterableDataset
from transformers import PreTrainedTokenizerBase

from world.config import WorldConfig
from world.tasks import DIFFERENT_BY, Problem, TaskFamily, compare_line, families


@dataclass(frozen=True)
class CorpusConfig:
    """What the pretraining text is made of."""

    families: tuple[str, ...] = ("add", "sub", "mul")
    equation_weight: float = 0.25
    """Share of lines like '3+4=7'."""
    statement_weight: float = 0.15
    """Share of lines like '3 plus 4 is 7.' or '3 + 4 = 7'."""
    question_weight: float = 0.05
    """Share of bare questions (no answer), train split only."""
    worked_weight: float = 0.3
    """Share of questions (train split) followed on the same line by their equation, e.g.
    'Compute 3 plus 4. 3+4=7': text in which the operands of a question reappear, so the
    model learns to copy them (without such lines, SFT cannot teach a model this small to
    read the operands of a chat question in a few hundred steps: measured 0.03 -> 0.03
    held-out add after one SFT cycle, against 0.03 -> 0.85 with them)."""
    compare_weight: float = 0.15
    """Share of comparisons of two numbers, equal half the time: '32 vs 32: same.', '32 vs
    31: different.' (the other number near, digits swapped, or any). A real base model can
    tell two numbers apart; the world's self-judge ends its reasoning with such a comparison
    of the right result and the answer's (`world.pack`). Without these lines its
    Correct/Wrong followed its own, correct, comparison no better than chance (0.56-0.60
    teacher-forced, after 300 SFT steps on up to 1,000 judge examples; measured
    2026-12-04), while 900 steps of these lines alone taught the base 0.99."""
    check_weight: float = 0.1
    """Share of questions (train split) followed by an answer, right half the time, and
    then the question's equation compared with it: 'Compute 3 plus 4. The answer is 9.
    3+4=7 vs 9: different.' Text in which a question's operands are copied past an answer
    in between, as a checker (and the world's self-judge, `world.pack`) must. Without
    them the judge quoted the answer right but wrote another question's equation
    ('Said 7. 10-7=3' for "From 16, subtract 9."; `bench/judge_decision.py`,
    2026-12-05)."""
    block_size: int = 192
    """Tokens per training sequence, `<|bos|>` included. As long as the longest judge chat
    (rubric prompt, then verdict: up to about 150 tokens), so that every position and
    distance the self-judge uses was seen in pretraining (at 64, judge chats ran far past
    what the model had ever attended over)."""
    end_of_text: bool = True
    """End each line with the tokenizer's end-of-text token. Without it that token's
    embedding is never trained: it stays in the cluster of unused tokens' embeddings, which
    a LoRA cannot move, so no amount of SFT raised its probability after an answer above
    0.31, and sampled answers trailed stray characters ('6+17=23x.'; measured on the base
    shipped before 2026-12-04)."""

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["families"] = list(self.families)
        return out


class CorpusLines:
    """Draws corpus lines from a seeded generator."""

    def __init__(self, corpus: CorpusConfig, world: WorldConfig, seed: int) -> None:
        known = families(world)
        self.families: list[TaskFamily] = [known[name] for name in corpus.families]
        self.questions: dict[str, list[Problem]] = {
            f.name: f.all_problems("train") for f in self.families
        }
        self.kinds = ("equation", "statement", "question", "worked", "compare", "check")
        self.weights = (
            corpus.equation_weight,
            corpus.statement_weight,
            corpus.question_weight,
            corpus.worked_weight,
            corpus.compare_weight,
            corpus.check_weight,
        )
        self.rng = random.Random(f"corpus:{seed}")

    def line(self) -> str:
        rng = self.rng
        family = rng.choice(self.families)
        kind = rng.choices(self.kinds, self.weights)[0]
        if kind == "question":
            return rng.choice(self.questions[family.name]).prompt
        if kind == "worked":
            problem = rng.choice(self.questions[family.name])
            return f"{problem.prompt} {problem.worked}"
        if kind == "compare":
            return self.comparison(family)
        if kind == "check":
            return self.check(family)
        a, b = rng.choice(family.operand_pairs)
        form = 0 if kind == "equation" else rng.randrange(1, len(family.statements))
        return family.statement(a, b, form)

    def comparison(self, family: TaskFamily) -> str:
        """Two results of `family` compared: the same, near, digits swapped, or another."""
        rng = self.rng
        a, b = rng.choice(family.operand_pairs)
        x = family.op(a, b)
        how = rng.randrange(4)
        if rng.random() < 0.5:
            y = x
        elif how == 0 and abs(x) > 9 and str(abs(x))[::-1] != str(abs(x)):
            y = int(str(abs(x))[::-1]) * (1 if x >= 0 else -1)
        elif how == 1:
            y = family.op(*rng.choice(family.operand_pairs))
        else:
            y = x + rng.choice(DIFFERENT_BY)
        return compare_line(x, y)

    def check(self, family: TaskFamily) -> str:
        """A question, an answer (right half the time, else off by a little), and the
        question's equation compared with the answer."""
        rng = self.rng
        problem = rng.choice(self.questions[family.name])
        x = family.op(problem.a, problem.b)
        y = x if rng.random() < 0.5 else x + rng.choice(DIFFERENT_BY)
        operation = f"{problem.a}{family.symbol}{problem.b}"
        said = rng.choice((f"The answer is {y}.", f"{operation}={y}."))
        return f"{problem.prompt} {said} {operation}={compare_line(x, y)}"

    def __iter__(self) -> Iterator[str]:
        while True:
            yield self.line()


def sample_text(
    n_lines: int,
    seed: int = 0,
    corpus: CorpusConfig | None = None,
    world: WorldConfig | None = None,
) -> str:
    """`n_lines` lines of corpus text, newline-joined (for inspection and tests)."""
    lines = CorpusLines(corpus or CorpusConfig(), world or WorldConfig(), seed)
    return "\n".join(lines.line() for _ in range(n_lines))


class CorpusStream(IterableDataset):
    """Endless `{"input_ids", "attention_mask", "labels"}` blocks of `block_size` tokens.

    Each block is `<|bos|>` followed by whole lines, each ended by the end-of-text token
    when `end_of_text` (the last one cut at the block's end). The same seed gives the same
    stream; each new iteration starts it afresh.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        seed: int,
        corpus: CorpusConfig | None = None,
        world: WorldConfig | None = None,
    ) -> None:
        super().__init__()
        self.tokenizer = tokenizer
        self.seed = seed
        self.corpus = corpus or CorpusConfig()
        self.world = world or WorldConfig()

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        lines = CorpusLines(self.corpus, self.world, self.seed)
        size = self.corpus.block_size
        end = (self.tokenizer.eos_token or "") if self.corpus.end_of_text else ""
        start = self.tokenizer("", add_special_tokens=True)["input_ids"]  # <|bos|>
        while True:
            ids = list(start)
            while len(ids) < size:
                line = lines.line() + end + "\n"
                ids += self.tokenizer(line, add_special_tokens=False)["input_ids"]
            ids = ids[:size]
            input_ids = torch.tensor(ids, dtype=torch.long)
            yield {
                "input_ids": input_ids,
                "attention_mask": torch.ones_like(input_ids),
                "labels": input_ids.clone(),
            }
