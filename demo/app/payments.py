"""The payment provider client.

The provider is simulated: a charge is one round trip of 20 ms plus an
exponential tail, and the provider declines a small share of charges
(`Declined`, which the shop answers with 502). That share is the shop's
normal error rate, the level pushguard compares every push against.
"""

from __future__ import annotations

import random
import time

ROUND_TRIP = 0.020  # seconds, the fastest answer of the provider
TAIL = 0.025  # seconds, the mean of the slow part of an answer
DECLINE_SHARE = 0.03  # the provider fails this share of charges (declines, timeouts)


class Declined(Exception):
    """The provider refused the charge."""


def charge(cents: int) -> str:
    """Charge `cents`; the provider's charge id, or Declined."""
    time.sleep(min(ROUND_TRIP + random.expovariate(1.0 / TAIL), 0.5))
    if random.random() < DECLINE_SHARE:
        raise Declined("card declined by the payment provider")
    return f"ch_{random.getrandbits(48):012x}"
