"""Images for nbtrain: data sets and loaders, pretrained bodies and their layer groups.

Needs torch, torchvision, timm and PIL; never imports IPython, ipywidgets or matplotlib.
"""

from nbtrain.vision.data import BadImagesWarning, ImageData, make_shapes_dataset
from nbtrain.vision.models import BodySpec, body_groups, create_body, load_efficientnet_lite0
from nbtrain.vision.photos import make_photo_dataset

__all__ = [
    "BadImagesWarning",
    "BodySpec",
    "ImageData",
    "body_groups",
    "create_body",
    "load_efficientnet_lite0",
    "make_photo_dataset",
    "make_shapes_dataset",
]
