"""The real language model in PyTorch, shared by profiling and the runtime: offline loading (`model`), a
decoder layer cut into placement units (`units`) and what crossing the boundary does to a tensor (`damage`).
Only this package, `profiling`, `runtime` and `export` import torch."""
