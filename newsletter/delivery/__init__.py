"""Delivery: sending a digest from the per-recipient ledger, its progress, pause, resume
and cancel, summaries and bounces.
"""

from __future__ import annotations

from newsletter.delivery.background import (
    launch_send,
    resume_send,
    wait_for_sends,
)
from newsletter.delivery.bounces import (
    InvalidPayload,
    parse_generic,
    parse_ses,
    record_bounce,
    record_reports,
)
from newsletter.delivery.control import (
    cancel_send,
    finish_send,
    pause_send,
    set_send_status,
)
from newsletter.delivery.pinning import (
    pin_rest,
    pinning_done,
    start_send,
)
from newsletter.delivery.progress import (
    send_progress,
)
from newsletter.delivery.recovery import (
    recover_stale,
    resume_interrupted,
)
from newsletter.delivery.runs import (
    NotPickedUp,
    finish_interrupted_sends,
    plan_send,
    send_now,
    wait_for_workers,
    workers_send,
)
from newsletter.delivery.sample import (
    send_test,
)
from newsletter.delivery.send import (
    app_ledger,
    open_ranges,
    send_batch,
    send_digest,
    stop_all_sends,
)
from newsletter.delivery.workers import (
    worker_jobs,
)

__all__ = [
    "InvalidPayload",
    "NotPickedUp",
    "app_ledger",
    "cancel_send",
    "finish_interrupted_sends",
    "finish_send",
    "launch_send",
    "open_ranges",
    "parse_generic",
    "parse_ses",
    "pause_send",
    "pin_rest",
    "pinning_done",
    "plan_send",
    "record_bounce",
    "record_reports",
    "recover_stale",
    "resume_interrupted",
    "resume_send",
    "send_batch",
    "send_digest",
    "send_now",
    "send_progress",
    "send_test",
    "set_send_status",
    "start_send",
    "stop_all_sends",
    "wait_for_sends",
    "wait_for_workers",
    "worker_jobs",
    "workers_send",
]
