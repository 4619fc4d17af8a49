"""Segmentation models: TokenUnify (Mamba over EM volumes: pretraining and affinity fine-tuning)."""
