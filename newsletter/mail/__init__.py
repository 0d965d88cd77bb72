"""The app's side of email: composing messages from templates (headers, DKIM), each subscriber's
personal links, and the durable outbox of single emails.
"""
