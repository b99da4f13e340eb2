"""LPIPS perceptual loss (VGG16 features + learned linear heads) and a patch discriminator."""
