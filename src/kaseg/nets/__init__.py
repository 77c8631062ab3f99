"""Networks: building teachers and students by name (segmentation_models_pytorch, timm,
torchvision), their tapped feature maps, weights on disk, export, inference and cost."""
