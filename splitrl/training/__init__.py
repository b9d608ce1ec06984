"""The host loop of training: typed run configs, metric logging, orbax checkpoints, device sharding, run
directories, and `splitrl-train` itself (`train`)."""
