"""What a Tune trial runs: the trainable, the plain-torch epoch loop, augmentation, the training
recipe, the trial's device and test scoring."""
