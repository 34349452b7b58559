"""Trainable LiteRT variants of the zoo's dense models: build (TensorFlow), spec and weights."""
