"""Admins: accounts and roles, API tokens, and the audit log of what they did."""
