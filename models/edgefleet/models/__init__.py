"""The model zoo: reference models, training, conversion, quantization and bundle packaging."""
