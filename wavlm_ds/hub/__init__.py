"""Interop with the tools the field evaluates with: s3prl upstreams and transformers."""
