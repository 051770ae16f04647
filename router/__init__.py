"""WhaleRay Router: a Python-native reverse proxy for /services/<deploymentId>/ on AWS ECS."""

__version__ = "0.1.0"
