"""faust.Record models of K2's events."""

from k2.models.market import ReferenceData, Reject

__all__ = ["ReferenceData", "Reject"]
