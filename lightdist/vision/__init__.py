"""Image classification: data modules for image datasets, augmentation, CNN and ResNet models, the image task."""
