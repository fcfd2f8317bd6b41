"""Training of the infd autoencoder and latent diffusion model: data, losses, loops."""
