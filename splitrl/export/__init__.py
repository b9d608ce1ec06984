"""`splitrl-export`: a trained HPPO run as an ONNX policy (torch twin, metadata, parity check)."""
