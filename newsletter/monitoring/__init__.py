"""What the operator sees: the scheduler's heartbeat and last actions, the outage emails,
readiness checks and Prometheus metrics. Structured logs: newsletter/engine/logformat.py;
counters: newsletter/engine/counters.py."""
