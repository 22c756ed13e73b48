"""wavlm_ds: DeepSpeed pretraining of the WavLM-Large+ speech encoder."""
