"""A shop API shaped like real FastAPI services (routers with prefixes and dependencies, nested
routers, CORS/TrustedHost/GZip middleware, an auth dependency, a mounted sub-app), whose sick routes
block the event loop from inside included routers. Lines the tests look for carry a ``# mark:``."""
