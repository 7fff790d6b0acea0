"""Rule-based rolling defragmentation with leader handling and NOSPACE alarm clearing.

The CLI (``etcdwarden defrag``) and the daemon both call :func:`rolling_defrag`.
"""

from __future__ import annotations

from etcdwarden.defrag.report import DefragReport, MemberResult, Outcome
from etcdwarden.defrag.rules import AUTO_RULE, Rule, RuleEvalError, RuleSyntaxError, compile_rule
from etcdwarden.defrag.run import DefragEvent, DefragOptions, rolling_defrag

__all__ = [
    "AUTO_RULE",
    "DefragEvent",
    "DefragOptions",
    "DefragReport",
    "MemberResult",
    "Outcome",
    "Rule",
    "RuleEvalError",
    "RuleSyntaxError",
    "compile_rule",
    "rolling_defrag",
]
