"""Data: shard index, audio decoding, the webdataset-format training stream, mixing."""
from wavlm_ds.data.augment import mix_utterances
from wavlm_ds.data.loader import EvalLoader, TrainLoader

__all__ = ["EvalLoader", "TrainLoader", "mix_utterances"]
