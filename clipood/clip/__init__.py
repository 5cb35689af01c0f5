"""The frozen CLIP backbone: loading it (`backbone`), its image and text encoders (`encoders`), features before the
image projection (`pre_projection`) and cached frozen image features (`image_features`)."""
