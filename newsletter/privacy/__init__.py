"""Privacy over the whole life of an address: retention (the daily purge) and erasure that
keeps the sends' totals. The suppression list and the proof of consent are the
subscriptions package's (suppression.py, consent.py); per-send totals the delivery
package's (totals.py).
"""

from __future__ import annotations

from newsletter.privacy.erasure import erase_person
from newsletter.privacy.retention import PurgeReport, current_policy, preview, purge

__all__ = ["PurgeReport", "current_policy", "erase_person", "preview", "purge"]
