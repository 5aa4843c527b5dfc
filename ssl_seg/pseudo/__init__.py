"""Pseudo-labelling: the model teacher, DINOv2 feature agreement, SAM and superpixel refinement."""
