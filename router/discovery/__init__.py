"""Discovery: `<deploymentId>.<namespace>` to backend addresses, cached, bounded and checked."""
