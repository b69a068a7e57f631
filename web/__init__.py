"""The web page and JSON API of `koclip-search serve` (FastAPI), over search.Searcher.

    from web import create_app
    app = create_app("~/Pictures")  # then: uvicorn.run(app, host="127.0.0.1", port=8000)

See web/app.py for the routes and web/backend.py for what they do.
"""

from web.app import create_app

__all__ = ["create_app"]
