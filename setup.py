"""Packaging for wavlm_ds: DeepSpeed pretraining of the WavLM-Large+ speech encoder."""
from setuptools import find_packages, setup

# torch and torchaudio must be a matching pair; DeepSpeed 0.19.8 is the release this
# project's checkpoint and overflow handling were written against (see README).
CORE = [
    "torch==2.11.*",
    "torchaudio==2.11.*",
    "deepspeed==0.19.8",
    "fsspec>=2023.1",  # shard specs and index.json as URLs (wavlm_ds/data/io.py)
    "braceexpand>=0.1.7",  # shard patterns (was pulled in by webdataset, which nothing used)
    "soundfile>=0.12",
    "numpy>=1.26",
    "pyyaml>=6",
    "tqdm>=4.66",
    "tensorboard>=2.15",  # DeepSpeed's monitor imports it
    "safetensors>=0.4",
]

EXTRAS = {
    "eval": ["jiwer>=3.0", "praat-parselmouth>=0.4.3", "scikit-learn>=1.4"],
    "plot": ["matplotlib>=3.8"],
    "cloud": ["s3fs", "gcsfs"],  # s3:// and gs:// shards; not installed by the tests
    # xdist: the unit tests on 2 processes; transformers: the WavLM encoder oracle;
    # fsspec[http]: the HTTP shard-server tests
    "test": ["pytest>=8", "pytest-timeout>=2.2", "pytest-xdist>=3", "transformers>=4.40",
             "fsspec[http]"],
    # lhotse corpus recipes and manifests for make_shards; lhotse 1.33 imports urllib3
    # without declaring it.
    "data": ["lhotse>=1.33", "urllib3>=2"],
    # the s3prl upstream and the transformers remote-code export. s3prl 0.4.18 asks only
    # torch>=1.8 / torchaudio>=0.8, so the pinned torch 2.11 stays (checked with pip --dry-run).
    "interop": ["s3prl==0.4.18", "transformers>=4.40"],
}
EXTRAS["all"] = sorted({dep for name, deps in EXTRAS.items() if name != "cloud" for dep in deps})

setup(
    name="wavlm_ds",
    version="0.1.0",
    description="DeepSpeed pretraining system for the WavLM-Large+ speech encoder",
    python_requires=">=3.10",
    packages=find_packages(include=["wavlm_ds", "wavlm_ds.*"]),
    install_requires=CORE,
    extras_require=EXTRAS,
)
