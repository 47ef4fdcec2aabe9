"""``nbdurable serve``: an authenticated HTTP API (Starlette on uvicorn) over a store's runs, events and
approvals, a live dashboard, and the engine that resumes suspended runs, running for the server's lifetime.

``app.py`` assembles the application; ``auth.py`` the token; ``api.py`` and ``state.py`` the endpoints and
what they do; ``body.py`` request bodies; ``launch.py`` the runs the server starts; ``stream.py`` the live
stream; ``dashboard.py`` the page; ``engine.py`` the engine; ``orchestration.py`` schedules and triggers.
"""
