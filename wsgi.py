"""WSGI entry point: `gunicorn wsgi:app`, `flask --app wsgi …`."""

from newsletter import create_app

app = create_app()
