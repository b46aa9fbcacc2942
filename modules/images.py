"""A1111's `modules.images`, as extensions import it: a public face over modules/compat/images.py."""
from modules.compat.images import image_grid, read_info_from_image, resize_image, save_image

__all__ = ["image_grid", "read_info_from_image", "resize_image", "save_image"]
