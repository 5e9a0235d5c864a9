"""Small VAEs and binary data shared by the VAE test files (test_vae.py, test_rate_distortion.py)."""
import torch

from helpers.vae import VAE, MLPDecoder, MLPEncoder


def gen(seed):
    return torch.Generator().manual_seed(seed)


def binary(n, d=12, seed=0, p=0.3):
    return (torch.rand(n, d, generator=gen(seed)) < p).float()


def tiny_vae(d=12, hidden=8, latent=3, seed=0, likelihood="bernoulli", dtype=torch.float32):
    torch.manual_seed(seed)
    return VAE(MLPEncoder(d, hidden, latent), MLPDecoder(latent, hidden, d), likelihood).to(dtype)
