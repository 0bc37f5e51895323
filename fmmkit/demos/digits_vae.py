"""Train a tiny diffusers AutoencoderKL on scikit-learn's 8x8 digits and save it (for examples/digits_latent_*.toml).

Nothing downloads, so the latent-space example brings its own VAE: (1, 8, 8) digits in [-1, 1] <->
(4, 4, 4) latents, trained with the latent-diffusion objective (L1 reconstruction + a small KL to N(0, I),
weight ``--kl``). The scaling factor written to its config is 1 / std of the latents (Rombach et al. 2022,
Sec. 4.3.2), so the latents the flow map sees have unit variance.

    python -m fmmkit.demos.digits_vae --out models/digits_vae      # a few minutes on one CPU thread
"""

from __future__ import annotations

from pathlib import Path

import torch

from fmmkit.demos.training import demo_parser, digits_images, fit


def main() -> None:
    parser = demo_parser(__doc__, "models/digits_vae", 1500)
    parser.add_argument("--kl", type=float, default=1e-4)
    args = parser.parse_args()

    from diffusers import AutoencoderKL

    images = digits_images(args.seed, args.threads)  # (1797, 1, 8, 8) in [-1, 1]
    vae = AutoencoderKL(in_channels=1, out_channels=1, down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
                        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), block_out_channels=(32, 64),
                        latent_channels=4, layers_per_block=1, norm_num_groups=16, sample_size=8)
    optimiser = torch.optim.Adam(vae.parameters(), lr=1e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, args.steps)

    def batch_loss(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """L1 reconstruction of a posterior sample plus a small KL term."""
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample(generator=g)).sample
        return (recon - x).abs().mean() + args.kl * posterior.kl().mean() / x[0].numel()

    fit(batch_loss, images, vae.parameters(), optimiser, schedule, args.steps, args.batch_size, args.seed)
    vae.eval()
    with torch.no_grad():
        means = torch.cat([vae.encode(images[i:i + 256]).latent_dist.mean for i in range(0, len(images), 256)])
        recon = torch.cat([vae.decode(means[i:i + 256]).sample for i in range(0, len(means), 256)])
    scale = float(1 / means.std())
    vae.register_to_config(scaling_factor=scale)
    out = Path(args.out)
    vae.save_pretrained(out)
    print(f"wrote {out}: latents {tuple(means.shape[1:])}, scaling_factor {scale:.4f}, "
          f"reconstruction L1 {float((recon.clamp(-1, 1) - images).abs().mean()):.4f} (pixels in [-1, 1])")


if __name__ == "__main__":
    main()
