"""Interpretability: what the attention heads and MLP neurons of a model do (`talelab interpret ...`)."""
