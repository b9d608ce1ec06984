"""Real split inference of a real model between an edge process and a cloud process: the wire protocol
(`protocol`, `wire`), the split model (`split_model`), the server (`cloud`) and client (`edge`), the ONNX
policy at run time (`policy`), a fault-injecting link proxy (`faults`) and sim-to-real measurement
(`measure`)."""
