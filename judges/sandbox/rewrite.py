"""Test statements rewritten so that the parent, not the program, decides each assertion.

Each `assert` becomes `_tutord_check(id, thunks)`: its boolean, comparison and arithmetic
structure (`and`/`or`/`not`, comparisons, + - * / // %, abs) is kept by the parent as a
plan, and only the other operands (calls, names, subscripts...) go to the worker, as
lambdas it evaluates and reports. Literal operands (`== 5`) never leave the parent, so the
program cannot read the expected values from the tests. Every other comparison in the
tests becomes `_tutord_compare`, which compares plain copies, so a program's `__eq__`,
`__lt__` or `__contains__` never decides anything.

This module only parses and rewrites: it runs nothing and evaluates no plan (`judge`).
"""

from __future__ import annotations

import ast
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

_ARITH = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.FloorDiv: "//"}
_ARITH[ast.Mod] = "%"
_CMP = {ast.Eq: "==", ast.NotEq: "!=", ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">="}
_CMP.update({ast.In: "in", ast.NotIn: "not in", ast.Is: "is", ast.IsNot: "is not"})
_SINGLETONS = (None, True, False)
_CONSTANT_NODES = (ast.Constant, ast.BinOp, ast.UnaryOp, ast.Tuple, ast.List, ast.Set)
_CONSTANT_NODES += (ast.Dict, ast.operator, ast.unaryop, ast.expr_context)


@dataclass(frozen=True)
class _Suite:
    """Test statements to run, and per assertion its plan, literal leaves and source."""

    statements: list[str]
    plans: dict[str, list[Any]]
    literals: list[dict[int, Any]]
    sources: list[str]


def _is_constant(node: ast.expr) -> bool:
    return all(isinstance(n, _CONSTANT_NODES) for n in ast.walk(node))


def _literal(node: ast.expr) -> tuple[bool, Any]:
    try:
        return True, ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False, None


def _is_singleton(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) and any(node.value is s for s in _SINGLETONS)


def _identity_only(node: ast.Compare) -> bool:
    """Whether the comparison has an `is` that is not against None/True/False (so it is
    about objects, and is evaluated whole in the worker: `is` cannot be overloaded)."""
    operands = [node.left, *node.comparators]
    for i, op in enumerate(node.ops):
        if isinstance(op, ast.Is | ast.IsNot):
            pair = operands[i : i + 2]
            if not any(_is_singleton(n) for n in pair):
                return True
    return False


def _plan(node: ast.expr, leaves: list[ast.expr]) -> list[Any]:
    """The boolean, comparison and arithmetic structure of an assertion, evaluated by
    `_evaluate`; everything else (calls, names, subscripts...) is a leaf."""
    if isinstance(node, ast.BoolOp):
        kind = "and" if isinstance(node.op, ast.And) else "or"
        return [kind, [_plan(value, leaves) for value in node.values]]
    if isinstance(node, ast.UnaryOp) and not _is_constant(node):
        kind = {ast.Not: "not", ast.USub: "neg", ast.UAdd: "pos"}.get(type(node.op))
        if kind:
            return [kind, _plan(node.operand, leaves)]
    if isinstance(node, ast.BinOp) and _is_arithmetic(node):
        op = _ARITH[type(node.op)]
        return ["bin", op, _plan(node.left, leaves), _plan(node.right, leaves)]
    if isinstance(node, ast.Call) and _is_abs(node):
        return ["abs", _plan(node.args[0], leaves)]
    if isinstance(node, ast.Compare) and not _identity_only(node):
        operands = [_plan(n, leaves) for n in [node.left, *node.comparators]]
        return ["cmp", [_CMP[type(op)] for op in node.ops], operands]
    leaves.append(node)
    return ["leaf", len(leaves) - 1]


def _is_arithmetic(node: ast.BinOp) -> bool:
    """+ - * / // % on a value the program computed (`"..." % x` formatting is a leaf)."""
    if type(node.op) not in _ARITH or _is_constant(node):
        return False
    return not (isinstance(node.op, ast.Mod) and isinstance(node.left, ast.Constant))


def _is_abs(node: ast.Call) -> bool:
    return (
        isinstance(node.func, ast.Name)
        and node.func.id == "abs"
        and len(node.args) == 1
        and not node.keywords
        and not isinstance(node.args[0], ast.Starred)
    )


def _thunks(nodes: Sequence[ast.expr | None]) -> ast.Tuple:
    """`(lambda: node, ...)`; None stays None (a literal the worker is not given)."""
    no_args = ast.arguments(
        posonlyargs=[], args=[], vararg=None, kwonlyargs=[], kw_defaults=[], kwarg=None, defaults=[]
    )
    thunks = [ast.Constant(None) if n is None else ast.Lambda(no_args, n) for n in nodes]
    return ast.Tuple(thunks, ast.Load())


def _call(name: str, *args: ast.expr) -> ast.Call:
    return ast.Call(ast.Name(name, ast.Load()), list(args), [])


class _Rewriter(ast.NodeTransformer):
    """Rewrites `assert` into `_tutord_check` and comparisons into `_tutord_compare`."""

    def __init__(self) -> None:
        self.plans: dict[str, list[Any]] = {}
        self.literals: list[dict[int, Any]] = []
        self.sources: list[str] = []

    def visit_Assert(self, node: ast.Assert) -> ast.stmt:
        leaves: list[ast.expr] = []
        cid = len(self.sources)
        self.plans[str(cid)] = _plan(node.test, leaves)
        literals = {i: _literal(leaf) for i, leaf in enumerate(leaves)}
        self.literals.append({i: value for i, (ok, value) in literals.items() if ok})
        self.sources.append(ast.unparse(node.test))
        shipped = [
            None if i in self.literals[-1] else self.visit(leaf) for i, leaf in enumerate(leaves)
        ]
        thunks = _thunks(shipped)
        return ast.copy_location(ast.Expr(_call("_tutord_check", ast.Constant(cid), thunks)), node)

    def visit_Compare(self, node: ast.Compare) -> ast.expr:
        self.generic_visit(node)
        if any(isinstance(op, ast.Is | ast.IsNot) for op in node.ops):
            return node
        ops = ast.Tuple([ast.Constant(_CMP[type(op)]) for op in node.ops], ast.Load())
        thunks = _thunks([node.left, *node.comparators])
        return ast.copy_location(_call("_tutord_compare", ops, thunks), node)


def _prepare_tests(tests: str) -> _Suite:
    """Parse and rewrite test statements (raises SyntaxError)."""
    tree = ast.parse(textwrap.dedent(tests))
    rewriter = _Rewriter()
    tree = ast.fix_missing_locations(rewriter.visit(tree))
    statements = [ast.unparse(statement) for statement in tree.body]
    return _Suite(statements, rewriter.plans, rewriter.literals, rewriter.sources)
