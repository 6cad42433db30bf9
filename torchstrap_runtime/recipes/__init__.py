"""Published training recipes reproduced step for step: `ffcv` (libffcv/ffcv-imagenet's ResNet-50/18 and FFCV's
CIFAR-10 ResNet-9 example). Importing `torchstrap_runtime.recipes.ffcv` declares the config keys they use."""
