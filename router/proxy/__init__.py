"""The data plane: client protocol, routing, header rules, upstream protocol and connection pool."""
