"""The web entry points: the public pages, the admin, the JSON API and the webhooks (blueprints)."""
