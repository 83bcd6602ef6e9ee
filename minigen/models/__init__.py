"""Model families: MLPs for toy data (mlp, denoiser_mlp), DCGAN, the U-Net, the small CNN classifier."""
