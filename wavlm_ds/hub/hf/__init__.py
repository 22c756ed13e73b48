"""transformers remote code, copied next to the weights by `tools/export.py hf`.

Nothing in this folder may import wavlm_ds: the files run in environments without it."""
