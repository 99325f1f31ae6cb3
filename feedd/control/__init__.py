"""The control plane: the service's task tree, reload, state, status, metrics."""
