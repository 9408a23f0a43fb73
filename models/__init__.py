"""Network definitions, preprocessing shared by training and serving, and the weight manifest."""
