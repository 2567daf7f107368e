"""Image classification: data modules for image datasets, augmentation, CNN and ResNet models
(the task is the shared lightdist.tasks.classification.ClassificationTask)."""
