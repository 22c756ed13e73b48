"""Data: shard index, audio decoding, the webdataset-format (tar) training stream, mixing."""
from wavlm_ds.data.augment import mix_utterances
from wavlm_ds.data.evaluation import EvalLoader
from wavlm_ds.data.loader import DataSourceError, TrainLoader

__all__ = ["DataSourceError", "EvalLoader", "TrainLoader", "mix_utterances"]
