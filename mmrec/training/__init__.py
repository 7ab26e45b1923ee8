"""Training (`mmrec train`, `accelerate launch train.py`) and the frozen-encoder feature cache (`mmrec cache`)."""
