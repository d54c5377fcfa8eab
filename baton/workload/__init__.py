"""Drill traffic Baton controls: a sequenced producer, consumer groups that record what they
processed, and a scan of what is stored where. The checker (baton.drill.checker) judges them."""

from baton.workload.consumer import GroupWorker, subscription
from baton.workload.producer import SequencedProducer
from baton.workload.records import AckedWrite, Processed, StoredCopy

__all__ = ["AckedWrite", "GroupWorker", "Processed", "SequencedProducer", "StoredCopy", "subscription"]
