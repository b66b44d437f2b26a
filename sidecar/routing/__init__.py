"""Routing: typed rules (conf/routes.yaml) and the pure `route()` function that applies them."""

from sidecar.routing.route import (
    ConditionResult,
    Predicate,
    RouteDecision,
    RuleTrace,
    explain,
    route,
    validate_routes,
)
from sidecar.routing.rules import IntRange, Match, Route

__all__ = [
    "ConditionResult",
    "IntRange",
    "Match",
    "Predicate",
    "Route",
    "RouteDecision",
    "RuleTrace",
    "explain",
    "route",
    "validate_routes",
]
