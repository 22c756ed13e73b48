"""CTC fine-tuning of exported encoders (tools/finetune_ctc.py, make finetune)."""
