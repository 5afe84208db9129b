"""faust.Record models of K2's events."""

from k2.models.market import Quote, ReferenceData, Reject, Trade

__all__ = ["Quote", "ReferenceData", "Reject", "Trade"]
