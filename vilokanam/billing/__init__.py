"""Pay-per-second billing: the fetch tracker, the double-entry ledger, the flushing service."""

from vilokanam.billing.ledger import Ledger, WatchCharge, split_fee
from vilokanam.billing.service import BillingService
from vilokanam.billing.tracker import Due, Fetch, Tracker

__all__ = ["BillingService", "Due", "Fetch", "Ledger", "Tracker", "WatchCharge", "split_fee"]
