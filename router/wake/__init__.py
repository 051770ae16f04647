"""Waking sleeping deployments on their first request: the catalogue of deployments that may wake, the waker that
holds their requests while ECS starts a task, and the idle report that lets them go back to sleep."""
