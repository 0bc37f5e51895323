"""Train a tiny diffusers DDPM (UNet2DModel + DDPMScheduler) on scikit-learn's 8x8 digits and save the pipeline.

Nothing downloads, so the diffusers-teacher example makes its own teacher the way diffusers' training
examples do: x_k = sqrt(abar_k) x + sqrt(1 - abar_k) eps at a random timestep k of the 1000-step
schedule, the UNet regressing on eps (``--prediction epsilon``) or on v (``v_prediction``). The folder
it writes (model_index.json, unet/, scheduler/) is what ``[teacher] kind = "diffusers"`` reads.

    python -m fmmkit.demos.tiny_diffusers_teacher --out models/tiny_ddpm_digits   # a few minutes on one CPU thread
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.nn import functional as F

from fmmkit.demos.training import demo_parser, digits_images, fit


def main() -> None:
    parser = demo_parser(__doc__, "models/tiny_ddpm_digits", 2000)
    parser.add_argument("--prediction", choices=["epsilon", "v_prediction"], default="epsilon")
    parser.add_argument("--schedule", choices=["linear", "squaredcos_cap_v2"], default="squaredcos_cap_v2")
    parser.add_argument("--lr", type=float, default=2e-3)
    args = parser.parse_args()

    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    images = digits_images(args.seed, args.threads)  # (1797, 1, 8, 8) in [-1, 1]
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(32, 64),
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                       norm_num_groups=16, attention_head_dim=16)
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule=args.schedule, prediction_type=args.prediction)
    optimiser = torch.optim.AdamW(unet.parameters(), lr=args.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, args.lr, total_steps=args.steps, pct_start=0.05)

    def batch_loss(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """x_k = sqrt(abar_k) x + sqrt(1 - abar_k) eps at a random step k; regress eps (or v)."""
        noise = torch.randn(x.shape, generator=g)
        k = torch.randint(0, 1000, (len(x),), generator=g)
        target = noise if args.prediction == "epsilon" else scheduler.get_velocity(x, noise, k)
        return F.mse_loss(unet(scheduler.add_noise(x, noise, k), k).sample, target)

    seconds = fit(batch_loss, images, unet.parameters(), optimiser, schedule, args.steps, args.batch_size, args.seed,
                  clip=1.0)
    out = Path(args.out)
    DDPMPipeline(unet=unet.eval(), scheduler=scheduler).save_pretrained(out)
    print(f"wrote {out} ({args.prediction}, {args.schedule}, {args.steps} steps, {seconds:.0f}s)")


if __name__ == "__main__":
    main()
