"""The send engine: the per-recipient ledger, prepared messages, SMTP transport, rate limit,
the sender loop and the send worker process. Flask-free: it imports nothing else of the
service, so a send worker runs with only its database driver.
"""
