"""Erasure that keeps the sends' figures: the person's delivery rows go into the totals first."""

from __future__ import annotations

from newsletter.delivery import totals
from newsletter.models import Delivery, Subscriber
from newsletter.subscriptions import data


def erase_person(subscriber: Subscriber, *, source: str) -> None:
    """Erase the person (subscriptions.erase_subscriber: everything about them goes, the keyed
    hash of the address joins the suppression list); the sends they got keep their counts."""
    totals.roll_up_deliveries(Delivery.subscriber_id == subscriber.id)
    data.erase_subscriber(subscriber, source=source)
