"""torch.hub / s3prl entry points: `torch.hub.load(REPO, "wavlm_ds_local", EXPORT_DIR,
source="local")` returns an s3prl UpstreamExpert (see wavlm_ds/hub/s3prl_expert.py)."""
dependencies = ["torch", "safetensors", "yaml"]

from wavlm_ds.hub.s3prl_expert import wavlm_ds_local  # noqa: E402,F401
