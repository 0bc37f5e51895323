"""Train a tiny diffusers DDPM (UNet2DModel + DDPMScheduler) on scikit-learn's 8x8 digits and save the pipeline.

Nothing downloads, so the diffusers-teacher example makes its own teacher the way diffusers' training
examples do: x_k = sqrt(abar_k) x + sqrt(1 - abar_k) eps at a random timestep k of the 1000-step
schedule, the UNet regressing on eps (``--prediction epsilon``) or on v (``v_prediction``). The folder
it writes (model_index.json, unet/, scheduler/) is what ``[teacher] kind = "diffusers"`` reads.

    python -m fmmkit.demos.tiny_diffusers_teacher --out models/tiny_ddpm_digits   # a few minutes on one CPU thread
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch.nn import functional as F


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="models/tiny_ddpm_digits")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--prediction", choices=["epsilon", "v_prediction"], default="epsilon")
    parser.add_argument("--schedule", choices=["linear", "squaredcos_cap_v2"], default="squaredcos_cap_v2")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    from fmmkit.data.digits import Digits

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    digits = Digits()
    images = digits.to_model_space(digits.pixels()[0])  # (1797, 1, 8, 8) in [-1, 1]
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(32, 64),
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                       norm_num_groups=16, attention_head_dim=16)
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule=args.schedule, prediction_type=args.prediction)
    optimiser = torch.optim.AdamW(unet.parameters(), lr=args.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, args.lr, total_steps=args.steps, pct_start=0.05)
    g = torch.Generator().manual_seed(args.seed)
    start = time.time()
    for step in range(args.steps):
        x = images[torch.randint(len(images), (args.batch_size,), generator=g)]
        noise = torch.randn(x.shape, generator=g)
        k = torch.randint(0, 1000, (args.batch_size,), generator=g)
        noisy = scheduler.add_noise(x, noise, k)
        target = noise if args.prediction == "epsilon" else scheduler.get_velocity(x, noise, k)
        loss = F.mse_loss(unet(noisy, k).sample, target)
        optimiser.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimiser.step()
        schedule.step()
        if step % 500 == 0 or step == args.steps - 1:
            print(f"step {step:5d}  loss {loss.item():.4f}  {time.time() - start:.0f}s", flush=True)
    out = Path(args.out)
    DDPMPipeline(unet=unet.eval(), scheduler=scheduler).save_pretrained(out)
    print(f"wrote {out} ({args.prediction}, {args.schedule}, {args.steps} steps, {time.time() - start:.0f}s)")


if __name__ == "__main__":
    main()
