"""Training and evaluation data: audio, crops, samplers and sharded readers."""
