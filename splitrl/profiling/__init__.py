"""Measuring profiles on a real model on this host (PyTorch): per-unit cost (`cost`), PPL degradation of
damaged boundary activations (`ppl`), their plot (`plot`), the corpus and resumable cells; the command
is `splitrl-profiles measure` (`cli`). Writes the tables `splitrl.profiles` validates and loads."""
