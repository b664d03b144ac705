"""Fine-tuning pretrained causal LMs on the field's libraries: transformers, peft (LoRA) and trl (SFT, DPO)."""
