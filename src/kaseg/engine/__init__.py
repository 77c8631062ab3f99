"""Training and evaluation: reading an experiment, the tasks (CE, autoencoder, distillation), the
training loop, the stages (teacher, autoencoder, student, distillation), run folders, metrics."""
