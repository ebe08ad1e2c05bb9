"""The ASGI entry point (uvicorn): web pages, the API and the streaming gateway.

Under ASGI every request would otherwise open its own database connection (persistent
connections are unsafe with async views), so this process uses a psycopg connection pool unless
DATABASE_POOL_MAX_SIZE says otherwise (0 turns it off).
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "codingplans.settings")
os.environ.setdefault("DATABASE_POOL_MAX_SIZE", "20")
application = get_asgi_application()
