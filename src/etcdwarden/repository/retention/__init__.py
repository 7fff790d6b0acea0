"""Retention: pure policies over catalog entries and a clock, one module per policy."""

from etcdwarden.repository.retention.base import GIB, Item, parse_duration
from etcdwarden.repository.retention.floor import MinKeep
from etcdwarden.repository.retention.incomplete import IncompleteCleanup
from etcdwarden.repository.retention.number import RetentionNumber
from etcdwarden.repository.retention.plan import RetentionConfig, RetentionPlan, plan_retention
from etcdwarden.repository.retention.proven import KeepProven
from etcdwarden.repository.retention.size import RetentionSize
from etcdwarden.repository.retention.tiered import Tiered
from etcdwarden.repository.retention.within import KeepWithin

__all__ = ["GIB", "IncompleteCleanup", "Item", "KeepProven", "KeepWithin", "MinKeep", "RetentionConfig",
           "RetentionNumber", "RetentionPlan", "RetentionSize", "Tiered", "parse_duration", "plan_retention"]
