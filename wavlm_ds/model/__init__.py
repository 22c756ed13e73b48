"""The WavLM-Large+ encoder. Imports only torch and wavlm_ds.ops (plus the config type)."""
from wavlm_ds.model.encoder import EncoderOutput, WavLMEncoder
from wavlm_ds.model.frontend import encoder_lengths, stack_frames

__all__ = ["EncoderOutput", "WavLMEncoder", "encoder_lengths", "stack_frames"]
